"""A short fuzz budget in the normal suite: mutated files are refused or read, never worse.

Issue: "hostile and broken input never crashes or hangs". Each reader gets the same number
of deterministic inputs (tests/fuzz: mutated generated seeds, plus the shared corpus's files
when it is there), each run in its own child under a 1 GiB address-space limit and a 10 s
timeout. A failure lists each distinct crash, hang or blowup with a replay command; the long
run is ``python benchmarks/fuzz.py --inputs 20000 --jobs 2``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.fuzz import mutate, runner, seeds

INPUTS_PER_READER = 30
RUN_SEED = 20261201
TIMEOUT = 10.0
MEMORY = 1024


@pytest.fixture(scope="module")
def seed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "seeds"
    seeds.build(root)
    return root


@pytest.fixture(scope="module")
def catalogue(seed_root: Path) -> dict[str, seeds.Seed]:
    return seeds.build(seed_root)


@pytest.fixture(scope="module")
def readers(catalogue: dict[str, seeds.Seed]) -> dict[str, seeds.Reader]:
    return seeds.readers(catalogue)


@pytest.fixture(scope="module")
def results(seed_root: Path, catalogue: Any, readers: Any) -> list[dict[str, Any]]:
    count = INPUTS_PER_READER * len(readers)
    tasks = runner.make_tasks(seed_root, catalogue, readers, count, RUN_SEED)
    return runner.Pool(seed_root, 2, TIMEOUT, MEMORY).run(tasks)


def _task(reader: str, seed: str, target: str, mode: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": 0,
        "reader": reader,
        "seed": seed,
        "target": target,
        "mode": mode,
        "with_options": True,
        "explicit_format": False,
        "mutation": {"kind": "bytes", "ops": []},
        **extra,
    }


def test_every_reader_has_seeds(readers: dict[str, seeds.Reader]) -> None:
    expected = {
        "caffemodel-v1", "caffemodel-v2", "prototxt", "caffe-h5", "npy-mapped", "npy-small",
        "ckpt-index", "ckpt-data", "ckpt-v1", "sstable", "snappy", "keras3-h5", "keras2-h5",
        "keras-archive",
    }  # fmt: skip
    assert set(readers) == expected


def test_corpus_seeds_are_fuzzed_too(catalogue: dict[str, seeds.Seed]) -> None:
    if not seeds.CORPUS.is_dir():
        pytest.skip(f"no shared corpus at {seeds.CORPUS}: fuzzing generated seeds only")
    corpus = {name for name, seed in catalogue.items() if seed.corpus}
    assert {"corpus_cifar_v1", "corpus_cifar_h5", "corpus_tf_half", "corpus_digits"} <= corpus


def test_unmutated_seeds_are_accepted_in_every_mode(seed_root: Path, readers: Any) -> None:
    """The harness's own check: a seed read unchanged must be accepted, or the fuzz proves
    nothing about that reader."""
    tasks: list[dict[str, Any]] = []
    for reader in readers.values():
        modes = ("load", "inspect", "convert") if reader.action == "load" else (reader.action,)
        for seed_name, target in reader.targets:
            for mode in modes:
                tasks.append(_task(reader.name, seed_name, target, mode, id=len(tasks)))
    outcomes = runner.Pool(seed_root, 2, TIMEOUT, MEMORY).run(tasks)
    wrong = [
        f"{r['reader']} {r['seed']}/{r['target']} {r['mode']}: {r['outcome']} "
        f"{r.get('type', '')} {r.get('message', '')}"
        for r in outcomes
        if r["outcome"] != "accepted"
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        ("selftest-refuse", "refused"),
        ("selftest-raise", "crashed"),
        ("selftest-signal", "crashed"),
        ("selftest-alloc", "blowup"),
        ("selftest-hang", "hung"),
    ],
)
def test_the_harness_tells_outcomes_apart(seed_root: Path, mode: str, outcome: str, tmp_path):
    task = _task("npy-small", "npy_dense", "model.npy", mode)
    result = runner.run_forked(task, seed_root, 2.0, 256, tmp_path)
    assert result["outcome"] == outcome, result
    if outcome == "hung":
        assert "_selftest" in result.get("where", "") or result["where"] == "-"


def test_mutations_replay_exactly(seed_root: Path, catalogue: Any, readers: Any) -> None:
    first = runner.make_tasks(seed_root, catalogue, readers, 60, 7)
    again = runner.make_tasks(seed_root, catalogue, readers, 60, 7)
    assert json.dumps(first) == json.dumps(again)
    for task in first[:: len(readers) // 3 or 1]:
        data = (seed_root / task["seed"] / task["target"]).read_bytes()
        try:
            once = mutate.apply(data, task["mutation"], seed_root)
        except Exception:  # a structure-aware mutation that does not fit this seed
            continue
        assert once == mutate.apply(data, task["mutation"], seed_root), task
    ops = mutate.choose_ops(random.Random(1), b"x" * 1000, [])
    assert mutate.apply_ops(b"x" * 1000, ops, seed_root) == mutate.apply_ops(
        b"x" * 1000, ops, seed_root
    )


READERS = [
    "caffemodel-v1", "caffemodel-v2", "prototxt", "caffe-h5", "npy-mapped", "npy-small",
    "ckpt-index", "ckpt-data", "ckpt-v1", "sstable", "snappy", "keras3-h5", "keras2-h5",
    "keras-archive",
]  # fmt: skip


@pytest.mark.parametrize("reader", READERS)
def test_fuzzed_input_is_refused_or_read(reader: str, results: list[dict[str, Any]]) -> None:
    """The contract: 0 crashed (an exception that is not a WeightconvError, or a signal),
    0 hung (10 s), 0 memory blowups (1 GiB) among this reader's inputs."""
    mine = [r for r in results if r["reader"] == reader]
    assert len(mine) == INPUTS_PER_READER
    harness = [r for r in mine if r["outcome"] == "harness"]
    assert len(harness) <= INPUTS_PER_READER // 5, harness
    bad = [r for r in mine if r["outcome"] in runner.BAD]
    assert not bad, (
        f"{len(bad)} of {len(mine)} {reader} inputs broke the contract:\n\n"
        + runner.table(mine, [reader])
        + "\n\n"
        + runner.crash_report(bad)
    )
