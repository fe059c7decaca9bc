"""caffe2npy on a VGG16-sized caffemodel, against `cp` and the naive protobuf path.

    python benchmarks/run.py [--repeats 5] [--keep]

Generates a seeded VGG16 .caffemodel (16 weighted layers, 138,357,544 float32
parameters, about 553 MB) in benchmarks/work/, then runs each case REPEATS times
in a fresh process, alternating cases, and reports the median wall time and the
median peak RSS of that process (from os.wait4, so only the measured process
counts). The file is read from the page cache in every case (it was just
written), so the numbers compare compute and memory, not disk.

Cases:
- cp: copying the file, the floor for touching every byte;
- naive: the generated protobuf module's ParseFromString of the whole file, then
  np.array(blob.data) per blob, as converters built on protobuf objects do;
- weightconv: `weightconv caffe2npy` writing the converted .npy (more work than
  naive, which writes nothing).

Results go to benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
RESULTS = HERE / "results.md"

NAIVE = """
import sys
import numpy as np
from weightconv._proto import caffe_pb2
net = caffe_pb2.NetParameter()
with open(sys.argv[1], "rb") as handle:
    net.ParseFromString(handle.read())
arrays = [np.array(blob.data, dtype=np.float32) for layer in net.layer for blob in layer.blobs]
print(sum(a.size for a in arrays))
"""


CANONICAL = """
import sys
import weightconv
from weightconv.model.canonical import canonical_layers
weights = weightconv.load(sys.argv[1], prototxt=sys.argv[2])
print(sum(t.size for layer in canonical_layers(weights) for t in layer.tensors.values()))
"""


def write_section(name: str, text: str) -> None:
    """Put `text` into results.md between this benchmark's markers, keeping the others'."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    current = RESULTS.read_text() if RESULTS.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        current = (current.rstrip() + "\n\n" if current.strip() else "") + block
    RESULTS.write_text(current)


def measure(command: list[str]) -> tuple[float, float]:
    """Run `command`; return (wall seconds, peak RSS in MB) of that process alone."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stderr = process.stderr.read().decode() if process.stderr else ""
    if status != 0:
        raise SystemExit(f"{command[:3]} failed ({status}): {stderr}")
    return wall, usage.ru_maxrss / 1024


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import google.protobuf
    import numpy

    return (
        f"{os.cpu_count()} cores, {cpu}, {memory:.0f} GiB RAM; Python "
        f"{platform.python_version()}, numpy {numpy.__version__}, protobuf "
        f"{google.protobuf.__version__} ({_protobuf_backend()} backend)"
    )


def _protobuf_backend() -> str:
    from google.protobuf.internal import api_implementation

    return api_implementation.Type()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/work/")
    args = parser.parse_args()
    from weightconv.testing import synthetic

    # Byte-compile the package first: with PYTHONDONTWRITEBYTECODE set (as on our CI machines)
    # an editable install would otherwise recompile every module in every measured run.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import compileall, os, weightconv; "
            "compileall.compile_dir(os.path.dirname(weightconv.__file__), quiet=1)",
        ],
        check=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""},
    )
    WORK.mkdir(exist_ok=True)
    model = WORK / "vgg16.caffemodel"
    out = WORK / "vgg16.npy"
    net = synthetic.build("vgg16", seed=0)
    if not model.exists():
        # In a child process: a forked child's peak RSS counts the parent's pages, so the
        # parent must never hold the model.
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from weightconv.testing import synthetic; "
                "synthetic.build('vgg16', seed=0).write_caffemodel(sys.argv[1])",
                str(model),
            ],
            check=True,
        )
    prototxt = WORK / "vgg16.prototxt"
    prototxt.write_text(net.deploy_prototxt)
    size_mb = model.stat().st_size / 1e6
    cases = {
        "cp": ["cp", str(model), str(WORK / "copy.caffemodel")],
        "naive protobuf (ParseFromString + np.array(blob.data))": [
            sys.executable,
            "-c",
            NAIVE,
            str(model),
        ],
        "weightconv read into canonical layout (no output, like naive)": [
            sys.executable,
            "-c",
            CANONICAL,
            str(model),
            str(prototxt),
        ],
        "weightconv caffe2npy (writes the .npy)": [
            sys.executable,
            "-m",
            "weightconv",
            "caffe2npy",
            str(model),
            "--prototxt",
            str(prototxt),
            "-o",
            str(out),
            "--quiet",
        ],
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, command in cases.items():
            for stale in (out, WORK / "copy.caffemodel"):
                stale.unlink(missing_ok=True)
            os.sync()  # no write-back of the previous case's output during this one
            samples[name].append(measure(command))
            print(
                f"{name}: {samples[name][-1][0]:.2f} s, {samples[name][-1][1]:.0f} MB",
                file=sys.stderr,
            )
    rows = []
    spreads = {}
    for name, values in samples.items():
        wall = statistics.median(v[0] for v in values)
        rss = statistics.median(v[1] for v in values)
        rows.append((name, wall, rss))
        spreads[name] = f"{min(v[0] for v in values):.2f}-{max(v[0] for v in values):.2f}"
    naive, in_memory, ours = rows[1], rows[2], rows[3]
    lines = [
        "## caffe2npy",
        "",
        f"caffe2npy on a generated VGG16-sized caffemodel: {size_mb:.0f} MB, "
        f"{net.parameter_count:,} float32 parameters in 16 weighted layers.",
        f"Machine: {machine()}.",
        f"Method: `python benchmarks/run.py --repeats {args.repeats}`; each case runs "
        f"{args.repeats} times in a fresh process, cases alternating; medians shown. Peak RSS "
        f"is the measured process's own (os.wait4). The input is in the page cache for every "
        f"case; outputs from the previous case are deleted and `sync` runs before each.",
        "",
        "| case | median wall (s) | median peak RSS (MB) | wall min-max (s) |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {wall:.2f} | {rss:,.0f} | {spreads[name]} |" for name, wall, rss in rows],
        "",
        f"Reading into the canonical layout vs naive: {naive[1] / in_memory[1]:.2f}x faster, "
        f"{in_memory[2] / naive[2] * 100:.0f}% of its peak memory.",
        f"The whole caffe2npy command vs naive: {naive[1] / ours[1]:.2f}x faster, "
        f"{ours[2] / naive[2] * 100:.0f}% of its peak memory, though it also writes the "
        f"converted {out.stat().st_size / 1e6:.0f} MB .npy, which the naive path does not.",
        f"1-minute load average after the runs: {os.getloadavg()[0]:.2f}.",
        "",
    ]
    write_section("caffe2npy", "\n".join(lines))
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(WORK)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
