"""A run killed at any moment loses nothing: the output reads as exactly the old weights or
exactly the new ones, never a mix or a checksum failure, and the next run leaves no
temporaries, journals or kept-aside files behind.

Two ways of dying: `os._exit` at the k-th file rename, link or unlink of a forked writer, for
every k (no handler, no ``finally`` runs: a kill at each step of the commit), and a real
``kill -9`` of a converting child at seeded moments.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import weightconv
from weightconv._util import files
from weightconv.errors import WeightconvError
from weightconv.model import Layer, WeightSet
from weightconv.testing import synthetic

KILLED = 99
MUTATIONS = ("replace", "rename", "link", "unlink")


def _weights(seed: int, layers: int = 5) -> WeightSet:
    rng = np.random.default_rng(seed)
    return WeightSet(
        layers=[
            Layer(
                f"layer{i}",
                tensors={
                    "weights": rng.standard_normal((40, 30)).astype("f4"),
                    "biases": rng.standard_normal(30).astype("f4"),
                },
            )
            for i in range(layers)
        ]
    )


def _digest(weights: WeightSet) -> dict[str, str]:
    return {
        f"{layer.name}/{role}": hashlib.sha256(
            np.ascontiguousarray(np.asarray(tensor)).tobytes()
        ).hexdigest()
        for layer in weights.layers
        for role, tensor in layer.tensors.items()
    }


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _count_mutations(k: int, on_kth: Callable[[], None]) -> None:
    """Make the k-th file rename/link/unlink (from 0) call `on_kth` instead of happening."""
    count = [0]

    def wrap(function: Callable[..., object]) -> Callable[..., object]:
        def counted(*args: object, **kwargs: object) -> object:
            count[0] += 1
            if count[0] - 1 == k:
                on_kth()
            return function(*args, **kwargs)

        return counted

    for name in MUTATIONS:
        setattr(os, name, wrap(getattr(os, name)))
    if files._renameat2 is not None:
        files._renameat2 = wrap(files._renameat2)  # type: ignore[assignment]


def _killed_at(k: int, write: Callable[[], object]) -> bool:
    """Fork a child that runs `write` and dies at its k-th mutation; True if it died."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            _count_mutations(k, lambda: os._exit(KILLED))
            write()
            code = 0
        except BaseException as exc:
            print(f"child failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, KILLED), f"the writer failed at step {k} (exit {code})"
    return code == KILLED


CKPT_CASES = {
    "same names": (1, 1),
    "more shards": (2, 3),
    "fewer shards": (3, 1),
    "new checkpoint": (None, 2),
}


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "link"])
@pytest.mark.parametrize("case", list(CKPT_CASES))
def test_checkpoint_killed_at_every_step_reads_old_or_new(tmp_path, monkeypatch, case, renameat2):
    if not renameat2:  # where the file system lacks it: a hard link, then an unlink
        monkeypatch.setattr(files, "_renameat2", None)
    old_shards, new_shards = CKPT_CASES[case]
    old, new = _weights(1), _weights(2)
    outcomes = []
    for k in range(80):
        folder = tmp_path / f"k{k}"
        folder.mkdir()
        prefix = folder / "model.ckpt"
        if old_shards is not None:
            weightconv.save(old, prefix, shards=old_shards)
        before = sorted(p.name for p in folder.iterdir())

        def write() -> None:
            weightconv.save(new, prefix, shards=new_shards, force=old_shards is not None)  # noqa: B023

        died = _killed_at(k, write)
        try:
            found = _digest(weightconv.load(prefix))  # the next run: settles the commit
        except WeightconvError:
            found = None
        after = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        if found == _digest(new):
            outcomes.append("new")
            assert after == sorted(
                ["checkpoint", "model.ckpt.index"]
                + [f"model.ckpt.data-{i:05d}-of-{new_shards:05d}" for i in range(new_shards)]
            )
        elif old_shards is None:
            outcomes.append("none")
            assert found is None and [n for n in after if n.startswith("model.ckpt")] == []
        else:
            outcomes.append("old")
            assert found == _digest(old), f"step {k}: neither the old nor the new checkpoint"
            assert after == before
        # What a kill leaves beside it (temporaries, the journal, kept-aside files) is gone
        # after a read, or, for temporaries written before the commit began, the next write.
        if _hidden(folder):
            assert all(n.endswith(".partial") for n in _hidden(folder)), _hidden(folder)
            result = weightconv.save(new, prefix, shards=new_shards, force=True)
            assert any("interrupted run" in note for note in result.notes)
            assert _hidden(folder) == []
        if not died:
            break
    else:
        pytest.fail("the writer never finished")
    assert outcomes[-1] == "new" and outcomes[0] in ("old", "none")
    assert len(outcomes) > 4  # the commit has steps to die at


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "link"])
def test_npy_killed_at_every_step_reads_old_or_new(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        monkeypatch.setattr(files, "_renameat2", None)
    old, new = _weights(1), _weights(2)
    for k in range(20):
        for force in (True, False):
            out = tmp_path / f"k{k}-{force}.npy"
            if force:
                weightconv.save(old, out)
            died = _killed_at(k, lambda: weightconv.save(new, out, force=force))  # noqa: B023
            if out.exists():
                assert _digest(weightconv.load(out)) in (_digest(old), _digest(new))
            else:
                assert died and not force
            weightconv.save(new, out, force=True)
            assert _digest(weightconv.load(out)) == _digest(new)
        assert _hidden(tmp_path) == []
        if not died:
            break


@pytest.mark.parametrize("case", ["same names", "more shards"])
def test_checkpoint_interrupted_at_every_step_cleans_up_in_process(tmp_path, case):
    """A KeyboardInterrupt at each step: the handlers leave the old or the new checkpoint
    and nothing else, without waiting for another run."""
    old_shards, new_shards = CKPT_CASES[case]
    old, new = _weights(1), _weights(2)
    real = {name: getattr(os, name) for name in MUTATIONS}
    real_renameat2 = files._renameat2
    for k in range(80):
        folder = tmp_path / f"k{k}"
        folder.mkdir()
        prefix = folder / "model.ckpt"
        weightconv.save(old, prefix, shards=old_shards)

        def interrupt() -> None:
            raise KeyboardInterrupt

        _count_mutations(k, interrupt)
        try:
            weightconv.save(new, prefix, shards=new_shards, force=True)
            finished = True
        except KeyboardInterrupt:
            finished = False
        finally:
            for name, function in real.items():
                setattr(os, name, function)
            files._renameat2 = real_renameat2
        assert _hidden(folder) == [], f"step {k}: {_hidden(folder)}"
        assert _digest(weightconv.load(prefix)) in (_digest(old), _digest(new))
        if finished:
            break


# A real kill -9 of a converting child ------------------------------------------------------


@pytest.fixture(scope="module")
def big_models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("big")
    paths = {}
    for seed in (1, 2):
        net = synthetic.build("alexnet", width=0.5, seed=seed)
        paths[f"model{seed}"] = folder / f"model{seed}.caffemodel"
        net.write_caffemodel(paths[f"model{seed}"])
    paths["prototxt"] = folder / "deploy.prototxt"
    paths["prototxt"].write_text(net.deploy_prototxt)
    yield paths
    shutil.rmtree(folder, ignore_errors=True)


def _convert(src: Path, dst: Path, prototxt: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "weightconv", "convert", str(src), str(dst)]
    return subprocess.Popen(
        [*command, "--prototxt", str(prototxt), "--force", "-q", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _until_writing(child: subprocess.Popen[bytes], folder: Path) -> float:
    """Wait until `child` has a temporary in `folder` (it is writing); the seconds waited."""
    started = time.monotonic()
    while child.poll() is None and not _hidden(folder):
        time.sleep(0.002)
    return time.monotonic() - started


@pytest.mark.parametrize("suffix", [".ckpt", ".npy"])
def test_kill_9_at_random_moments_leaves_the_old_output_or_the_new(tmp_path, big_models, suffix):
    out = tmp_path / f"out{suffix}"
    extra = ("--shards", "2") if suffix == ".ckpt" else ()
    prototxt = big_models["prototxt"]
    expected = {}
    for seed in (1, 2):
        child = _convert(big_models[f"model{seed}"], out, prototxt, *extra)
        _until_writing(child, tmp_path)
        started = time.monotonic()
        assert child.wait() == 0
        writing = time.monotonic() - started  # from the first temporary to the end
        expected[seed] = _digest(weightconv.load(out))
    assert expected[1] != expected[2]
    for seed in range(4):
        assert _convert(big_models["model1"], out, prototxt).wait() == 0  # the old output
        child = _convert(big_models["model2"], out, prototxt, *extra)
        _until_writing(child, tmp_path)
        time.sleep(random.Random(seed).uniform(0.0, 1.1) * writing)  # while writing, committing
        child.send_signal(signal.SIGKILL)
        child.wait()
        found = _digest(weightconv.load(out))
        assert found in (expected[1], expected[2]), f"seed {seed}: neither old nor new"
        assert _convert(big_models["model1"], out, prototxt).wait() == 0  # the next run
        assert _hidden(tmp_path) == []
        assert _digest(weightconv.load(out)) == expected[1]
