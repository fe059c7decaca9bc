"""`diff`: two weight files compared tensor by tensor in the canonical layout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from weightconv import formats, pipeline
from weightconv.cli import args as common
from weightconv.errors import EXIT_CHECK_FAILED, EXIT_OK
from weightconv.mapping import CHANNEL_ORDERS
from weightconv.pipeline import DiffSide


def add(verbs: Any) -> None:
    p = verbs.add_parser(
        "diff",
        help="compare the tensors of two weight files of any formats",
        description="Compare A and B tensor by tensor, each in the canonical layout after the "
        "mapping options: max abs and rel difference, missing and extra names, "
        "shape mismatches. Reader options go to the side whose format takes them. "
        "When both sides' channel orders are known (recorded, or given with "
        "--a-channels/--b-channels) and differ, B's first convolution is compared "
        "in A's order. Exit 0 when equal within tolerance, 1 when not.",
        epilog=common.examples(
            "weightconv diff model.caffemodel model.npy --prototxt deploy.prototxt --atol 1e-6",
            "weightconv diff vgg16.npy vgg_16.ckpt --names tf1 --fc-as-dense "
            "--a-channels bgr --b-channels rgb",
            "weightconv diff a.ckpt b.weights.h5 --json",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0)")
    p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (default 0)")
    sides = p.add_argument_group("per side (what a file cannot tell)")
    for side in ("a", "b"):
        sides.add_argument(
            f"--{side}-from",
            dest=f"{side}_format",
            metavar="FORMAT",
            choices=[f.name for f in formats.FORMATS],
            help=f"{side.upper()}'s format (default: detected)",
        )
        sides.add_argument(
            f"--{side}-channels",
            dest=f"{side}_channels",
            choices=CHANNEL_ORDERS,
            help=f"the channel order {side.upper()}'s first convolution expects, "
            f"when its file does not record it",
        )
    common.global_switches(p, top=False)
    common.add_selection(p)
    common.add_mapping(p)
    common.add_format_options(p, "read")
    p.set_defaults(handler=_diff)


def _diff(args: argparse.Namespace) -> int:
    report = pipeline.diff(
        args.a,
        args.b,
        mapping=common.mapping_of(args),
        read_options=common.given_options(args, "read"),
        a_side=DiffSide(format=args.a_format, channels=args.a_channels),
        b_side=DiffSide(format=args.b_format, channels=args.b_channels),
        only=args.only,
        skip=args.skip,
        atol=args.atol,
        rtol=args.rtol,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return EXIT_OK if report.equal else EXIT_CHECK_FAILED
    rows = report.tensors
    width = max([len(r["name"]) for r in rows] + [6])
    for row in rows:
        detail = ""
        if row["status"] in ("close", "differs"):
            detail = f"  max abs {row['max_abs']:.3g}, max rel {row['max_rel']:.3g}"
        elif row["status"] == "shape mismatch":
            detail = f"  {common.shape_text(row['shape_a'])} vs {common.shape_text(row['shape_b'])}"
        print(f"{row['name']:<{width}}  {row['status']}{detail}")
    counts = ", ".join(f"{n} {k}" for k, n in report.counts.items() if n)
    print(f"{'same' if report.equal else 'DIFFERENT'}: {counts}")
    if not args.quiet:
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr)
    return EXIT_OK if report.equal else EXIT_CHECK_FAILED
