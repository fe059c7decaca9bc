"""Every writer fails cleanly: a full disk, a read-only folder or a file-size limit is one
line and exit 2 (an `OutputError`), never SIGBUS or an internal error, and leaves nothing
behind; a run's temporaries say whose they are, and the next run removes those whose writer
is gone (never a live one's); two runs racing to create one output cannot both succeed.

The disk-full and read-only cases mount a small tmpfs, so they need root (CI runs as root);
elsewhere they are skipped. The file-size-limit case needs nothing.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import weightconv
from weightconv import cli
from weightconv._util import files
from weightconv.errors import OutputError, OutputExistsError
from weightconv.formats.ckpt import naming
from weightconv.model import Layer, WeightSet
from weightconv.testing import synthetic

#: One output per writer; the Keras ones in both layouts.
OUTPUTS = ["out.npy", "out.ckpt", "out.weights.h5", "out.h5"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict[str, Path]:
    """A Caffe model of about 18 MB (far more than the small disks below)."""
    folder = tmp_path_factory.mktemp("model")
    net = synthetic.build("alexnet", width=0.25, seed=3)
    net.write_caffemodel(folder / "model.caffemodel")
    (folder / "deploy.prototxt").write_text(net.deploy_prototxt)
    return {"model": folder / "model.caffemodel", "prototxt": folder / "deploy.prototxt"}


def _convert(model: dict[str, Path], dst: Path, **popen: object) -> tuple[int, str]:
    """`weightconv convert` in a child process (a SIGBUS must not take pytest with it)."""
    command = [sys.executable, "-m", "weightconv", "convert", str(model["model"]), str(dst)]
    done = subprocess.run(
        [*command, "--prototxt", str(model["prototxt"]), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        **popen,  # type: ignore[call-overload]
    )
    return done.returncode, done.stderr


def _assert_one_line(code: int, err: str, *expected: str) -> None:
    assert code == 2, f"exit {code}: {err}"
    assert err.count("\n") == 1 and err.startswith("weightconv: error: "), err
    assert "internal error" not in err and "Traceback" not in err
    for text in expected:
        assert text in err, err


@contextlib.contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here (needs root and permission to mount): "
            f"{mounted.stderr.strip() or mounted.returncode}"
        )
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


# A full disk, a read-only folder, a file-size limit ---------------------------------------------


@pytest.mark.parametrize("name", OUTPUTS)
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, model, name):
    with _tmpfs(tmp_path / "disk", "size=2m") as disk:
        code, err = _convert(model, disk / name)
        _assert_one_line(code, err, "cannot be written: the disk is full", str(disk))
        assert list(disk.iterdir()) == []
        # A folder the run created for the output goes too.
        code, err = _convert(model, disk / "new" / "sub" / name)
        _assert_one_line(code, err, "the disk is full")
        assert list(disk.iterdir()) == []


@pytest.mark.parametrize("name", OUTPUTS)
def test_a_read_only_folder_is_one_line(tmp_path, model, name):
    with _tmpfs(tmp_path / "ro", "ro,size=2m") as folder:
        code, err = _convert(model, folder / name)
        _assert_one_line(code, err, "cannot be written", "read-only file system")
        code, err = _convert(model, folder / "new" / name)
        _assert_one_line(code, err, "read-only file system")
        assert list(folder.iterdir()) == []


def test_the_state_file_and_card_writers_on_a_read_only_folder(tmp_path):
    with _tmpfs(tmp_path / "ro", "ro,size=2m") as folder:
        with pytest.raises(OutputError, match=r"checkpoint: cannot be written: .*read-only"):
            naming.update_state_file(folder / "model.ckpt")
        with (
            pytest.raises(OutputError, match=r"card.json: cannot be written: .*read-only"),
            files.atomic_output(folder / "card.json") as handle,  # what the card writer uses
        ):
            handle.write(b"{}")


def test_a_full_disk_while_the_checkpoint_state_file_is_written(tmp_path):
    with _tmpfs(tmp_path / "disk", "size=64k") as disk:
        filler = disk / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
        with pytest.raises(OutputError, match="checkpoint: cannot be written: the disk is full"):
            naming.update_state_file(disk / "model.ckpt")
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def _file_size_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


@pytest.mark.parametrize("name", OUTPUTS)
def test_a_file_size_limit_is_one_line_and_leaves_nothing(tmp_path, model, name):
    """No mount needed: a 1 MiB RLIMIT_FSIZE makes every write past it fail with EFBIG
    (Python ignores SIGXFSZ), the memory-mapped .npy writer's included."""
    out = tmp_path / "out"
    out.mkdir()
    code, err = _convert(model, out / name, preexec_fn=_file_size_limit)
    _assert_one_line(code, err, "cannot be written: the file would be larger")
    assert list(out.iterdir()) == []


def test_the_npy_writer_reserves_what_it_maps(tmp_path, model, monkeypatch):
    """Space for a directly converted tensor is allocated before the tensor is mapped, so a
    full disk is an OutputError there, never a SIGBUS while filling the map."""
    ws = weightconv.load(model["model"], prototxt=model["prototxt"])
    reserved: list[tuple[int, int]] = []
    real = os.posix_fallocate

    def fallocate(fd: int, offset: int, length: int) -> None:
        reserved.append((offset, length))
        if len(reserved) == 3:
            raise OSError(28, "No space left on device")
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    with pytest.raises(OutputError, match=r"out.npy: cannot be written: the disk is full"):
        weightconv.save(ws, tmp_path / "out.npy")
    assert [p.name for p in tmp_path.iterdir()] == []
    assert len(reserved) == 3 and all(length > 1000 for _, length in reserved[1:])


def test_a_full_disk_in_the_cli_is_exit_2_not_an_internal_error(
    tmp_path, model, monkeypatch, capsys
):
    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "out.npy"
    code = cli.main(
        ["convert", str(model["model"]), str(out), "--prototxt", str(model["prototxt"]), "-q"]
    )
    _assert_one_line(code, capsys.readouterr().err, "out.npy: cannot be written: the disk is full")
    assert list(tmp_path.iterdir()) == []


# Stale temporaries ------------------------------------------------------------------------------


def _weights(seed: int) -> WeightSet:
    rng = np.random.default_rng(seed)
    return WeightSet(
        layers=[
            Layer(
                f"layer{i}",
                tensors={
                    "weights": rng.standard_normal((60, 50)).astype("f4"),
                    "biases": rng.standard_normal(50).astype("f4"),
                },
            )
            for i in range(3)
        ]
    )


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _leftover(folder: Path, name: str, age_days: float = 0.0) -> Path:
    path = folder / name
    path.write_bytes(b"x" * 1000)
    when = time.time() - age_days * 86400
    os.utime(path, (when, when))
    return path


@contextlib.contextmanager
def _holding_lock(path: Path) -> Iterator[None]:
    """Another live process holding `path` open and locked, as a writer does."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
            "fcntl.lockf(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
    try:
        yield
    finally:
        holder.communicate()


def test_temporaries_name_their_writer():
    fd, path = files.temporary_beside(Path("/tmp/some output.npy"))
    try:
        assert path.parent == Path("/tmp")
        assert files.parse_temporary(path.name, lambda n: n == "some output.npy") == (
            "some output.npy",
            os.getpid(),
        )
        assert files.owner_alive(os.getpid(), path)
    finally:
        os.close(fd)
        path.unlink()


@pytest.mark.parametrize("name", ["out.npy", "out.weights.h5"])
def test_the_next_run_removes_stale_temporaries_only(tmp_path, name):
    dead, sleeper = _dead_pid(), subprocess.Popen(["sleep", "60"])
    try:
        stale = [
            _leftover(tmp_path, f".{name}.{dead}.0a1b2c3d.partial"),
            _leftover(tmp_path, f".{name}.k2j4h5g6.partial", age_days=2),  # no PID, old
            _leftover(tmp_path, f".{name}.{sleeper.pid}.0a1b2c3e.partial", age_days=3),  # reused
        ]
        live = [
            _leftover(tmp_path, f".{name}.{sleeper.pid}.0a1b2c3f.partial"),
            _leftover(tmp_path, f".{name}.k2j4h5g7.partial", age_days=0.5),  # no PID, young
            _leftover(tmp_path, f".{name}.{dead}.0a1b2c40.partial"),  # locked below
            _leftover(tmp_path, f".other.npy.{dead}.0a1b2c41.partial"),  # another output's
        ]
        with _holding_lock(live[2]):
            result = weightconv.save(_weights(1), tmp_path / name)
        assert [p.exists() for p in stale] == [False] * 3
        assert [p.exists() for p in live] == [True] * 4
        (note,) = result.notes
        assert note.startswith(f"removed 3 temporary files (2.9 kB) left in {tmp_path}")
        assert stale[0].name in note and "interrupted run" in note
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_checkpoint_write_removes_its_stale_temporaries(tmp_path):
    dead = _dead_pid()
    stale = [
        _leftover(tmp_path, f".model.ckpt.index.{dead}.0a1b2c3d.partial"),
        _leftover(tmp_path, f".model.ckpt.data-00000-of-00004.{dead}.0a1b2c3d.partial"),
        _leftover(tmp_path, f".checkpoint.{dead}.0a1b2c3d.partial"),
    ]
    kept = _leftover(tmp_path, f".model.ckpt-2.index.{dead}.0a1b2c3d.partial")
    result = weightconv.save(_weights(1), tmp_path / "model.ckpt")
    assert not any(p.exists() for p in stale) and kept.exists()
    assert any(n.startswith("removed 3 temporary files") for n in result.notes)


# Two runs racing to create one output ------------------------------------------------------------


def _synchronise_publishing(monkeypatch: pytest.MonkeyPatch, parties: int) -> None:
    """Make each thread's first no-replace rename wait for the others: all racers have
    written everything and checked that the output is absent before any publishes."""
    barrier = threading.Barrier(parties)
    waited = threading.local()
    real = files.move_noreplace

    def synchronised(source: Path, target: Path) -> None:
        if not getattr(waited, "done", False):
            waited.done = True
            barrier.wait(timeout=30)
        real(source, target)

    monkeypatch.setattr(files, "move_noreplace", synchronised)
    monkeypatch.setattr(naming, "move_noreplace", synchronised)


def _race(write: Callable[[int], object], parties: int = 2) -> list[BaseException | None]:
    outcomes: list[BaseException | None] = [None] * parties

    def run(index: int) -> None:
        try:
            write(index)
        except BaseException as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(parties)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def _digest(weights: WeightSet) -> list[bytes]:
    return [np.asarray(t).tobytes() for layer in weights.layers for t in layer.tensors.values()]


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "link"])
@pytest.mark.parametrize("name", ["out.npy", "out.ckpt", "out.weights.h5"])
def test_two_threads_creating_one_output_one_wins(tmp_path, monkeypatch, name, renameat2):
    if not renameat2:
        monkeypatch.setattr(files, "_renameat2", None)
    _synchronise_publishing(monkeypatch, 2)
    sets = [_weights(1), _weights(2)]
    outcomes = _race(lambda i: weightconv.save(sets[i], tmp_path / name))
    winners = [i for i, exc in enumerate(outcomes) if exc is None]
    assert len(winners) == 1, outcomes
    loser = outcomes[1 - winners[0]]
    assert isinstance(loser, OutputExistsError), loser
    assert _digest(weightconv.load(tmp_path / name)) == _digest(sets[winners[0]])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _racing_process(barrier, name: str, seed: int, folder: str) -> None:  # pragma: no cover
    real = files.move_noreplace
    waited = []

    def synchronised(source: Path, target: Path) -> None:
        if not waited:
            waited.append(True)
            barrier.wait(timeout=30)
        real(source, target)

    files.move_noreplace = synchronised  # type: ignore[assignment]
    naming.move_noreplace = synchronised  # type: ignore[assignment]
    try:
        weightconv.save(_weights(seed), Path(folder) / name)
    except OutputExistsError:
        os._exit(3)
    os._exit(0)


@pytest.mark.parametrize("name", ["out.npy", "out.ckpt"])
def test_two_processes_creating_one_output_one_wins(tmp_path, name):
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    racers = [
        context.Process(target=_racing_process, args=(barrier, name, seed, str(tmp_path)))
        for seed in (1, 2)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    codes = [racer.exitcode for racer in racers]
    assert sorted(codes) == [0, 3], codes  # type: ignore[type-var]
    winner = codes.index(0) + 1
    assert _digest(weightconv.load(tmp_path / name)) == _digest(_weights(winner))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_file_that_appears_meanwhile_is_not_replaced(tmp_path, monkeypatch):
    """Another program creates the output while weightconv writes it: refused, its file kept."""
    real = files.publish

    def intruding(temporary: Path, target: Path, *, replace: bool) -> None:
        target.write_bytes(b"theirs")
        real(temporary, target, replace=replace)

    monkeypatch.setattr(files, "publish", intruding)
    with pytest.raises(OutputExistsError, match="appeared while this run was writing it"):
        weightconv.save(_weights(1), tmp_path / "out.npy")
    assert (tmp_path / "out.npy").read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]
