"""Shared test helpers: where the real-file corpus lives, and skipping when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


def corpus_file(relative: str) -> Path:
    """Path of a file in ../shared/corpus; skips the test with a reason when it is absent."""
    path = CORPUS / relative
    if not path.exists():
        pytest.skip(f"../shared/corpus/{relative} not present (a fresh clone has no ../shared; "
                    f"CI has it)")
    return path


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.exists():
        pytest.skip("../shared/corpus not present (a fresh clone has no ../shared; CI has it)")
    return CORPUS
