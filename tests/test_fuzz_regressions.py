"""Each distinct crash, hang or blowup the fuzzer found: refused (or read) within 10 s; and
each input found accepted but quietly wrong: refused.

The cases are code in tests/fuzz/regressions.py (a seed plus a mutation), not committed
binaries; each runs in a forked child under a 1 GiB address-space limit, as in the fuzzer.
A case whose seed comes from the shared corpus is skipped when the corpus is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fuzz import regressions, runner, seeds

TIMEOUT = 10.0
MEMORY = 1024


@pytest.fixture(scope="module")
def seed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-regressions") / "seeds"
    seeds.build(root)
    return root


@pytest.mark.parametrize("name", sorted(regressions.CASES))
def test_regression_is_refused_cleanly(name: str, seed_root: Path, tmp_path: Path) -> None:
    task = regressions.CASES[name]()
    catalogue = seeds.build(seed_root)
    if task["seed"] not in catalogue:
        pytest.skip(f"seed {task['seed']} comes from the shared corpus, absent at {seeds.CORPUS}")
    result = runner.run_forked(task, seed_root, TIMEOUT, MEMORY, tmp_path)
    assert result["outcome"] in ("refused", "accepted"), (
        f"{name}: {result['outcome']}: {result.get('type')}: {result.get('message')}\n"
        f"  at {result.get('where')} (deepest {result.get('deepest', '-')})\n"
        f"  replay: {runner.reproducer(task)}\n  {json.dumps(result)}"
    )
    if result["outcome"] == "refused":
        assert not result.get("multiline"), f"{name}: a refusal must be one line: {result}"


@pytest.mark.parametrize("name", sorted(regressions.QUIET))
def test_quietly_wrong_input_is_refused(name: str, seed_root: Path, tmp_path: Path) -> None:
    """Inputs the readers accepted and converted into something the file does not mean."""
    task = regressions.QUIET[name]()
    result = runner.run_forked(task, seed_root, TIMEOUT, MEMORY, tmp_path)
    assert result["outcome"] == "refused", (
        f"{name}: {result['outcome']}: {result.get('type', '')} {result.get('message')}\n"
        f"  replay: {runner.reproducer(task)}"
    )
