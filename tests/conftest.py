"""Shared test helpers: where the real-file corpus lives, and skipping when it is absent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


def corpus_file(relative: str) -> Path:
    """Path of a file in ../shared/corpus; skips the test with a reason when it is absent."""
    path = CORPUS / relative
    if not path.exists():
        pytest.skip(
            f"../shared/corpus/{relative} not present (a fresh clone has no ../shared; CI has it)"
        )
    return path


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.exists():
        pytest.skip("../shared/corpus not present (a fresh clone has no ../shared; CI has it)")
    return CORPUS


@pytest.fixture(scope="session")
def tf_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Reference checkpoints written by TensorFlow itself (tests/tf_oracle.py `make`), once
    per session: (folder, manifest). Skips when TensorFlow cannot be imported."""
    from .tf_oracle import run_oracle

    root = tmp_path_factory.mktemp("tf_reference")
    manifest = run_oracle("make", str(root))
    assert "error" not in manifest, manifest["error"]
    return root, manifest
