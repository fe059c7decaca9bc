"""The report of benchmarks/routes.py: the routes and their acceptance thresholds, a measured
case, the table rows, the computed verdicts and the machine line."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

CONVERSIONS = ("caffe2npy", "caffe2ckpt", "caffe2h5", "npy2ckpt", "ckpt2npy", "npy2h5", "h52npy")
#: The other outputs (today's containers, NumPy's .npz): held to the same memory bound,
#: timed against their own libraries.
CONTAINERS = ("caffe2pt", "caffe2safetensors", "npy2safetensors", "npy2pt", "caffe2npz", "npy2npz")
ROUTES = (*CONVERSIONS, "inspect", *CONTAINERS)
# Acceptance thresholds.
CP_RATIO = {"caffe2npy": 1.5, "caffe2ckpt": 1.8, "caffe2h5": 1.8}  # others: DEFAULT_CP_RATIO
DEFAULT_CP_RATIO = 1.5
PEAK_SLACK_MIB = 120.0
INSPECT_SPEEDUP, INSPECT_MAX_MIB = 20.0, 60.0


@dataclass
class Case:
    kind: str  # "cp", "weightconv" or "anchor"
    label: str
    command: list[str]
    samples: list[tuple[float, float]] = field(default_factory=list)  # (wall s, peak MiB)

    @property
    def wall(self) -> float:
        return statistics.median(s[0] for s in self.samples)

    @property
    def peak(self) -> float:
        return statistics.median(s[1] for s in self.samples)

    def cell(self) -> str:
        walls = [s[0] for s in self.samples]
        spread = f" ({min(walls):.2f}–{max(walls):.2f})" if len(walls) > 1 else ""
        return f"{self.wall:.2f}{spread}"


def row(route: str, source: Path, cases: dict[str, Case], largest_mib: float) -> str:
    cp, ours, anchor = cases["cp"], cases["weightconv"], cases.get("anchor")
    name = source.name
    if ".data-" in name:  # a checkpoint: its prefix, and cp copies the .data file
        name = f"ckpt/{name.split('.data-')[0]} (.data)"
    cells = [
        route,
        f"`{name}`",
        f"{source.stat().st_size / 1e6:,.0f}",
        cp.cell(),
        ours.cell(),
        f"{ours.peak:,.0f}",
        f"{ours.wall / cp.wall:.2f}x",
        f"{ours.peak - largest_mib:+,.0f}",
    ]
    if anchor is None:
        cells += ["(not run)", "", "", ""]
    else:
        speed = anchor.wall / ours.wall
        cells += [anchor.label, anchor.cell(), f"{anchor.peak:,.0f}", f"{speed:.1f}x"]
    return "| " + " | ".join(cells) + " |"


def acceptance(
    results: dict[int, dict[str, dict[str, Case]]], largest: dict[int, float]
) -> list[str]:
    """One computed verdict per line."""

    def verdict(values: list[str], failures: list[str]) -> str:
        tail = "met" if not failures else f"**NOT met** ({'; '.join(failures)})"
        return f"{', '.join(values)}: {tail}"

    lines = []
    for route in ROUTES:
        runs = {s: r[route] for s, r in results.items() if route in r}
        if not runs or route in CONTAINERS:  # held to the memory bound below only
            continue
        if route != "inspect":
            limit = CP_RATIO.get(route, DEFAULT_CP_RATIO)
            ratios = {s: c["weightconv"].wall / c["cp"].wall for s, c in runs.items()}
            values = [f"{s}x {r:.2f}x" for s, r in ratios.items()]
            failures = [f"{s}x: {r:.2f}x vs {limit}x" for s, r in ratios.items() if r > limit]
            lines.append(f"- {route} <= {limit}x `cp`: {verdict(values, failures)}")
        if route in ("caffe2ckpt", "caffe2h5"):
            second = route.replace("caffe2", "npy2")
            text = f"- {route} faster than `caffe2npy && {second}`: "
            if all("anchor" in c for c in runs.values()):
                speed = {s: c["anchor"].wall / c["weightconv"].wall for s, c in runs.items()}
                values = [f"{s}x {v:.2f}x faster" for s, v in speed.items()]
                failures = [f"{s}x: {v:.2f}x vs > 1x" for s, v in speed.items() if v <= 1]
                lines.append(text + verdict(values, failures))
            else:
                lines.append(text + "not measured (--no-anchors)")
        if route == "inspect":
            text = f"- inspect >= {INSPECT_SPEEDUP:.0f}x faster than TF inspect_checkpoint: "
            if all("anchor" in c for c in runs.values()):
                speed = {s: c["anchor"].wall / c["weightconv"].wall for s, c in runs.items()}
                values = [f"{s}x {v:.1f}x" for s, v in speed.items()]
                failures = [
                    f"{s}x: {v:.1f}x vs {INSPECT_SPEEDUP:.0f}x"
                    for s, v in speed.items()
                    if v < INSPECT_SPEEDUP
                ]
                lines.append(text + verdict(values, failures))
            else:
                lines.append(text + "not measured (--no-anchors)")
            peaks = {s: c["weightconv"].peak for s, c in runs.items()}
            values = [f"{s}x {p:.0f} MiB" for s, p in peaks.items()]
            failures = [
                f"{s}x: {p:.0f} vs {INSPECT_MAX_MIB:.0f} MiB"
                for s, p in peaks.items()
                if p >= INSPECT_MAX_MIB
            ]
            lines.append(f"- inspect under {INSPECT_MAX_MIB:.0f} MiB: {verdict(values, failures)}")
    for scale, by_route in results.items():
        limit = largest[scale] + PEAK_SLACK_MIB
        route_peaks = {route: c["weightconv"].peak for route, c in by_route.items()}
        worst = max(route_peaks, key=lambda route: route_peaks[route])
        failures = [
            f"{r} {p:,.0f} vs {limit:,.0f} MiB" for r, p in route_peaks.items() if p > limit
        ]
        lines.append(
            f"- {scale}x: every weightconv route's peak RSS <= largest tensor + "
            f"{PEAK_SLACK_MIB:.0f} MiB = {limit:,.0f} MiB: "
            + verdict([f"highest {worst} {route_peaks[worst]:,.0f} MiB"], failures)
        )
    return lines


def machine(work: Path, v: dict[str, str]) -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [
        ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")
    ]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    df = subprocess.run(["df", "--output=fstype", str(work)], capture_output=True, text=True)
    fstype = df.stdout.split()[-1] if df.returncode == 0 and df.stdout.split() else "unknown"
    cp = subprocess.run(["cp", "--version"], capture_output=True, text=True).stdout or "?"
    cp = f"`{cp.splitlines()[0]}`"
    if cp.startswith("`cp (GNU coreutils) ") and int(cp.split()[-1].split(".")[0]) >= 9:
        cp += ", which copies in the kernel (copy_file_range)"
    return (
        f"{os.cpu_count()} cores, {models[0] if models else 'unknown CPU'}, {memory:.1f} GiB "
        f"RAM, Linux {platform.release()}, work folder on {fstype}; {cp}; Python "
        f"{v['python']}, numpy {v['numpy']}, h5py {v['h5py']}, protobuf {v['protobuf']} "
        f"({v['backend']} backend), TensorFlow {v['tensorflow']}, Keras {v['keras']}"
    )
