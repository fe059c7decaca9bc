"""Every weightconv conversion route, at three model sizes, against `cp` and an anchor.

    python benchmarks/routes.py [--routes caffe2npy,ckpt2npy,...] [--scales 1,2,4]
        [--repeats 5] [--no-anchors] [--width 1.0] [--work DIR] [--results PATH] [--keep]

Inputs are generated once into benchmarks/work/routes/ (reused while present and of the
right size) from a seeded synthetic VGG16 (`weightconv.testing.synthetic`): 1x is VGG16
itself (553 MB as a caffemodel, 138,357,544 float32 parameters), 2x and 4x add 8 and 25
extra 4096-wide fully-connected layers after fc7, so the largest tensor stays fc6 (25088 x
4096 float32, 392 MiB) while the file grows to about 1.09 and 2.23 GB (4x is over 2 GiB).
A child process writes each .caffemodel and its deploy prototxt, so this process never
holds a model (a child's peak RSS would count the parent's pages); the weightconv CLI makes
the .npy, the TensorFlow checkpoint and the Keras .h5 from it, and before any timing a
child checks that TensorFlow's `tf.train.load_checkpoint` and h5py read them with values
equal to the .npy. `--width 0.0625` scales the nets down for development.

Cases, for each route and scale, each a whole fresh process (imports included): the
weightconv verb; `cp` of the route's input file (of the .data file for a checkpoint), the
floor for touching every byte; and an anchor (`--no-anchors` leaves them out):
- caffe2npy: naive protobuf, `NetParameter.ParseFromString` of the whole file,
  `np.array(blob.data).reshape(blob.shape.dim)` per blob (no transposes), `np.save`;
- caffe2ckpt, caffe2h5: the two-step route they replace, `sh -c 'weightconv caffe2npy
  ... && weightconv npy2ckpt ...'` (npy2h5), the chain timed as a whole;
- npy2ckpt: TensorFlow eager `tf.Variable`s, `tf.compat.v1.train.Saver(var_list=...)
  .save(None, prefix)`;
- ckpt2npy: `tf.train.load_checkpoint` + `get_tensor` of every tensor, `np.save`;
- npy2h5: Keras 3, a `keras.Sequential` of Conv2D/MaxPooling2D/Flatten/Dense layers named
  and shaped as the .npy's, built in the timed process, `set_weights`, `save_weights`;
- h52npy: h5py, `visititems` reading every dataset, `np.save` of the dict;
- inspect: `python -m tensorflow.python.tools.inspect_checkpoint --file_name=PREFIX`.

Method: weightconv is byte-compiled first, as `pip install` does. Per route, each round
runs every case once, in reverse order on alternate rounds; before each run the previous
outputs are deleted and `os.sync()` runs, outside the timing. Wall time is perf_counter
around Popen + os.wait4; peak RSS is ru_maxrss of that child from os.wait4 (for the
`sh -c` chain, Linux reports the largest of the shell and the children it waited for).
Linux also counts the spawning process's own peak in a child's ru_maxrss, so this script
imports neither numpy nor weightconv: its peak (about 16 MiB, reported) is the floor.
A failed run stops the benchmark with its command and stderr. Every case runs with
TF_CPP_MIN_LOG_LEVEL=3 and CUDA_VISIBLE_DEVICES="". The report (medians, wall min-max,
computed acceptance verdicts) replaces benchmarks/results.md and is printed as it goes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from child_scripts import (
    H5PY_READ,
    KERAS_SAVE,
    NAIVE_PROTOBUF,
    NAIVE_PROTOBUF_TO,
    NET_INFO,
    NPY_TO_SAFETENSORS,
    NPY_TO_TORCH,
    TF_READ_SAVE,
    TF_SAVE,
    VERIFY,
    VERSIONS,
    WRITE_NET,
)
from report import (
    ROUTES,
    Case,
    acceptance,
    machine,
    row,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
EXTRA_FC = {1: 0, 2: 8, 4: 25}  # scale -> extra 4096-wide fc layers after fc7
#: protobuf's parsers refuse a message of 2 GiB or more ("Wire format was corrupt").
PROTOBUF_LIMIT = 2**31


def python(source: str, *arguments: object) -> list[str]:
    return [sys.executable, "-c", source, *map(str, arguments)]


def weightconv(*arguments: object) -> list[str]:
    script = Path(sys.executable).parent / "weightconv"  # the console script users run
    head = [str(script)] if script.exists() else [sys.executable, "-m", "weightconv"]
    return [*head, *map(str, arguments)]


def shown(command: list[str]) -> str:
    return shlex.join(a if "\n" not in a else "<script>" for a in command)


@dataclass
class Inputs:
    scale: int
    stem: str
    caffemodel: Path
    prototxt: Path
    npy: Path
    prefix: Path
    h5: Path
    input_hwc: str
    parameters: int
    tensors: int = 0
    largest: str = ""
    largest_bytes: int = 0
    fc6_input: str = ""  # C,H,W of fc6's input

    @property
    def data(self) -> Path:
        return self.prefix.with_name(self.prefix.name + ".data-00000-of-00001")

    def files(self) -> tuple[Path, ...]:
        index = self.prefix.with_name(self.prefix.name + ".index")
        return (self.caffemodel, self.prototxt, self.npy, index, self.data, self.h5)

    def sizes(self) -> dict[str, int]:
        return {p.name: p.stat().st_size if p.exists() else -1 for p in self.files()}


def run_checked(command: list[str], what: str, cwd: Path) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed ({result.returncode}): {shown(command)}\n{result.stderr}")
    return result.stdout


def prepare(scale: int, width: float, work: Path) -> Inputs:
    """Generate (or reuse) the scale's inputs, then check them with TensorFlow and h5py."""
    net = json.loads(run_checked(python(NET_INFO, EXTRA_FC[scale], width), "net info", work))
    stem = f"vgg16-{scale}x-w{width:g}"
    _, channels, height, wide = net["input_shape"]
    inputs = Inputs(
        scale,
        stem,
        work / f"{stem}.caffemodel",
        work / f"{stem}.prototxt",
        work / f"{stem}.npy",
        work / "ckpt" / f"{stem}.ckpt",
        work / f"{stem}.h5",
        f"{height},{wide},{channels}",
        net["parameters"],
    )
    stamp = work / f"{stem}.sizes.json"
    fresh = (
        stamp.exists()
        and json.loads(stamp.read_text()) == inputs.sizes()
        and inputs.caffemodel.stat().st_size == net["size"]
    )
    if not fresh:
        stamp.unlink(missing_ok=True)
        print(f"generating {stem} inputs ...", file=sys.stderr)
        ca, pt, npy = inputs.caffemodel, inputs.prototxt, inputs.npy
        steps = [
            python(WRITE_NET, ca, pt, EXTRA_FC[scale], width),
            weightconv("caffe2npy", ca, "--prototxt", pt, "-o", npy, "--force", "-q"),
            weightconv("npy2ckpt", npy, "-o", inputs.prefix, "--force", "-q"),
            weightconv("npy2h5", npy, "-o", inputs.h5, "--force", "-q"),
        ]
        for command in steps:
            run_checked(command, "generating inputs", work)
        if ca.stat().st_size != net["size"]:
            raise SystemExit(f"{ca}: {ca.stat().st_size} bytes, not {net['size']}")
    print(f"checking {stem} with TensorFlow and h5py ...", file=sys.stderr)
    verify = python(VERIFY, inputs.prefix, inputs.npy, inputs.h5, inputs.parameters)
    report = json.loads(run_checked(verify, "checking the inputs", work).splitlines()[-1])
    inputs.tensors, inputs.largest = report["tensors"], report["largest"]
    inputs.largest_bytes = report["largest_bytes"]
    inputs.fc6_input = report["fc6_input"]
    if not fresh:
        stamp.write_text(json.dumps(inputs.sizes()))
    return inputs


#: Writing "1" here drops the clean page cache (root only).
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def cache_only(inputs: Inputs, every: Iterable[Inputs], drop: bool) -> bool:
    """Keep this scale's inputs in the page cache and drop the other scales' (the 4x set
    alone is 8.9 GB): each case then reads its input from memory, as "warm" means. With
    `drop`, as root, the whole page cache is dropped first (the libraries are read back by
    the first round's runs): with the cache full of what earlier work left, `cp` of the 4x
    checkpoint took 0.8-2.4 s here, 0.6-0.7 s after the drop. True when it was dropped."""
    dropped = drop and os.access(DROP_CACHES, os.W_OK)
    if dropped:
        os.sync()
        DROP_CACHES.write_text("1")
    for other in every:
        for path in other.files():
            if other is not inputs and path.exists():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
    _read_all(inputs.files())
    return dropped


def _read_all(paths: Iterable[Path]) -> None:
    buffer = bytearray(1 << 20)  # small: a child's peak RSS starts from this process's
    for path in paths:
        if not path.is_file():
            continue
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def route_cases(route: str, i: Inputs, out: Path, anchors: bool) -> tuple[Path, list[Case]]:
    """The route's input file and its cases (weightconv, cp, anchor), writing under `out`."""
    source = {
        "caffe2npy": i.caffemodel,
        "caffe2ckpt": i.caffemodel,
        "caffe2h5": i.caffemodel,
        "npy2ckpt": i.npy,
        "npy2h5": i.npy,
        "ckpt2npy": i.data,
        "inspect": i.data,
        "h52npy": i.h5,
        "caffe2pt": i.caffemodel,
        "caffe2safetensors": i.caffemodel,
        "npy2safetensors": i.npy,
        "npy2pt": i.npy,
        "caffe2npz": i.caffemodel,
        "npy2npz": i.npy,
    }[route]
    caffe = (i.caffemodel, "--prototxt", i.prototxt)
    ours = {
        "caffe2npy": weightconv("caffe2npy", *caffe, "-o", out / "wc.npy", "-q"),
        "caffe2ckpt": weightconv("caffe2ckpt", *caffe, "-o", out / "wc.ckpt", "-q"),
        "caffe2h5": weightconv("caffe2h5", *caffe, "-o", out / "wc.weights.h5", "-q"),
        "npy2ckpt": weightconv("npy2ckpt", i.npy, "-o", out / "wc.ckpt", "-q"),
        "ckpt2npy": weightconv("ckpt2npy", i.prefix, "-o", out / "wc.npy", "-q"),
        "npy2h5": weightconv("npy2h5", i.npy, "-o", out / "wc.weights.h5", "-q"),
        "h52npy": weightconv("h52npy", i.h5, "-o", out / "wc.npy", "-q"),
        "inspect": weightconv("inspect", i.prefix),
        "caffe2pt": weightconv("caffe2pt", *caffe, "-o", out / "wc.pt", "-q"),
        "caffe2safetensors": weightconv(
            "caffe2safetensors", *caffe, "-o", out / "wc.safetensors", "-q"
        ),
        "npy2safetensors": weightconv("npy2safetensors", i.npy, "-o", out / "wc.safetensors", "-q"),
        "npy2pt": weightconv(
            "npy2pt", i.npy, "-o", out / "wc.pt", "-q", "--torch-dense-input", f"fc6={i.fc6_input}"
        ),
        "caffe2npz": weightconv("caffe2npz", *caffe, "-o", out / "wc.npz", "-q"),
        "npy2npz": weightconv("npy2npz", i.npy, "-o", out / "wc.npz", "-q"),
    }[route]
    cases = [
        Case("weightconv", f"weightconv {route}", ours),
        Case("cp", "cp", ["cp", str(source), str(out / f"copy-{source.name}")]),
    ]
    if not anchors:
        return source, cases
    two_step = out / "two-step.npy"
    first = shlex.join(weightconv("caffe2npy", *caffe, "-o", two_step, "-q"))
    to_ckpt = shlex.join(weightconv("npy2ckpt", two_step, "-o", out / "two.ckpt", "-q"))
    to_h5 = shlex.join(weightconv("npy2h5", two_step, "-o", out / "two.weights.h5", "-q"))
    naive = ("caffe2npy", "caffe2pt", "caffe2safetensors", "caffe2npz")
    if route in naive and i.caffemodel.stat().st_size >= PROTOBUF_LIMIT:
        return source, cases  # protobuf refuses to parse a message this large: no anchor
    anchor = {
        "caffe2npy": ("naive protobuf", python(NAIVE_PROTOBUF, i.caffemodel, out / "naive.npy")),
        "caffe2ckpt": ("caffe2npy && npy2ckpt", ["sh", "-c", f"{first} && {to_ckpt}"]),
        "caffe2h5": ("caffe2npy && npy2h5", ["sh", "-c", f"{first} && {to_h5}"]),
        "npy2ckpt": ("TF eager Saver", python(TF_SAVE, i.npy, out / "tf.ckpt")),
        "ckpt2npy": ("TF get_tensor + np.save", python(TF_READ_SAVE, i.prefix, out / "tf.npy")),
        "npy2h5": (
            "Keras 3 save_weights",
            python(KERAS_SAVE, i.npy, out / "keras.weights.h5", i.input_hwc),
        ),
        "h52npy": ("h5py + np.save", python(H5PY_READ, i.h5, out / "h5py.npy")),
        "caffe2pt": (
            "naive protobuf + torch.save",
            python(NAIVE_PROTOBUF_TO, i.caffemodel, out / "naive.pt", "torch"),
        ),
        "caffe2safetensors": (
            "naive protobuf + save_file",
            python(NAIVE_PROTOBUF_TO, i.caffemodel, out / "naive.safetensors", "safetensors"),
        ),
        "npy2safetensors": (
            "np.load + save_file",
            python(NPY_TO_SAFETENSORS, i.npy, out / "st.safetensors"),
        ),
        "npy2pt": (
            "np.load + transposes + torch.save",
            python(NPY_TO_TORCH, i.npy, out / "np.pt", i.fc6_input),
        ),
        "caffe2npz": (
            "naive protobuf + np.savez",
            python(NAIVE_PROTOBUF_TO, i.caffemodel, out / "naive.npz", "npz"),
        ),
        "npy2npz": ("np.load + np.savez", python(NPY_TO_SAFETENSORS, i.npy, out / "np.npz")),
        "inspect": (
            "TF inspect_checkpoint",
            [
                sys.executable,
                "-m",
                "tensorflow.python.tools.inspect_checkpoint",
                f"--file_name={i.prefix}",
            ],
        ),
    }[route]
    return source, [*cases, Case("anchor", *anchor)]


def measure(case: Case, work: Path) -> tuple[float, float]:
    """Run the case once; (wall seconds, peak RSS MiB) of that process (and its waited-for
    children) from os.wait4. A failure stops the benchmark with its stderr."""
    log = work / "stderr.log"
    with open(log, "wb") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(case.command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=work)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(
            f"{case.label} failed (exit {process.returncode}): {shown(case.command)}\n"
            + log.read_text(errors="replace")[-6000:]
        )
    return wall, usage.ru_maxrss / 1024  # KiB on Linux


ANCHORS = (
    "Anchors: caffe2npy, naive protobuf (`caffe_pb2.NetParameter().ParseFromString` of the "
    "whole file, `np.array(blob.data, dtype=np.float32).reshape(blob.shape.dim)` per blob, "
    "`np.save` of {layer: [W, b]}; no transposes, so less work than caffe2npy); caffe2ckpt "
    "and caffe2h5, the two-step `sh -c 'weightconv caffe2npy ... && weightconv "
    "npy2ckpt|npy2h5 ...'` timed as one chain; npy2ckpt, TensorFlow eager `tf.Variable`s + "
    "`tf.compat.v1.train.Saver(var_list=...).save(None, prefix)`; ckpt2npy, "
    "`tf.train.load_checkpoint` + `get_tensor` of every tensor + `np.save`; npy2h5, Keras 3 "
    "`keras.Sequential` (Conv2D 3x3 same, MaxPooling2D between blocks so that Flatten gives "
    "fc6's input, Dense; the .npy's names) built in the timed process, `set_weights`, "
    "`save_weights('X.weights.h5')`; h52npy, h5py `visititems` + `ds[()]` + `np.save` of the "
    "dict; inspect, `python -m tensorflow.python.tools.inspect_checkpoint`; caffe2pt and "
    "caffe2safetensors, the naive protobuf parse (blobs as `layer.weight`/`layer.bias`, "
    "Caffe's layout is PyTorch's) + `torch.save` of `torch.from_numpy` tensors or "
    "`safetensors.numpy.save_file`; npy2safetensors, `np.load` + `save_file` of the flat "
    "dict (our default for a .npy source is the same tf layout, no transform); npy2pt, `np.load`, "
    "the same transposes in NumPy (conv HWIO -> OIHW, dense (in, out) -> (out, in), fc6's "
    "inputs H,W,C -> C,H,W) and `torch.save`; caffe2npz, the naive protobuf parse + `np.savez` "
    "(no transposes); npy2npz, `np.load` + `np.savez` of the flat dict. The .h5 outputs "
    "are Keras 3 `.weights.h5` files; the h52npy input is `npy2h5`'s default `.h5` (Keras 2 "
    "layout)."
)

HEADER = (
    "| route | input | MB | cp (s) | weightconv (s) | weightconv peak (MiB) "
    "| weightconv / cp | peak − largest tensor (MiB) | anchor | anchor (s) "
    "| anchor peak (MiB) | anchor / weightconv |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
)


def revision() -> str:
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "commit unknown"
    status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def fingerprint() -> str:
    """A checksum of weightconv's sources, to notice them changing during a run."""
    crc = 0
    for path in sorted((REPO / "weightconv").rglob("*.py")):
        crc = zlib.crc32(path.read_bytes(), zlib.crc32(str(path).encode(), crc))
    return f"{crc:08x}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma list (default: all)")
    parser.add_argument("--scales", default="1,2,4", help="comma list of 1, 2, 4")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-anchors", dest="anchors", action="store_false")
    parser.add_argument("--width", type=float, default=1.0, help="scale the nets down")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "routes")
    parser.add_argument("--results", type=Path, default=HERE / "results.md")
    parser.add_argument("--keep", action="store_true", help="keep the outputs too")
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help="as root: drop the whole page cache before each scale, then read back its inputs",
    )
    args = parser.parse_args()
    chosen = {r for r in args.routes.split(",") if r}
    routes = [r for r in ROUTES if r in chosen]
    if not routes or chosen - set(ROUTES):
        parser.error(f"--routes: choose from {','.join(ROUTES)}")
    try:
        scales = sorted({int(s) for s in args.scales.split(",") if s})
    except ValueError:
        scales = []
    if not scales or set(scales) - set(EXTRA_FC):
        parser.error("--scales: a comma list of 1, 2, 4")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    command = shlex.join(["python", "benchmarks/routes.py", *sys.argv[1:]])
    os.environ.update(TF_ENV)
    work, out = args.work.resolve(), args.work.resolve() / "out"
    (work / "ckpt").mkdir(parents=True, exist_ok=True)
    # weightconv from bytecode, as after `pip install`: with PYTHONDONTWRITEBYTECODE set an
    # editable install would otherwise compile its modules in every measured run.
    compile_all = "import compileall, weightconv, os; compileall.compile_dir(os.path.dirname(weightconv.__file__), quiet=1)"  # noqa: E501
    subprocess.run(
        python(compile_all), check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""}
    )
    versions = json.loads(run_checked(python(VERSIONS), "reading versions", work))
    package = Path(versions["location"]).resolve().parent
    where = "" if package == REPO / "weightconv" else f", imported from {package}"
    prepared = {scale: prepare(scale, args.width, work) for scale in scales}
    sources, load_before = fingerprint(), os.getloadavg()
    results: dict[int, dict[str, dict[str, Case]]] = {}
    tables: list[str] = []
    dropped = False
    for scale, inputs in prepared.items():
        largest = inputs.largest_bytes / 2**20
        caffemodel = inputs.caffemodel.stat().st_size
        over = "over" if caffemodel > 2**31 else "not over"
        title = (
            f"## {scale}x: VGG16 + {EXTRA_FC[scale]} extra fc (width {args.width:g})\n\n"
            f"{inputs.parameters:,} float32 parameters in {inputs.tensors} tensors; largest "
            f"tensor {inputs.largest}, {largest:,.1f} MiB; caffemodel {caffemodel:,} bytes "
            f"({over} 2 GiB = 2**31 bytes)."
        )
        if inputs.caffemodel.stat().st_size >= PROTOBUF_LIMIT and set(routes) & {
            "caffe2npy",
            "caffe2pt",
            "caffe2safetensors",
            "caffe2npz",
        }:
            title += (
                " The naive protobuf anchors have no time at this scale: protobuf refuses to "
                "parse a message of 2 GiB or more (`DecodeError`), so that path cannot read "
                "this file at all."
            )
        title += f"\n\n{HEADER}"
        dropped = cache_only(inputs, prepared.values(), args.drop_caches) or dropped
        print(f"\n{title}", flush=True)
        results[scale], rows = {}, []
        for route in routes:
            source, cases = route_cases(route, inputs, out, args.anchors)
            for round_number in range(args.repeats):
                for case in cases if round_number % 2 == 0 else cases[::-1]:
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    os.sync()  # no write-back of the previous output during this run
                    case.samples.append(measure(case, work))
                    wall, peak = case.samples[-1]
                    print(
                        f"[{scale}x {route} {round_number + 1}/{args.repeats}] {case.label}: "
                        f"{wall:.2f} s, {peak:,.0f} MiB",
                        file=sys.stderr,
                        flush=True,
                    )
            results[scale][route] = {case.kind: case for case in cases}
            rows.append(row(route, source, results[scale][route], largest))
            print(rows[-1], flush=True)
        tables.append(title + "\n" + "\n".join(rows))
    load_after = os.getloadavg()
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
        (work / "stderr.log").unlink(missing_ok=True)
    largest_mib = {s: i.largest_bytes / 2**20 for s, i in prepared.items()}
    anchors = ANCHORS if args.anchors else "Anchors: not run (`--no-anchors`)."
    loads = " ".join(f"{v:.2f}" for v in load_before), " ".join(f"{v:.2f}" for v in load_after)
    text = "\n".join(
        [
            "# Benchmark results: every conversion route",
            "",
            f"Run: `{command}` (weightconv {versions['weightconv']}, commit {revision()}{where}).",
            "",
            f"Machine: {machine(work, versions)}. Load average {loads[0]} before, {loads[1]} "
            "after.",
            "",
            f"Method: every case is a fresh process (imports included), {args.repeats} "
            f"round(s) per route, each round running every case once with the order reversed "
            f"on alternate rounds; outputs deleted and `os.sync()` before each run, inputs in "
            f"the page cache"
            + (
                " (before each scale the whole page cache was dropped and that scale's inputs "
                "read back)"
                if dropped
                else " (the other scales' inputs dropped from it before each scale)"
            )
            + f". Wall time is perf_counter around Popen + os.wait4 (median, and "
            f"min–max in brackets), peak RSS is that child's ru_maxrss from os.wait4 (median; "
            f"for the `sh -c` chain the largest of the shell and both steps; never below this "
            f"script's own peak, {floor:.0f} MiB, which Linux counts in a spawned child's); "
            f"TensorFlow and h5py checked that the checkpoint and .h5 hold the .npy's values "
            f"before timing; weightconv byte-compiled first.",
            "",
            anchors,
            "",
            *[table + "\n" for table in tables],
            "## Acceptance",
            "",
            *acceptance(results, largest_mib),
        ]
    )
    if fingerprint() != sources:
        text += "\n\n**weightconv's sources changed during this run: rerun for clean numbers.**"
        print("warning: weightconv's sources changed during the run", file=sys.stderr)
    args.results.write_text(text + "\n")
    print("\n" + text[text.index("## Acceptance") :], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
