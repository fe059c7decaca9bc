"""The `weightconv` command. Thin: parses arguments, calls the library, prints.

Exit codes: 0 success; 1 a check failed (diff, verify); 2 bad input or usage
(unreadable or corrupt file, refused pickle, output exists, shape mismatch);
3 an internal error (a bug: rerun with --debug and report it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, formats
from .errors import EXIT_BAD_INPUT, EXIT_OK, UsageError, WeightconvError
from .layout import canonicalization_steps
from .progress import Progress
from .weights import WeightSet

EXIT_INTERNAL = 3
CAFFE_FORMATS = ("caffemodel", "caffe-h5")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.handler(args))
    except WeightconvError as exc:
        if args.debug:
            traceback.print_exc()
        _report_error(args, str(exc), exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        print("weightconv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return EXIT_OK
    except Exception as exc:  # a bug: say so in one line unless --debug
        if args.debug:
            raise
        _report_error(args, f"internal error: {type(exc).__name__}: {exc} "
                            f"(rerun with --debug for the traceback)", EXIT_INTERNAL)
        return EXIT_INTERNAL


def _report_error(args: argparse.Namespace, message: str, code: int) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": message, "exit_code": code}))
    print(f"weightconv: error: {message}", file=sys.stderr)


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar and no notes on stderr")
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")

    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument("--prototxt", metavar="P", type=Path,
                         help="Caffe net definition (deploy .prototxt) for a .caffemodel")
    reading.add_argument("--input-shape", metavar="C,H,W", type=_shape_arg,
                         help="net input size when the net definition does not give it")
    reading.add_argument("--from", dest="src_format", metavar="FORMAT",
                         help="input format (default: detected from content)")
    reading.add_argument("--trust-pickle", action="store_true",
                         help="allow a .npy pickle to load any Python object (runs code: only "
                              "for files you trust)")
    reading.add_argument("--only", metavar="GLOB", action="append", default=[],
                         help="keep only layers (or tensors) whose name matches; repeatable")
    reading.add_argument("--skip", metavar="GLOB", action="append", default=[],
                         help="leave out layers (or tensors) whose name matches, e.g. fc8; "
                              "repeatable")
    reading.add_argument("--strip-scope", metavar="SCOPE", default="",
                         help="checkpoint input: remove this leading scope from tensor names, "
                              "e.g. vgg_16/")
    reading.add_argument("--flat", action="store_true",
                         help="checkpoint input: keep every tensor under its full name "
                              "(Variable_3, h1/w/Adam, ...) instead of grouping layer/role")

    writing = argparse.ArgumentParser(add_help=False)
    writing.add_argument("-o", "--output", metavar="OUT", type=Path, help="output file")
    writing.add_argument("--to", dest="dst_format", metavar="FORMAT",
                         help="output format (default: from the output's suffix)")
    writing.add_argument("-f", "--force", action="store_true",
                         help="overwrite the output if it exists")
    writing.add_argument("--flavour", choices=("list", "dict", "flat"), default=None,
                         help=".npy layout: {layer: [W, b]} (list, default), "
                              "{layer: {'weights': W, 'biases': b}} (dict) or "
                              "{tensor name: array} (flat, the default with --flat)")
    writing.add_argument("--scope", metavar="SCOPE", default="",
                         help="checkpoint output: put every tensor under this scope, e.g. my/")
    writing.add_argument("--shards", metavar="N", type=_positive_int, default=1,
                         help="checkpoint output: spread tensors over N data files")
    writing.add_argument("--max-shard-size", metavar="SIZE", type=_size_arg, default=None,
                         help="checkpoint output: start a new data file before one would "
                              "exceed SIZE (bytes, or with K/M/G)")

    parser = argparse.ArgumentParser(
        prog="weightconv",
        description="Convert neural-network weights between Caffe, .npy, TensorFlow "
                    "checkpoints and Keras HDF5.",
        epilog="Exit codes: 0 ok, 1 a check failed, 2 bad input or usage, 3 internal error.",
        parents=[common])
    parser.add_argument("--version", action="version", version=f"weightconv {__version__}")
    verbs = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = verbs.add_parser("caffe2npy", parents=[common, reading, writing],
                         help="convert a .caffemodel (or .caffemodel.h5) to a .npy weight dict",
                         description="Convert Caffe weights to a .npy dict in TensorFlow layout "
                                     "(conv HWIO, dense (in, out) with H,W,C flatten order).")
    p.add_argument("model", type=Path, help=".caffemodel or .caffemodel.h5")
    p.set_defaults(handler=_caffe2npy, verb_output_format="npy")

    p = verbs.add_parser("npy2ckpt", parents=[common, reading, writing],
                         help="convert a .npy weight dict to a TensorFlow checkpoint",
                         description="Write a V2 checkpoint (PREFIX.index, PREFIX.data-*) that "
                                     "tf.train.load_checkpoint and tf.compat.v1.train.Saver "
                                     "read; tensors are named layer/weights, layer/biases under "
                                     "an optional --scope.")
    p.add_argument("model", type=Path, help=".npy weight dict")
    p.set_defaults(handler=_npy2ckpt, verb_output_format="ckpt")

    p = verbs.add_parser("ckpt2npy", parents=[common, reading, writing],
                         help="convert a TensorFlow checkpoint to a .npy weight dict",
                         description="Read a V2 or V1 checkpoint (a prefix, its .index, a "
                                     ".data file or a folder with a `checkpoint` file) and "
                                     "write {layer: [W, b]}; --flat writes {name: array}.")
    p.add_argument("model", type=Path, help="checkpoint prefix, .index, or folder")
    p.set_defaults(handler=_ckpt2npy, verb_output_format="npy")

    p = verbs.add_parser("convert", parents=[common, reading, writing],
                         help="convert between any two supported formats",
                         description="Convert SRC to DST; formats from content and suffix.")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path, nargs="?")
    p.set_defaults(handler=_convert)

    p = verbs.add_parser("inspect", parents=[common, reading],
                         help="list the tensors in a weight file, or show one",
                         description="List layers and tensors (shape, dtype, size) of any "
                                     "supported file, as stored; --tensor shows one tensor.")
    p.add_argument("file", type=Path)
    p.add_argument("--tensor", metavar="NAME", help="show one tensor (layer/role)")
    p.add_argument("--values", action="store_true", help="with --tensor: print every value")
    p.add_argument("--canonical", action="store_true",
                   help="show tensors in TensorFlow layout, as a conversion would write them")
    p.set_defaults(handler=_inspect)

    p = verbs.add_parser("formats", parents=[common], help="list the supported formats")
    p.set_defaults(handler=_formats)

    p = verbs.add_parser("demo", parents=[common],
                         help="generate an AlexNet-shaped Caffe model and convert it",
                         description="Build a small AlexNet-shaped .caffemodel (grouped conv, "
                                     "LRN) in DIR, convert it to .npy and that to a "
                                     "TensorFlow checkpoint: the whole path on a built-in "
                                     "example.")
    p.add_argument("--dir", type=Path, default=Path("weightconv-demo"),
                   help="where to write (default: ./weightconv-demo)")
    p.add_argument("--width", type=float, default=0.25,
                   help="AlexNet width factor (1.0 = full size; default 0.25)")
    p.set_defaults(handler=_demo)
    return parser


def _shape_arg(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,227,227, got {text!r}"
                                         ) from None
    if len(dims) not in (1, 3) or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,227,227, got {text!r}")
    return dims


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _size_arg(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = cleaned[-1:] if cleaned[-1:] in "KMG" else ""
    try:
        value = int(float(cleaned[:len(cleaned) - len(unit)]) * units[unit])
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 500M or 2G, got {text!r}")
    return value


def _read_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if getattr(args, "strip_scope", ""):
        options["strip_scope"] = args.strip_scope
    if getattr(args, "flat", False):
        options["flat"] = True
    if getattr(args, "prototxt", None) is not None:
        options["prototxt"] = args.prototxt
    if getattr(args, "input_shape", None) is not None:
        options["input_shape"] = args.input_shape
    if getattr(args, "trust_pickle", False):
        options["trust_pickle"] = True
    return options


# --- verbs -----------------------------------------------------------------------------------


def _caffe2npy(args: argparse.Namespace) -> int:
    source = formats.detect(args.model, args.src_format)
    if source.name not in CAFFE_FORMATS:
        raise UsageError(f"{args.model}: is {source.title}, not a Caffe model; use "
                         f"`weightconv convert`")
    output = args.output or args.model.with_suffix(".npy")
    return _run_conversion(args, source, args.model, output)


def _npy2ckpt(args: argparse.Namespace) -> int:
    source = formats.detect(args.model, args.src_format)
    if source.name != "npy":
        raise UsageError(f"{args.model}: is {source.title}, not a .npy weight dict; use "
                         f"`weightconv convert`")
    output = args.output or args.model.with_suffix(".ckpt")
    return _run_conversion(args, source, args.model, output)


def _ckpt2npy(args: argparse.Namespace) -> int:
    source = formats.detect(args.model, args.src_format)
    if source.name != "ckpt":
        raise UsageError(f"{args.model}: is {source.title}, not a TensorFlow checkpoint; use "
                         f"`weightconv convert`")
    output = args.output or Path(str(args.model).removesuffix(".index") + ".npy")
    return _run_conversion(args, source, args.model, output)


def _convert(args: argparse.Namespace) -> int:
    output = args.dst or args.output
    if output is None:
        raise UsageError("convert needs an output: weightconv convert SRC DST")
    source = formats.detect(args.src, args.src_format)
    return _run_conversion(args, source, args.src, output)


def _run_conversion(args: argparse.Namespace, source: formats.Format, src: Path,
                    dst: Path) -> int:

    # Parsers share the --to action through `parents`, so a verb's own output format lives
    # in another attribute: set_defaults(dst_format=...) would change it for every verb.
    target = formats.for_output(dst, args.dst_format or getattr(args, "verb_output_format", None))
    target.check_output(dst, args.force)
    weights, left_out = _selected(args, source.read(src, **_read_options(args)))
    flavour = args.flavour or ("flat" if getattr(args, "flat", False) else "list")
    with Progress(total=weights.nbytes, label=f"{src.name} -> {dst.name}",
                  enabled=False if args.quiet else None) as bar:
        written = target.write(weights, dst, force=args.force, flavour=flavour,
                               progress=bar, scope=args.scope, shards=args.shards,
                               max_shard_bytes=args.max_shard_size)
    written["skipped"] = left_out + list(written.get("skipped", []))
    summary = _conversion_summary(weights, source, target, src, dst, written)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, quiet=args.quiet)
    return EXIT_OK


def _selected(args: argparse.Namespace, weights: WeightSet) -> tuple[WeightSet, list[str]]:
    only, skip = getattr(args, "only", []), getattr(args, "skip", [])
    if not only and not skip:
        return weights, []
    selected, left_out = weights.select(only, skip)
    if only and not selected.weighted_layers():
        raise UsageError(f"--only {' '.join(only)} matches no layer (layers: "
                         f"{', '.join(weights.names()[:12])})")
    return selected, left_out


def _conversion_summary(weights: WeightSet, source: formats.Format, target: formats.Format,
                        src: Path, dst: Path, written: dict[str, Any]) -> dict[str, Any]:
    transforms: dict[str, list[str]] = {}
    for layer in weights.weighted_layers():
        for step in canonicalization_steps(layer):
            transforms.setdefault(step, []).append(layer.name)
    return {
        "ok": True,
        "input": {"path": str(src), "format": source.name},
        "output": {"path": str(dst), "format": target.name},
        "layers": written.get("layers"),
        "tensors": written.get("tensors"),
        "parameters": written.get("parameters"),
        "bytes": written.get("bytes"),
        "transforms": [{"step": step, "layers": names} for step, names in transforms.items()],
        "skipped": written.get("skipped", []),
        "channel_order": weights.channel_order,
        "notes": weights.notes,
    }


def _print_summary(summary: dict[str, Any], quiet: bool) -> None:
    out = summary["output"]
    print(f"wrote {out['path']} ({out['format']}): {summary['layers']} layers, "
          f"{summary['tensors']} tensors, {summary['parameters']:,} parameters, "
          f"{_mb(summary['bytes'])}")
    for item in summary["transforms"]:
        print(f"  {item['step']}: {_names(item['layers'])}")
    skipped = summary["skipped"]
    print(f"  skipped: {_names(skipped) if skipped else 'nothing'}")
    if not quiet:
        for note in summary["notes"]:
            print(f"note: {note}", file=sys.stderr)


def _inspect(args: argparse.Namespace) -> int:
    source = formats.detect(args.file, args.src_format)
    weights, _ = _selected(args, source.read(args.file, **_read_options(args)))
    layers = list(weights.canonical()) if args.canonical else weights.weighted_layers()
    if args.tensor:
        return _show_tensor(args, weights, layers)
    rows = []
    for layer in layers:
        for role, array in layer.tensors.items():
            rows.append({"name": layer.tensor_name(role), "layer": layer.name, "role": role,
                         "kind": layer.kind, "shape": list(array.shape),
                         "dtype": str(array.dtype.newbyteorder("=")),
                         "parameters": int(array.size), "bytes": int(array.nbytes)})
    report = {
        "ok": True,
        "file": str(args.file),
        "format": source.name,
        "detail": weights.source.detail if weights.source else {},
        "layout": "canonical" if args.canonical else _layout_name(weights),
        "channel_order": weights.channel_order,
        "tensors": rows,
        "layers": [_layer_json(layer) for layer in weights.layers],
        "totals": {"layers": len(weights.weighted_layers()), "tensors": len(rows),
                   "parameters": sum(r["parameters"] for r in rows),
                   "bytes": sum(r["bytes"] for r in rows)},
        "notes": weights.notes,
    }
    if args.json:
        print(json.dumps(report, indent=2, default=_json_default))
        return EXIT_OK
    detail = ", ".join(f"{k} {v}" for k, v in report["detail"].items() if v not in (None, ""))
    print(f"{args.file}: {source.title}{' (' + detail + ')' if detail else ''}; "
          f"layout {report['layout']}")
    width = max([len(r["name"]) for r in rows] + [6])
    print(f"{'tensor':<{width}}  {'shape':<22} {'dtype':<8} {'parameters':>12} {'bytes':>12}")
    for r in rows:
        shape = "x".join(map(str, r["shape"])) or "scalar"
        print(f"{r['name']:<{width}}  {shape:<22} {r['dtype']:<8} {r['parameters']:>12,} "
              f"{r['bytes']:>12,}")
    totals = report["totals"]
    print(f"{totals['tensors']} tensors in {totals['layers']} layers, "
          f"{totals['parameters']:,} parameters, {_mb(totals['bytes'])}")
    if not args.quiet:
        for note in weights.notes:
            print(f"note: {note}", file=sys.stderr)
    return EXIT_OK


def _layout_name(weights: WeightSet) -> str:
    layouts = {layer.layout for layer in weights.weighted_layers()}
    return layouts.pop() if len(layouts) == 1 else "mixed" if layouts else "none"


def _layer_json(layer: Any) -> dict[str, Any]:
    return {"name": layer.name, "kind": layer.kind, "type": layer.source_type,
            "params": {k: v for k, v in layer.params.items()},
            "input_shape": list(layer.input_shape) if layer.input_shape else None,
            "tensors": list(layer.tensors)}


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


def _show_tensor(args: argparse.Namespace, weights: WeightSet, layers: list[Any]) -> int:
    found = None
    candidates = []
    for layer in layers:
        for role, array in layer.tensors.items():
            name = layer.tensor_name(role)
            candidates.append(name)
            only_tensor_of_layer = args.tensor == layer.name and len(layer.tensors) == 1
            if args.tensor in (name, f"{layer.name}/{role}") or only_tensor_of_layer:
                found = (name, array)
    if found is None:
        roles = [c for c in candidates if c.startswith(args.tensor + "/")]
        hint = f"; it has {', '.join(roles)}" if roles else (
            f"; tensors: {', '.join(candidates[:12])}{' ...' if len(candidates) > 12 else ''}")
        raise UsageError(f"{args.file}: no tensor {args.tensor!r}{hint}")
    name, array = found
    values = np.asarray(array)
    as_float = values.astype(np.float64) if values.size else values
    stats: dict[str, Any] = {"name": name, "shape": list(values.shape),
                             "dtype": str(values.dtype.newbyteorder("=")),
                             "parameters": int(values.size)}
    if values.size and np.issubdtype(values.dtype, np.number):
        finite = as_float[np.isfinite(as_float)]
        stats.update(min=float(finite.min()) if finite.size else None,
                     max=float(finite.max()) if finite.size else None,
                     mean=float(finite.mean()) if finite.size else None,
                     std=float(finite.std()) if finite.size else None,
                     zeros=int(np.count_nonzero(values == 0)),
                     nan=int(np.count_nonzero(np.isnan(as_float))),
                     inf=int(np.count_nonzero(np.isinf(as_float))))
    if args.json:
        if args.values:
            stats["values"] = values.tolist()
        print(json.dumps({"ok": True, "file": str(args.file), "tensor": stats}, indent=2))
        return EXIT_OK
    for key, value in stats.items():
        print(f"{key:>10}: {value}")
    with np.printoptions(threshold=sys.maxsize if args.values else 200, edgeitems=3):
        print(values)
    return EXIT_OK


def _formats(args: argparse.Namespace) -> int:
    rows = [{"name": f.name, "title": f.title, "suffixes": list(f.suffixes), "read": True,
             "write": f.can_write} for f in formats.FORMATS]
    if args.json:
        print(json.dumps({"ok": True, "formats": rows}, indent=2))
        return EXIT_OK
    print(f"{'name':<12} {'read':<5} {'write':<6} {'suffixes':<26} description")
    for r in rows:
        print(f"{r['name']:<12} {'yes':<5} {'yes' if r['write'] else 'no':<6} "
              f"{' '.join(r['suffixes']):<26} {r['title']}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from . import synthetic

    args.dir.mkdir(parents=True, exist_ok=True)
    net = synthetic.build("alexnet", width=args.width, seed=0)
    model = args.dir / "alexnet.caffemodel"
    prototxt = args.dir / "alexnet.prototxt"
    net.write_caffemodel(model)
    prototxt.write_text(net.deploy_prototxt)
    if not args.quiet and not args.json:
        print(f"generated {model} ({_mb(model.stat().st_size)}) and {prototxt}")
    step = argparse.Namespace(**{**vars(args), "prototxt": prototxt, "input_shape": None,
                                 "src_format": None, "dst_format": "npy", "force": True,
                                 "flavour": "list", "trust_pickle": False, "only": [],
                                 "skip": [], "strip_scope": "", "flat": False, "scope": "",
                                 "shards": 1, "max_shard_size": None})
    status = _run_conversion(step, formats.get("caffemodel"), model, args.dir / "alexnet.npy")
    if status != EXIT_OK:
        return status
    step.dst_format = "ckpt"
    return _run_conversion(step, formats.get("npy"), args.dir / "alexnet.npy",
                           args.dir / "alexnet.ckpt")


def _mb(count: int | None) -> str:
    return f"{(count or 0) / 1e6:,.1f} MB"


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


if __name__ == "__main__":
    sys.exit(main())
