"""`inspect` (every tensor of a file, or one tensor) and `formats` (the registry)."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from weightconv import formats, pipeline
from weightconv.cli import args as common
from weightconv.errors import EXIT_OK, UsageError
from weightconv.reports import SCHEMA_VERSION, Inventory, TensorReport


def add(verbs: Any) -> None:
    p = verbs.add_parser(
        "inspect",
        help="list every tensor in a weight file, or show one",
        description="List every tensor a file holds (shape, dtype, size, where the file keeps "
        "it), training state included and marked; --tensor shows one tensor's "
        "statistics (and --values all of it).",
        epilog=common.examples(
            "weightconv inspect model.ckpt",
            "weightconv inspect vgg16.caffemodel --prototxt deploy.prototxt --canonical --json",
            "weightconv inspect bvlc_alexnet.npy --tensor conv1/weights",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path)
    p.add_argument("--tensor", metavar="NAME", help="show one tensor (layer/role or its name)")
    p.add_argument("--values", action="store_true", help="with --tensor: print every value")
    p.add_argument(
        "--canonical",
        action="store_true",
        help="show tensors in TensorFlow layout, as a conversion writes them",
    )
    common.global_switches(p, top=False)
    common.add_input_format(p)
    common.add_selection(p)
    common.add_format_options(p, "read")
    p.set_defaults(handler=_inspect)

    p = verbs.add_parser(
        "formats",
        help="list the supported formats",
        description="The formats this installation reads and writes.",
        epilog=common.examples("weightconv formats", "weightconv formats --json"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.global_switches(p, top=False)
    p.set_defaults(handler=_formats)


def _inspect(args: argparse.Namespace) -> int:
    fmt = formats.detect(args.file, args.src_format)
    reading = common.options_for(fmt, fmt.read_options, common.given_options(args, "read"), "read")
    if args.tensor:
        report = pipeline.inspect_tensor(
            args.file,
            args.tensor,
            format=fmt.name,
            options=reading,
            only=args.only,
            skip=args.skip,
            canonical=args.canonical,
        )
        return _show_tensor(args, report)
    if args.values:
        raise UsageError("--values needs --tensor NAME")
    inventory = pipeline.inspect(
        args.file,
        format=fmt.name,
        options=reading,
        only=args.only,
        skip=args.skip,
        canonical=args.canonical,
    )
    if args.json:
        print(json.dumps(inventory.to_dict(), indent=2, default=json_default))
    else:
        _render(inventory, args.quiet)
    return EXIT_OK


def _render(inventory: Inventory, quiet: bool) -> None:
    detail = ", ".join(f"{k} {v}" for k, v in inventory.detail.items() if v not in (None, ""))
    print(
        f"{inventory.input.path}: {inventory.input.format}"
        f"{' (' + detail + ')' if detail else ''}; layout {inventory.layout}"
    )
    rows = inventory.tensors
    width = max([len(r.name) for r in rows] + [6])
    kinds = max([len(r.dtype) for r in rows] + [8])  # float8_e4m3fn, complex128
    marked = any(r.status != "weights" for r in rows)
    print(
        f"{'tensor':<{width}}  {'shape':<22} {'dtype':<{kinds}} {'parameters':>12} {'bytes':>12}"
        + ("  status" if marked else "")
    )
    for r in rows:
        shape = "x".join(map(str, r.shape)) or "scalar"
        status = f"  {r.status}" if marked and r.status != "weights" else ""
        print(
            f"{r.name:<{width}}  {shape:<22} {r.dtype:<{kinds}} {r.parameters:>12,} "
            f"{r.bytes:>12,}{status}"
        )
    totals = inventory.totals
    aside = f" ({totals['set_aside']} set aside)" if totals["set_aside"] else ""
    print(
        f"{totals['tensors']} tensors{aside} in {totals['layers']} layers, "
        f"{totals['parameters']:,} parameters, {common.mb(totals['bytes'])}"
    )
    if not quiet:
        for note in inventory.notes:
            print(f"note: {common.translate(note)}", file=sys.stderr)


def json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


def _show_tensor(args: argparse.Namespace, report: TensorReport) -> int:
    if args.json:
        print(json.dumps(report.to_dict(with_values=args.values), indent=2))
        return EXIT_OK
    for key, value in report.stats.items():
        print(f"{key:>10}: {value}")
    with np.printoptions(threshold=sys.maxsize if args.values else 200, edgeitems=3):
        print(report.values)
    return EXIT_OK


def _formats(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = [
        {
            "name": f.name,
            "title": f.title,
            "suffixes": list(f.suffixes),
            "read": True,
            "write": f.can_write,
            "verb": f.verb,
            "read_options": f.read_options.names(),
            "write_options": f.write_options.names() if f.write_options else [],
        }
        for f in formats.FORMATS
    ]
    if args.json:
        print(
            json.dumps(
                {"schema_version": SCHEMA_VERSION, "ok": True, "verb": "formats", "formats": rows},
                indent=2,
            )
        )
        return EXIT_OK
    name_width = max(len(r["name"]) for r in rows) + 1
    suffix_width = max(len(" ".join(r["suffixes"])) for r in rows) + 1
    indent = name_width + 6 + suffix_width
    print(f"{'name':<{name_width}}{'write':<6}{'suffixes':<{suffix_width}}description")
    for r in rows:
        title = textwrap.wrap(r["title"], width=max(100 - indent, 30))
        print(
            f"{r['name']:<{name_width}}{'yes' if r['write'] else 'no':<6}"
            f"{' '.join(r['suffixes']):<{suffix_width}}{title[0]}"
        )
        for line in title[1:]:
            print(" " * indent + line)
    return EXIT_OK
