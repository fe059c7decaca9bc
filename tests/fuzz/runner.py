"""Run fuzz inputs in isolated children and sort what happens to each.

A `Pool` starts ``jobs`` driver processes (fresh interpreters: ``python -m tests.fuzz.runner
--driver``) that import weightconv once; for every input a driver forks a child, which writes
the seed's files with the mutated one into a scratch folder, lowers its address-space limit
(``RLIMIT_AS``: what it has mapped now plus ``memory`` MiB), reads the file through the public
API and reports one line of JSON through a pipe. The driver kills a child still running after
``timeout`` seconds. Outcomes:

- ``refused``: a `WeightconvError` (what the CLI turns into exit 2);
- ``accepted``: loaded, and every tensor read (each layer put in the canonical layout and
  ``np.asarray``-ed; or inspected, or converted to .npy);
- ``crashed``: any other exception (the CLI's exit 3), or the child died by a signal;
- ``hung``: still running after the timeout (a ``faulthandler`` dump says where);
- ``blowup``: MemoryError, or killed by SIGKILL (the kernel's OOM killer).

Replay one input (a task as printed in a report)::

    python -m tests.fuzz.runner --replay '{"reader": "npy-small", ...}' [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import queue
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.fuzz import mutate, seeds

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SEEDS = Path(tempfile.gettempdir()) / "weightconv-fuzz-seeds"
OUTCOMES = ("refused", "accepted", "crashed", "hung", "blowup")
BAD = ("crashed", "hung", "blowup")
MODES = ("load", "load", "inspect", "convert")


# --- tasks --------------------------------------------------------------------------------


def make_tasks(
    root: Path,
    catalogue: dict[str, seeds.Seed],
    readers: dict[str, seeds.Reader],
    count: int,
    seed: int,
    names: Iterable[str] | None = None,
    start: int = 0,
) -> list[dict[str, Any]]:
    """`count` inputs spread evenly over `names` (default: every reader), deterministic."""
    chosen = [readers[n] for n in (names or readers)]
    cache: dict[str, bytes] = {}
    tasks = []
    for i in range(start, start + count):
        reader = chosen[i % len(chosen)]
        rng = random.Random(f"{seed}/{reader.name}/{i}")
        seed_name, target = rng.choice(reader.targets)
        key = f"{seed_name}/{target}"
        if key not in cache:
            cache[key] = (root / key).read_bytes()
        others = [f"{s}/{f}" for s, f in reader.targets if f"{s}/{f}" != key]
        tasks.append(
            {
                "id": i,
                "reader": reader.name,
                "seed": seed_name,
                "target": target,
                "mode": rng.choice(MODES) if reader.action == "load" else reader.action,
                "with_options": bool(reader.optional) and rng.random() < 0.5,
                "explicit_format": rng.random() < 0.5,
                "mutation": mutate.choose(rng, cache[key], reader.struct, others),
            }
        )
    return tasks


def reproducer(task: dict[str, Any]) -> str:
    keep = {
        k: task[k]
        for k in ("reader", "seed", "target", "mode", "with_options", "explicit_format", "mutation")
    }
    return f"python -m tests.fuzz.runner --replay '{json.dumps(keep, separators=(',', ':'))}'"


# --- the child: materialise, limit, read --------------------------------------------------


def materialise(task: dict[str, Any], root: Path, folder: Path) -> tuple[Path, dict[str, Any]]:
    """Write the seed's files, the target mutated, into `folder`; the call to make."""
    catalogue = seeds.build(root)
    seed = catalogue[task["seed"]]
    reader = seeds.readers(catalogue)[task["reader"]]
    for name in seed.files:
        source = root / seed.name / name
        if name == task["target"]:
            data = mutate.apply(source.read_bytes(), task["mutation"], root)
            (folder / name).write_bytes(data)
        elif reader.action == "load":
            shutil.copyfile(source, folder / name)
    if reader.action != "load":
        return folder / task["target"], {}
    options: dict[str, Any] = {}
    if task["with_options"]:
        options.update({k: folder / seed.options[k] for k in reader.optional if k in seed.options})
    if reader.name == "prototxt":
        options["prototxt"] = folder / task["target"]
    if task["explicit_format"]:
        options["src_format" if task["mode"] == "convert" else "format"] = seed.format
    return folder / seed.entry, options


def execute(task: dict[str, Any], path: Path, options: dict[str, Any]) -> str:
    """Read `path` the way the task says; return a short note on what was read."""
    import numpy as np

    import weightconv
    from weightconv.model.canonical import canonical_layers

    mode = task["mode"]
    if mode.startswith("selftest-"):  # the harness's own checks of its outcome classes
        return _selftest(mode)
    if mode == "snappy":
        from weightconv.codecs import snappy

        return f"{len(snappy.decompress(path.read_bytes()))} bytes"
    if mode == "sstable":
        from weightconv.codecs import sstable

        n = 0
        with sstable.TableReader(path) as table:
            for key, value in table.items():
                n += len(key) + len(bytes(value))
            first = next(iter(table.items()), None)
            if first is not None:
                table.get(first[0])
        return f"{n} bytes of entries"
    if mode == "inspect":
        inventory = weightconv.inspect(path, **options)
        return f"{len(inventory.tensors)} tensors"
    if mode == "convert":
        report = weightconv.convert(path, path.parent / "fuzz-out.npy", **options)
        return f"{report.tensors} tensors converted"
    ws = weightconv.load(path, **options)
    total = 0
    for layer in canonical_layers(ws):
        for tensor in layer.tensors.values():
            total += np.asarray(tensor).size
    return f"{total} values"


def _selftest(mode: str) -> str:
    if mode == "selftest-hang":
        time.sleep(3600)
    elif mode == "selftest-alloc":
        blocks = [bytearray(64 << 20) for _ in range(1 << 10)]
        return f"{len(blocks)} blocks"
    elif mode == "selftest-raise":
        raise KeyError("selftest")
    elif mode == "selftest-signal":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif mode == "selftest-refuse":
        from weightconv.errors import FormatError

        raise FormatError("selftest: refused")
    return "ok"


def _frames(exc: BaseException) -> tuple[str, str]:
    """The last weightconv frame and the deepest frame of `exc`'s traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/weightconv/" in f.filename]

    def show(frame: traceback.FrameSummary) -> str:
        name = frame.filename
        cut = name.rfind("/weightconv/")
        if cut >= 0:
            name = name[cut + 1 :]
        elif "site-packages/" in name:
            name = name.split("site-packages/")[-1]
        return f"{name}:{frame.lineno} in {frame.name}"

    return (show(ours[-1]) if ours else "-", show(frames[-1]) if frames else "-")


def first_line(text: str, limit: int = 240) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _address_space() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def child(task: dict[str, Any], root: Path, folder: Path, memory: int, dump: int) -> dict[str, Any]:
    """Runs in the forked child: everything one input does, caught and described."""
    import faulthandler
    import resource

    from weightconv.errors import WeightconvError

    try:
        path, options = materialise(task, root, folder)
    except Exception as exc:  # the harness's own fault: say so, do not blame a reader
        return {
            "outcome": "harness",
            "type": type(exc).__name__,
            "message": first_line(str(exc)),
            "where": _frames(exc)[1],
        }
    limit = _address_space() + (memory << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * (memory << 20),) * 2)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    faulthandler.enable(file=dump)
    start = time.monotonic()
    result: dict[str, Any]
    try:
        note = execute(task, path, options)
        result = {"outcome": "accepted", "message": note}
    except WeightconvError as exc:
        message = str(exc)
        result = {
            "outcome": "refused",
            "type": type(exc).__name__,
            "message": first_line(message),
            "multiline": "\n" in message.strip(),
        }
    except OSError as exc:
        ours, deepest = _frames(exc)
        big = exc.errno == errno.EFBIG  # wrote past the file-size limit: a blowup on disk
        result = {
            "outcome": "blowup" if big else "crashed",
            "type": type(exc).__name__,
            "message": first_line(str(exc)),
            "where": ours,
            "deepest": deepest,
        }
    except MemoryError as exc:
        ours, deepest = _frames(exc)
        result = {
            "outcome": "blowup",
            "type": "MemoryError",
            "message": first_line(str(exc)),
            "where": ours,
            "deepest": deepest,
        }
    except BaseException as exc:  # everything else is a crash, by contract
        ours, deepest = _frames(exc)
        result = {
            "outcome": "crashed",
            "type": type(exc).__name__,
            "message": first_line(str(exc)),
            "where": ours,
            "deepest": deepest,
        }
    result["seconds"] = round(time.monotonic() - start, 3)
    return result


def _where_from_dump(text: str) -> str:
    """The innermost weightconv frame of the current thread in a faulthandler dump."""
    lines = text.splitlines()
    block: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("Current thread") or line.startswith("Thread"):
            if line.startswith("Current thread"):
                block = lines[i + 1 :]
                break
            block = lines[i + 1 :]
    for line in block:
        line = line.strip()
        if "/weightconv/" in line and line.startswith("File"):
            path = line.split('"')[1]
            rest = line.split('"', 2)[2]
            return path[path.rfind("/weightconv/") + 1 :] + rest.replace(", line ", ":")
    return "-"


def run_forked(
    task: dict[str, Any], root: Path, timeout: float, memory: int, scratch: Path
) -> dict[str, Any]:
    """Fork a child for `task`, wait up to `timeout` seconds, and describe the outcome."""
    folder = Path(tempfile.mkdtemp(prefix="in-", dir=scratch))
    dump_path = folder.parent / (folder.name + ".dump")
    dump = os.open(dump_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    read_end, write_end = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        code = 0
        try:
            os.setpgid(0, 0)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            result = child(task, root, folder, memory, dump)
            os.write(write_end, (json.dumps(result) + "\n").encode())
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(write_end)
    chunks: list[bytes] = []
    timed_out = False
    deadline = start + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read_end], [], [], left)
        if not ready:
            continue
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    if timed_out:
        try:
            os.kill(pid, signal.SIGABRT)  # faulthandler prints where it was, then it dies
            time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    os.close(dump)
    dumped = dump_path.read_text(errors="replace") if dump_path.exists() else ""
    elapsed = round(time.monotonic() - start, 3)
    shutil.rmtree(folder, ignore_errors=True)
    dump_path.unlink(missing_ok=True)
    text = b"".join(chunks).decode(errors="replace").strip()
    if timed_out:
        return {
            "outcome": "hung",
            "type": "timeout",
            "message": f"still running after {timeout}s",
            "where": _where_from_dump(dumped),
            "seconds": elapsed,
        }
    if text:
        answer: dict[str, Any] = json.loads(text.splitlines()[-1])
        return answer
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        outcome = "blowup" if sig == "SIGKILL" else "crashed"
        return {
            "outcome": outcome,
            "type": sig,
            "message": f"the child died by {sig}",
            "where": _where_from_dump(dumped),
            "seconds": elapsed,
        }
    return {
        "outcome": "crashed",
        "type": "exit",
        "where": _where_from_dump(dumped),
        "message": f"the child exited with {os.WEXITSTATUS(status)} and no report",
        "seconds": elapsed,
    }


def driver(root: Path, timeout: float, memory: int) -> None:
    """Serve tasks from stdin, one JSON line each; answer one JSON line each on stdout."""
    import importlib
    import pkgutil

    import weightconv

    for module in pkgutil.walk_packages(weightconv.__path__, "weightconv."):
        if module.name.endswith("__main__") or module.name.startswith(
            ("weightconv.cli", "weightconv.verify", "weightconv.nets")
        ):
            continue
        # imported once here, inherited by every fork; a module that fails to import (being
        # edited, say) is left for the child to report
        with contextlib.suppress(Exception):
            importlib.import_module(module.name)
    import h5py  # noqa: F401

    seeds.build(root)
    scratch = Path(tempfile.mkdtemp(prefix="wc-fuzz-driver-"))
    out = sys.stdout
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            task = json.loads(line)
            try:
                result = run_forked(task, root, timeout, memory, scratch)
            except Exception as exc:  # the driver must keep serving
                result = {
                    "outcome": "harness",
                    "type": type(exc).__name__,
                    "message": first_line(str(exc)),
                    "where": "driver",
                }
            out.write(json.dumps({"id": task.get("id"), **result}) + "\n")
            out.flush()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- the pool -----------------------------------------------------------------------------


class Pool:
    """`jobs` drivers fed from one queue; a driver that dies is restarted."""

    def __init__(self, root: Path, jobs: int, timeout: float, memory: int) -> None:
        self.root, self.jobs, self.timeout, self.memory = root, jobs, timeout, memory

    def _start(self) -> subprocess.Popen[str]:
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            OPENBLAS_NUM_THREADS="1",
            OMP_NUM_THREADS="1",
            PYTHONHASHSEED="0",
        )
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fuzz.runner",
                "--driver",
                "--seeds",
                str(self.root),
                "--timeout",
                str(self.timeout),
                "--memory",
                str(self.memory),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )

    def run(
        self,
        tasks: list[dict[str, Any]],
        on_result: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        work: queue.Queue[dict[str, Any]] = queue.Queue()
        for task in tasks:
            work.put(task)
        results: list[dict[str, Any]] = []
        lock = threading.Lock()

        def worker() -> None:
            proc = self._start()
            try:
                while True:
                    try:
                        task = work.get_nowait()
                    except queue.Empty:
                        return
                    answer = self._ask(proc, task)
                    if answer is None:  # the driver died or stalled: restart it
                        proc.kill()
                        proc.wait()
                        answer = {
                            "outcome": "crashed",
                            "type": "driver",
                            "message": "the driver process died",
                            "where": "-",
                        }
                        proc = self._start()
                    record = {**task, **answer, "id": task["id"]}
                    with lock:
                        results.append(record)
                        if on_result:
                            on_result(record)
            finally:
                if proc.stdin:
                    proc.stdin.close()
                proc.wait(timeout=30)

        threads = [threading.Thread(target=worker) for _ in range(self.jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sorted(results, key=lambda r: r["id"])

    def _ask(self, proc: subprocess.Popen[str], task: dict[str, Any]) -> dict[str, Any] | None:
        assert proc.stdin and proc.stdout
        try:
            proc.stdin.write(json.dumps(task) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            return None
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout * 3 + 60)
        if not ready:
            return None
        line = proc.stdout.readline()
        return json.loads(line) if line else None


# --- reports ------------------------------------------------------------------------------


def table(results: list[dict[str, Any]], readers: Iterable[str]) -> str:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        counts[r["reader"]][r["outcome"]] += 1
    head = (
        "| reader | tried | refused cleanly | accepted | crashed (exit 3 / uncaught) "
        "| hung | memory blowup |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    total: Counter[str] = Counter()
    for name in readers:
        c = counts.get(name)
        if not c:
            continue
        total.update(c)
        lines.append(
            f"| {name} | {sum(c.values())} | {c['refused']} | {c['accepted']} | {c['crashed']} "
            f"| {c['hung']} | {c['blowup']} |"
        )
    lines.append(
        f"| **all** | {sum(total.values())} | {total['refused']} | {total['accepted']} "
        f"| {total['crashed']} | {total['hung']} | {total['blowup']} |"
    )
    multiline = sum(1 for r in results if r["outcome"] == "refused" and r.get("multiline"))
    if multiline:
        lines.append(f"\n({multiline} refusals had a message of more than one line)")
    if total["harness"]:
        lines.append(f"\n({total['harness']} inputs could not be built: harness errors)")
    return "\n".join(lines)


def signature(r: dict[str, Any]) -> tuple[str, str, str, str]:
    return (r["outcome"], r["reader"], r.get("type", ""), r.get("where", "-"))


def grouped(results: list[dict[str, Any]]) -> list[tuple[tuple[str, ...], list[dict[str, Any]]]]:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r["outcome"] in BAD:
            groups[signature(r)].append(r)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def crash_report(results: list[dict[str, Any]]) -> str:
    lines = []
    for (outcome, reader, kind, where), items in grouped(results):
        first = min(items, key=lambda r: len(json.dumps(r["mutation"])))
        lines.append(f"### {outcome}: {reader}: {kind} at {where} ({len(items)}x)")
        lines.append("")
        lines.append(f"- message: `{first.get('message', '')}`")
        if first.get("deepest"):
            lines.append(f"- deepest frame: `{first['deepest']}`")
        lines.append(
            f"- seed: `{first['seed']}/{first['target']}` mode `{first['mode']}`, "
            f"mutation `{mutate.describe(first['mutation'])}`"
        )
        lines.append(f"- replay: `{reproducer(first)}`")
        lines.append("")
    return "\n".join(lines) if lines else "No crashes, hangs or blowups."


# --- command line -------------------------------------------------------------------------


def replay(spec: dict[str, Any], root: Path, timeout: float, memory: int, keep: Path | None) -> int:
    seeds.build(root)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        path, options = materialise(spec, root, keep)
        print(f"wrote {path} (options {options})")
    scratch = Path(tempfile.mkdtemp(prefix="wc-fuzz-replay-"))
    try:
        result = run_forked(spec, root, timeout, memory, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 1 if result["outcome"] in BAD else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.runner")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--replay", help="a task as JSON (see a report's replay lines)")
    parser.add_argument("--keep", type=Path, help="with --replay: write the input files here")
    parser.add_argument("--seeds", type=Path, default=DEFAULT_SEEDS)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--memory", type=int, default=1024)
    args = parser.parse_args(argv)
    if args.driver:
        driver(args.seeds, args.timeout, args.memory)
        return 0
    if args.replay:
        return replay(json.loads(args.replay), args.seeds, args.timeout, args.memory, args.keep)
    parser.error("give --replay (or use benchmarks/fuzz.py)")
    return 2


if __name__ == "__main__":
    sys.exit(main())
