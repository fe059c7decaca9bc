"""The house style: ruff clean and ruff-formatted over the whole tree, mypy clean on the
package. The tools are in the test extra; a missing one fails here rather than skipping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=600)


def test_ruff_is_clean():
    result = _run(str(BIN / "ruff"), "check", "--quiet", str(REPO))
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_everything_as_it_is():
    result = _run(str(BIN / "ruff"), "format", "--check", "--quiet", str(REPO))
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean_on_the_package():
    result = _run(sys.executable, "-m", "mypy", "--no-error-summary")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
