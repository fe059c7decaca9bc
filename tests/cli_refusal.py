"""A bad file refused as the promise says: the library raises a WeightconvError of one line
naming the file, and the command line, run as a fresh process, exits 2 with that one line.

(`tests.test_hostile_inputs._refused` also bounds the child's peak memory, which it reads as
``ru_maxrss``: a child inherits that from the pytest process it was forked from, so once torch
is imported there every child looks as large as the suite. These files are small and garbage,
not size bombs; the checks that matter here are the line and the exit code.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import weightconv

REPO = Path(__file__).resolve().parents[1]


def refused(path: Path, argv: list[str], **options: Any) -> str:
    """Assert that reading `path` (all its tensors) and running the CLI on it both refuse it in
    one line naming it; returns the library's message."""
    with pytest.raises(weightconv.WeightconvError) as caught:
        weights = weightconv.load(path, **options)
        for _layer, _role, tensor in weights.tensors():
            np.asarray(tensor)
    message = str(caught.value)
    assert "\n" not in message and path.name in message, message
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    result = subprocess.run(
        [sys.executable, "-m", "weightconv", *argv, "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and path.name in lines[0], result.stderr
    return message
