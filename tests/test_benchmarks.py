"""benchmarks/routes.py runs end to end on a tiny net and writes a complete report.

No timing is asserted: the run only proves that every route's cases succeed and that the
report has its table rows and its acceptance section (about 10 s on 2 cores).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROUTES = ("caffe2npy", "caffe2ckpt", "caffe2h5", "npy2ckpt", "ckpt2npy", "npy2h5", "h52npy")


def test_routes_benchmark_reports_every_route(tmp_path: Path) -> None:
    results = tmp_path / "r.md"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "routes.py"),
        "--width",
        "0.0625",
        "--scales",
        "1",
        "--repeats",
        "1",
        "--no-anchors",
        "--results",
        str(results),
        "--work",
        str(tmp_path / "work"),
    ]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    text = results.read_text()
    for route in (*ROUTES, "inspect"):
        assert re.search(rf"^\| {route} \| `", text, re.MULTILINE), f"no row for {route}"
    assert "\n## Acceptance\n" in text
    acceptance = text.split("\n## Acceptance\n", 1)[1]
    verdicts = [line for line in acceptance.splitlines() if line.startswith("- ")]
    assert verdicts and all(
        line.endswith((": met", "not measured (--no-anchors)")) or "NOT met" in line
        for line in verdicts
    ), verdicts
    assert not (tmp_path / "work" / "out").exists()  # outputs deleted, inputs kept
    assert (tmp_path / "work" / "vgg16-1x-w0.0625.caffemodel").exists()
