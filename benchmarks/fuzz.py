"""Fuzz every reader with mutated seed files and print what happened, as a markdown table.

    python benchmarks/fuzz.py --inputs 20000 --jobs 2 [--seed 0] [--timeout 10]
        [--memory 1024] [--readers npy-small,ckpt-index,...] [--out benchmarks/fuzz-results.md]

Inputs are spread evenly over the chosen readers; each runs in its own forked child under
an address-space limit of ``--memory`` MiB and a ``--timeout`` in seconds (see
tests/fuzz/runner.py). The table counts, per reader, inputs refused with a WeightconvError,
accepted (and fully read), crashed (any other exception, or a signal), hung and blown up;
each distinct crash, hang or blowup follows with a one-line replay command. ``--out``
writes the same report to a file, ``--jsonl`` every bad input (one JSON task a line).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fuzz import runner, seeds  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/fuzz.py", description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=1000, help="total inputs (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the run's RNG seed (default 0)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per input")
    parser.add_argument("--memory", type=int, default=1024, help="MiB of address space per input")
    parser.add_argument("--readers", default="", help="comma-separated reader names (default all)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel drivers (default 2)")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("--jsonl", type=Path, help="also write every bad input here, as JSON")
    parser.add_argument("--seeds", type=Path, default=runner.DEFAULT_SEEDS, help="seed folder")
    parser.add_argument("--list", action="store_true", help="list the readers and their seeds")
    args = parser.parse_args(argv)

    catalogue = seeds.build(args.seeds)
    readers = seeds.readers(catalogue)
    if args.list:
        for reader in readers.values():
            print(f"{reader.name}: " + ", ".join(f"{s}/{f}" for s, f in reader.targets))
        return 0
    names = [n for n in args.readers.split(",") if n] or list(readers)
    unknown = [n for n in names if n not in readers]
    if unknown:
        parser.error(f"unknown readers {unknown}; known: {', '.join(readers)}")
    tasks = runner.make_tasks(args.seeds, catalogue, readers, args.inputs, args.seed, names)
    started = time.monotonic()
    done = [0]

    def progress(result: dict[str, Any]) -> None:
        done[0] += 1
        if done[0] % 500 == 0 or result["outcome"] in runner.BAD:
            rate = done[0] / max(time.monotonic() - started, 1e-9)
            note = ""
            if result["outcome"] in runner.BAD:
                note = f" {result['outcome']} {result['reader']} {result.get('type')}"
            print(f"[{done[0]}/{len(tasks)} {rate:.1f}/s]{note}", file=sys.stderr, flush=True)

    pool = runner.Pool(args.seeds, args.jobs, args.timeout, args.memory)
    results = pool.run(tasks, progress)
    elapsed = time.monotonic() - started
    corpus = sum(1 for s in catalogue.values() if s.corpus)
    report = "\n".join(
        [
            "# Fuzz results",
            "",
            f"{len(results)} inputs, seed {args.seed}, {args.jobs} jobs, timeout {args.timeout:g}s,"
            f" memory {args.memory} MiB per input; {elapsed:.0f}s wall on {platform.node()} "
            f"(Python {platform.python_version()}); {len(catalogue)} seeds ({corpus} from the "
            "corpus).",
            "",
            runner.table(results, names),
            "",
            "## Distinct crashes, hangs and blowups",
            "",
            "Grouped by (outcome, reader, exception type, last weightconv frame); the shortest "
            "mutation of each group is shown.",
            "",
            runner.crash_report(results),
        ]
    )
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
        print(f"\nwrote {args.out}", file=sys.stderr)
    if args.jsonl:
        bad = [r for r in results if r["outcome"] in runner.BAD]
        args.jsonl.write_text("".join(json.dumps(r) + "\n" for r in bad))
        print(f"wrote {args.jsonl} ({len(bad)} bad inputs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
