"""`weightconv verify` of a full-size AlexNet .npy against its caffemodel: the NumPy engine
(the default) side by side with `--engine tf`, in one run.

    python benchmarks/verify.py [--repeats 5] [--results benchmarks/verify-results.md]

Generates, once, a seeded AlexNet (`weightconv.testing.synthetic`, 60,965,224 parameters) and
its .npy in benchmarks/work/verify/, then runs `weightconv verify NPY --against CAFFEMODEL
--prototxt DEPLOY` (8 synthetic inputs, compared with OpenCV's forward pass) with each engine,
alternating, REPEATS times each, every run a fresh process (imports included: TensorFlow's is
what `--engine tf` costs). A run that does not pass stops the benchmark. Reports medians of
wall time and of the process's own peak RSS (os.wait4; this script imports neither NumPy nor
weightconv, so a child's count starts small).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "verify"
TARGET_SECONDS, TARGET_MIB = 2.0, 700.0

MAKE = """
import sys
from weightconv.testing import synthetic
net = synthetic.build("alexnet", seed=0)
net.write_caffemodel(sys.argv[1])
open(sys.argv[2], "w").write(net.deploy_prototxt)
"""


def cpu() -> str:
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    return names[0] if names else platform.machine()


def measure(command: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        error = process.stderr.read().decode(errors="replace") if process.stderr else ""
        raise SystemExit(f"failed: {shlex.join(command)}\n{error[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=Path, default=HERE / "verify-results.md")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    model, deploy, npy = (
        WORK / "alexnet.caffemodel",
        WORK / "alexnet.prototxt",
        WORK / "alexnet.npy",
    )
    cli = [sys.executable, "-m", "weightconv"]
    if not npy.exists():
        subprocess.run([sys.executable, "-c", MAKE, str(model), str(deploy)], check=True)
        subprocess.run(
            [*cli, "caffe2npy", str(model), "--prototxt", str(deploy), "-o", str(npy), "-q"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    verify = [*cli, "verify", str(npy), "--against", str(model), "--prototxt", str(deploy)]
    cases = {"numpy (default)": verify, "--engine tf": [*verify, "--engine", "tf"]}
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    os.environ.update(env)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    load_before = os.getloadavg()
    for round_number in range(args.repeats):
        names = list(cases) if round_number % 2 == 0 else list(cases)[::-1]
        for name in names:
            samples[name].append(measure(cases[name]))
            print(
                f"[{round_number + 1}/{args.repeats}] {name}: {samples[name][-1][0]:.2f} s",
                file=sys.stderr,
            )
    load_after = os.getloadavg()
    rows, medians = [], {}
    for name, values in samples.items():
        wall = statistics.median(v[0] for v in values)
        peak = statistics.median(v[1] for v in values)
        medians[name] = (wall, peak)
        spread = f"{min(v[0] for v in values):.2f}–{max(v[0] for v in values):.2f}"
        rows.append(f"| {name} | {wall:.2f} ({spread}) | {peak:,.0f} |")
    wall, peak = medians["numpy (default)"]
    verdict = "met" if wall <= TARGET_SECONDS and peak <= TARGET_MIB else "**NOT met**"
    text = "\n".join(
        [
            "# verify: the NumPy engine against `--engine tf`",
            "",
            f"Run: `python benchmarks/verify.py --repeats {args.repeats}`. Machine: "
            f"{os.cpu_count()} cores, {cpu()}, Python "
            f"{platform.python_version()}; load average "
            f"{' '.join(f'{v:.2f}' for v in load_before)} before, "
            f"{' '.join(f'{v:.2f}' for v in load_after)} after.",
            "",
            "`weightconv verify alexnet.npy --against alexnet.caffemodel --prototxt "
            "alexnet.prototxt` on a generated full-size AlexNet, 8 synthetic inputs compared "
            "with OpenCV's forward pass; every run passed. Medians of whole processes "
            "(imports included), engines alternating.",
            "",
            "| engine | wall (s), min–max | peak RSS (MiB) |",
            "|---|---:|---:|",
            *rows,
            "",
            f"Target for the default engine (<= {TARGET_SECONDS} s and <= {TARGET_MIB:.0f} MiB): "
            f"{wall:.2f} s, {peak:,.0f} MiB: {verdict}. `--engine tf` takes "
            f"{medians['--engine tf'][0] / wall:.1f}x as long.",
            "",
        ]
    )
    args.results.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
