"""The `weightconv` command. Thin: parses arguments, calls the library, prints.

Exit codes: 0 success; 1 a check failed (diff, verify); 2 bad input or usage
(unreadable or corrupt file, refused pickle, output exists, shape mismatch);
3 an internal error (a bug: rerun with --debug and report it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from weightconv import __version__, formats
from weightconv._util.progress import Progress
from weightconv.errors import (
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_OK,
    UsageError,
    WeightconvError,
)
from weightconv.mapping import CHANNEL_ORDERS, NAME_SCHEMES, MapFile, Mapping
from weightconv.model import WeightSet, join_tensor_name
from weightconv.model.canonical import canonical_layers, canonicalization_steps

EXIT_INTERNAL = 3
CAFFE_FORMATS = ("caffemodel", "caffe-h5")
KERAS_FORMAT = "keras-h5"
#: verb -> (the formats it reads, the format it writes)
SHORT_VERBS: dict[str, tuple[tuple[str, ...], str]] = {
    "caffe2npy": (CAFFE_FORMATS, "npy"),
    "caffe2ckpt": (CAFFE_FORMATS, "ckpt"),
    "caffe2h5": (CAFFE_FORMATS, KERAS_FORMAT),
    "npy2ckpt": (("npy",), "ckpt"),
    "ckpt2npy": (("ckpt",), "npy"),
    "npy2h5": (("npy",), KERAS_FORMAT),
    "h52npy": ((KERAS_FORMAT,), "npy"),
    "ckpt2h5": (("ckpt",), KERAS_FORMAT),
    "h52ckpt": ((KERAS_FORMAT,), "ckpt"),
}


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
    writing.add_argument("--shards", metavar="N", type=_positive_int, default=1,
                         help="checkpoint output: spread tensors over N data files")
    writing.add_argument("--max-shard-size", metavar="SIZE", type=_size_arg, default=None,
                         help="checkpoint output: start a new data file before one would "
                              "exceed SIZE (bytes, or with K/M/G)")
    writing.add_argument("--keras-layout", choices=("keras3", "keras2"), default="keras3",
                         help="Keras output: .weights.h5 as Keras 3 writes it (default) or "
                              "the Keras 2 save_weights .h5 layout")
    writing.add_argument("--model", dest="keras_model", metavar="CONFIG", type=Path,
                         help="Keras output: the target model (config.json or .keras); "
                              "default: one Conv2D/Dense per weighted layer, in order")

    mapping = argparse.ArgumentParser(add_help=False)
    mapping.add_argument("--names", choices=NAME_SCHEMES, default="keep",
                         help="output tensor names: keep the source's (default), tf1 "
                              "(conv1/weights), slim (NET/conv1/conv1_1/weights), keras "
                              "(conv1/kernel) or caffe (conv1/weights, scopes dropped)")
    mapping.add_argument("--net", metavar="NAME", default="",
                         help="the net scope of slim names, e.g. vgg_16 or alexnet_v2")
    mapping.add_argument("--scope", metavar="SCOPE", default="",
                         help="put every output tensor under this scope, e.g. my/")
    mapping.add_argument("--fc-as-conv", action="store_true",
                         help="write fully-connected layers (matching --fc-pattern) as slim's "
                              "convolutions: fc6 (25088, 4096) -> (7, 7, 512, 4096)")
    mapping.add_argument("--fc-as-dense", action="store_true",
                         help="turn fc-as-conv kernels (matching --fc-pattern) back into dense "
                              "(in, out) kernels")
    mapping.add_argument("--fc-pattern", metavar="GLOB", default="fc*",
                         help="which layers --fc-as-conv/--fc-as-dense apply to (default fc*)")
    mapping.add_argument("--fc-input", metavar="NAME=H,W,C", action="append", default=[],
                         type=_fc_input_arg,
                         help="the input size of a fully-connected layer when the source does "
                              "not record it, e.g. fc6=7,7,512")
    mapping.add_argument("--input-channels", choices=CHANNEL_ORDERS, default=None,
                         help="channel order the output's first convolution should expect; "
                              "its input channels are swapped if the source's differs")
    mapping.add_argument("--source-channels", choices=CHANNEL_ORDERS, default=None,
                         help="the source's channel order when the file does not record it "
                              "(Caffe models are BGR)")
    mapping.add_argument("--split-groups", action="store_true",
                         help="write grouped convolutions as one kernel per group "
                              "(conv2_group0, conv2_group1)")
    mapping.add_argument("--merge-groups", action="store_true",
                         help="merge NAME_group0, NAME_group1, ... back into one grouped kernel")
    mapping.add_argument("--map", dest="map_file", metavar="FILE", type=Path,
                         help="JSON or TOML map file: regex renames, skips, per-tensor "
                              "reshape/transpose/flip_axis")

    parser = argparse.ArgumentParser(
        prog="weightconv",
        description="Convert neural-network weights between Caffe, .npy, TensorFlow "
                    "checkpoints and Keras HDF5.",
        epilog="Exit codes: 0 ok, 1 a check failed, 2 bad input or usage, 3 internal error.",
        parents=[common])
    parser.add_argument("--version", action="version", version=f"weightconv {__version__}")
    verbs = parser.add_subparsers(title="commands", metavar="COMMAND")

    for verb, (sources, target) in SHORT_VERBS.items():
        source_title = "/".join(sources)
        p = verbs.add_parser(verb, parents=[common, reading, writing, mapping],
                             help=f"convert {source_title} to {target}",
                             description=f"Convert a {source_title} file to {target}; "
                                         f"`weightconv convert` with the formats fixed.")
        p.add_argument("model", type=Path, help=f"the {source_title} input")
        p.set_defaults(handler=_short_verb, verb_sources=sources, verb_output_format=target)

    p = verbs.add_parser("convert", parents=[common, reading, writing, mapping],
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

    p = verbs.add_parser("map", parents=[common, reading, writing, mapping],
                         help="show (--explain) or apply a mapping between tensor layouts",
                         description="Print the plan: each source tensor and shape -> target "
                                     "name and shape, and the transforms in between; with DST "
                                     "(and without --explain), also convert.")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path, nargs="?")
    p.add_argument("--explain", action="store_true", help="only print the plan")
    p.set_defaults(handler=_map)

    p = verbs.add_parser("diff", parents=[common, reading, mapping],
                         help="compare the tensors of two weight files of any formats",
                         description="Compare A and B tensor by tensor in the canonical layout "
                                     "(after the mapping options, applied to both): max abs and "
                                     "rel difference, missing and extra names, shape "
                                     "mismatches. Exit 0 when equal within tolerance, 1 when "
                                     "not.")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0)")
    p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (default 0)")
    p.set_defaults(handler=_diff)

    p = verbs.add_parser("lrn", parents=[common],
                         help="translate LRN parameters between Caffe and TensorFlow",
                         description="Translate LRN parameters: Caffe (--local-size, --alpha, "
                                     "--beta, --k) to tf.nn.local_response_normalization "
                                     "(depth_radius, alpha/local_size, beta, bias) or, with "
                                     "--depth-radius/--bias, back; or list every LRN layer of "
                                     "a prototxt or caffemodel in both forms.")
    p.add_argument("file", type=Path, nargs="?", help="a .prototxt or .caffemodel")
    p.add_argument("--local-size", type=int, help="Caffe local_size (odd)")
    p.add_argument("--depth-radius", type=int, help="TensorFlow depth_radius")
    p.add_argument("--alpha", type=float, help="alpha, as the side given spells it")
    p.add_argument("--beta", type=float, default=0.75, help="beta (default 0.75)")
    p.add_argument("--k", type=float, help="Caffe k (default 1)")
    p.add_argument("--bias", type=float, help="TensorFlow bias (default 1)")
    p.set_defaults(handler=_lrn)

    checking = argparse.ArgumentParser(add_help=False)
    checking.add_argument("--image", dest="images", metavar="FILE", type=Path, action="append",
                          default=[], help="an image to classify (repeatable; a folder adds "
                                           "its images); default: built-in synthetic inputs")
    checking.add_argument("--count", type=_positive_int, default=8,
                          help="how many synthetic inputs without --image (default 8)")
    checking.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs")
    checking.add_argument("--mean", metavar="B,G,R", type=_floats3,
                          help="per-channel mean to subtract, BGR (default: ImageNet's)")
    checking.add_argument("--mean-file", metavar="MEAN.npy", type=Path,
                          help="mean image (3,H,W) BGR .npy, e.g. ilsvrc_2012_mean.npy")
    checking.add_argument("--mean-mode", choices=("channel", "image"), default="channel",
                          help="subtract the mean file's per-channel average (default, as "
                               "Caffe's example does) or the resized image")
    checking.add_argument("--size", metavar="H,W", type=_size2, default=None,
                          help="net input size (default: from the prototxt, else 227,227)")
    checking.add_argument("--scale", type=float, default=255.0,
                          help="pixel scale after reading in [0, 1] (default 255)")
    checking.add_argument("--variant", choices=("alexnet", "caffenet"),
                          help="LRN/pool order when no prototxt says it")
    checking.add_argument("--channels", choices=CHANNEL_ORDERS,
                          help="channel order the weights expect (default: recorded, else bgr)")
    checking.add_argument("--top", type=_positive_int, default=5, help="classes per image")

    p = verbs.add_parser("verify", parents=[common, checking],
                         help="check converted weights against their source model or a card",
                         description="Run WEIGHTS (any format) in the built-in AlexNet graph "
                                     "(TensorFlow) and compare its predictions with the source "
                                     "caffemodel run by OpenCV's Caffe importer (--against) or "
                                     "with a reference card (--card). Exit 0 when top-1/top-5 "
                                     "agree and probabilities are within --prob-tol, 1 when "
                                     "not.")
    p.add_argument("weights", type=Path)
    p.add_argument("--against", metavar="MODEL", type=Path,
                   help="the source .caffemodel (needs --prototxt)")
    p.add_argument("--card", metavar="CARD.json", type=Path, help="a reference card")
    p.add_argument("--prototxt", metavar="P", type=Path,
                   help="deploy prototxt: the source's net, also the graph's layer settings")
    p.add_argument("--from", dest="src_format", metavar="FORMAT",
                   help="format of WEIGHTS (default: detected)")
    p.add_argument("--trust-pickle", action="store_true", help="as for conversions")
    p.add_argument("--prob-tol", type=float, default=None,
                   help="max |difference| of probabilities (default 1e-4; a card may set it)")
    p.add_argument("--logit-tol", type=float, default=None,
                   help="also require max |Δlogit| / logit scale below this")
    p.set_defaults(handler=_verify)

    p = verbs.add_parser("reference", parents=[common, checking],
                         help="write a reference card of a model's predictions",
                         description="Run MODEL (a .caffemodel through OpenCV's Caffe importer, "
                                     "any other weight file through the built-in graph) on the "
                                     "images and write its top classes and probabilities, the "
                                     "preprocessing and the model's identity as JSON, for "
                                     "`verify --card`.")
    p.add_argument("model", type=Path)
    p.add_argument("--prototxt", metavar="P", type=Path, help="deploy prototxt")
    p.add_argument("-o", "--output", metavar="CARD.json", type=Path, required=True)
    p.add_argument("-f", "--force", action="store_true", help="overwrite the card if it exists")
    p.set_defaults(handler=_reference)

    p = verbs.add_parser("formats", parents=[common], help="list the supported formats")
    p.set_defaults(handler=_formats)

    p = verbs.add_parser("demo", parents=[common],
                         help="generate an AlexNet-shaped Caffe model and convert it",
                         description="Build a small AlexNet-shaped .caffemodel (grouped conv, "
                                     "LRN) in DIR, convert it to .npy, that to a "
                                     "TensorFlow checkpoint and that to Keras .weights.h5, "
                                     "then verify each against the caffemodel (OpenCV's Caffe "
                                     "importer): the whole path on a built-in example.")
    p.add_argument("--dir", type=Path, default=Path("weightconv-demo"),
                   help="where to write (default: ./weightconv-demo)")
    p.add_argument("--width", type=float, default=0.25,
                   help="AlexNet width factor (1.0 = full size; default 0.25)")
    p.add_argument("--no-verify", action="store_true",
                   help="only convert (verification needs TensorFlow and OpenCV)")
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


def _fc_input_arg(text: str) -> tuple[str, tuple[int, int, int]]:
    name, _, dims = text.partition("=")
    try:
        h, w, c = (int(part) for part in dims.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=H,W,C such as fc6=7,7,512, got "
                                         f"{text!r}") from None
    if not name or min(h, w, c) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=H,W,C such as fc6=7,7,512, got {text!r}")
    return name, (h, w, c)


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


def _short_verb(args: argparse.Namespace) -> int:
    source = formats.detect(args.model, args.src_format)
    if source.name not in args.verb_sources:
        raise UsageError(f"{args.model}: is {source.title}, not {' or '.join(args.verb_sources)}; "
                         f"use `weightconv convert`")
    output = args.output or _default_output(args.model, args.verb_output_format, args)
    return _run_conversion(args, source, args.model, output)


def _default_output(model: Path, target: str, args: argparse.Namespace) -> Path:
    base = str(model).removesuffix(".index")
    for suffix in (".caffemodel.h5", ".weights.h5", ".caffemodel", ".npy", ".h5", ".keras",
                   ".ckpt"):
        if base.endswith(suffix):
            base = base[:-len(suffix)]
            break
    if target == KERAS_FORMAT:
        suffix = ".h5" if getattr(args, "keras_layout", "keras3") == "keras2" else ".weights.h5"
    else:
        suffix = {"npy": ".npy", "ckpt": ".ckpt"}[target]
    return Path(base + suffix)


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
    plan = _mapping(args)
    steps = _transform_steps(weights)
    if not plan.is_identity():
        weights = plan.apply(weights)
        steps = _transform_steps(weights)
    flavour = args.flavour or ("flat" if getattr(args, "flat", False) else "list")
    with Progress(total=weights.nbytes, label=f"{src.name} -> {dst.name}",
                  enabled=False if args.quiet else None) as bar:
        written = target.write(weights, dst, force=args.force, flavour=flavour,
                               progress=bar, shards=args.shards,
                               max_shard_bytes=args.max_shard_size,
                               keras_layout=args.keras_layout, model=args.keras_model)
    written["skipped"] = left_out + list(written.get("skipped", []))
    summary = _conversion_summary(weights, source, target, src, dst, written, steps)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, quiet=args.quiet)
    return EXIT_OK


def _selected(args: argparse.Namespace, weights: WeightSet, check_skips: bool = True
              ) -> tuple[WeightSet, list[str]]:
    only, skip = getattr(args, "only", []), getattr(args, "skip", [])
    if not only and not skip:
        return weights, []
    selected, left_out = weights.select(only, skip)
    for pattern in skip if check_skips else ():
        _, unmatched = weights.select((), [pattern])
        if not unmatched:
            where = weights.source.path if weights.source else "the input"
            raise UsageError(f"--skip {pattern}: no layer or tensor of {where} matches it "
                             f"(layers: {', '.join(weights.names()[:12])})")
    if only and not selected.weighted_layers():
        raise UsageError(f"--only {' '.join(only)} matches no layer (layers: "
                         f"{', '.join(weights.names()[:12])})")
    return selected, left_out


def _mapping(args: argparse.Namespace) -> Mapping:
    map_file = MapFile.load(args.map_file) if getattr(args, "map_file", None) else None
    return Mapping(names=args.names, net=args.net, scope=args.scope,
                   fc_as_conv=args.fc_as_conv, fc_as_dense=args.fc_as_dense,
                   fc_pattern=args.fc_pattern, fc_inputs=dict(args.fc_input),
                   input_channels=args.input_channels, source_channels=args.source_channels,
                   split_groups=args.split_groups, merge_groups=args.merge_groups,
                   map_file=map_file)


def _transform_steps(weights: WeightSet) -> dict[str, list[str]]:
    """Each transform a conversion applies -> the layers it applies to, for summaries."""
    transforms: dict[str, list[str]] = {}
    for layer in weights.weighted_layers():
        mapped = layer.params.get("mapping")
        if mapped:
            steps = list(dict.fromkeys(step for origin in mapped.values()
                                       for step in origin["transforms"]))
        else:
            steps = canonicalization_steps(layer)
        for step in steps:
            transforms.setdefault(step, []).append(layer.name)
    return transforms


def _conversion_summary(weights: WeightSet, source: formats.Format, target: formats.Format,
                        src: Path, dst: Path, written: dict[str, Any],
                        transforms: dict[str, list[str]]) -> dict[str, Any]:
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
    layers = list(canonical_layers(weights)) if args.canonical else weights.weighted_layers()
    if args.tensor:
        return _show_tensor(args, weights, layers)
    rows = []
    for layer in layers:
        for role, array in layer.tensors.items():
            rows.append({"name": layer.location(role), "layer": layer.name, "role": role,
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
            name = layer.location(role)
            candidates.append(name)
            only_tensor_of_layer = args.tensor == layer.name and len(layer.tensors) == 1
            if args.tensor in (name, layer.tensor_name(role), f"{layer.name}/{role}") or (
                    only_tensor_of_layer):
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


def _map(args: argparse.Namespace) -> int:
    source = formats.detect(args.src, args.src_format)
    weights, left_out = _selected(args, source.read(args.src, **_read_options(args)))
    rows = _mapping(args).explain(weights)
    converting = args.dst is not None and not args.explain
    if args.json and not converting:
        print(json.dumps({"ok": True, "input": {"path": str(args.src), "format": source.name},
                          "plan": rows, "skipped": left_out, "notes": weights.notes}, indent=2))
        return EXIT_OK
    if not args.json:
        out = sys.stderr if converting else sys.stdout
        for row in rows:
            steps = "; ".join(row["transforms"]) or "as is"
            print(f"{row['from']} {_shape_text(row['from_shape'])} -> {row['to']} "
                  f"{_shape_text(row['to_shape'])}: {steps}", file=out)
        if left_out:
            print(f"skipped: {_names(left_out)}", file=out)
    if converting:
        return _run_conversion(args, source, args.src, args.dst)
    return EXIT_OK


def _shape_text(shape: list[Any]) -> str:
    if shape and isinstance(shape[0], list):
        return " + ".join(_shape_text(part) for part in shape)
    return "(" + ", ".join(map(str, shape)) + ")"


def _diff(args: argparse.Namespace) -> int:
    sides = []
    unmatched = set(args.skip)
    for path in (args.a, args.b):
        fmt = formats.detect(path, args.src_format)
        weights = fmt.read(path, **_read_options(args))
        unmatched = {p for p in unmatched if not weights.select((), [p])[1]}
        weights, _ = _selected(args, weights, check_skips=False)
        mapped = _mapping(args).apply(weights)
        # Compared by layer and canonical role, so conv1/kernel (Keras) meets conv1/weights.
        tensors = {join_tensor_name(layer.name, role): tensor
                   for layer in mapped.layers for role, tensor in layer.tensors.items()}
        sides.append((fmt, tensors))
    if unmatched:
        raise UsageError(f"--skip {sorted(unmatched)[0]}: matches no layer or tensor of "
                         f"{args.a} or {args.b}")
    (fmt_a, a), (fmt_b, b) = sides
    rows = []
    for name in [*a, *(n for n in b if n not in a)]:
        rows.append(_compare(name, a.get(name), b.get(name), args.atol, args.rtol))
    differing = [row for row in rows if row["status"] not in ("equal", "close")]
    report = {"ok": not differing, "a": {"path": str(args.a), "format": fmt_a.name},
              "b": {"path": str(args.b), "format": fmt_b.name},
              "atol": args.atol, "rtol": args.rtol, "tensors": rows,
              "counts": {status: sum(r["status"] == status for r in rows)
                         for status in ("equal", "close", "differs", "shape mismatch",
                                        "only in a", "only in b")}}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        width = max([len(r["name"]) for r in rows] + [6])
        for row in rows:
            detail = ""
            if row["status"] in ("close", "differs"):
                detail = f"  max abs {row['max_abs']:.3g}, max rel {row['max_rel']:.3g}"
            elif row["status"] == "shape mismatch":
                detail = f"  {_shape_text(row['shape_a'])} vs {_shape_text(row['shape_b'])}"
            print(f"{row['name']:<{width}}  {row['status']}{detail}")
        counts = ", ".join(f"{n} {k}" for k, n in report["counts"].items() if n)
        print(f"{'same' if not differing else 'DIFFERENT'}: {counts}")
    return EXIT_OK if not differing else EXIT_CHECK_FAILED


def _compare(name: str, a: Any, b: Any, atol: float, rtol: float) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name}
    if a is None or b is None:
        row["status"] = "only in b" if a is None else "only in a"
        return row
    row.update(shape_a=list(a.shape), shape_b=list(b.shape), dtype_a=str(a.dtype),
               dtype_b=str(b.dtype))
    if tuple(a.shape) != tuple(b.shape):
        row["status"] = "shape mismatch"
        return row
    left, right = np.asarray(a), np.asarray(b)
    if left.dtype == object or right.dtype == object:
        same = left.dtype == right.dtype and left.tolist() == right.tolist()
        row.update(status="equal" if same else "differs", max_abs=None, max_rel=None)
        return row
    max_abs = max_rel = 0.0
    bitwise = left.dtype == right.dtype
    within = True
    flat_a, flat_b = left.reshape(-1), right.reshape(-1)
    for start in range(0, flat_a.size, 1 << 22):  # 4M values at a time bounds the memory
        x = flat_a[start:start + (1 << 22)]
        y = flat_b[start:start + (1 << 22)]
        if bitwise and not np.array_equal(x.view(np.uint8), y.view(np.uint8)):
            bitwise = False
        xf, yf = x.astype(np.complex128 if x.dtype.kind == "c" or y.dtype.kind == "c"
                          else np.float64), y.astype(np.float64 if y.dtype.kind != "c"
                                                     else np.complex128)
        both_nan = np.isnan(xf) & np.isnan(yf)
        delta = np.where(both_nan | (xf == yf), 0.0, np.abs(xf - yf))
        if delta.size:
            max_abs = max(max_abs, float(np.nanmax(np.where(np.isnan(delta), np.inf, delta))))
            scale = np.abs(yf)
            rel = np.divide(delta, scale, out=np.zeros_like(delta), where=scale > 0)
            rel = np.where((scale == 0) & (delta > 0), np.inf, rel)
            max_rel = max(max_rel, float(rel.max()))
            within = within and bool(np.all(delta <= atol + rtol * scale))
    row.update(max_abs=max_abs, max_rel=max_rel,
               status="equal" if bitwise or max_abs == 0 else "close" if within else "differs")
    return row


def _lrn(args: argparse.Namespace) -> int:
    from weightconv import lrn

    rows: list[dict[str, Any]] = []
    if args.file is not None:
        for name, params in _lrn_layers(args.file):
            caffe = lrn.from_layer_params(params)
            row: dict[str, Any] = {"layer": name, "caffe": caffe.as_dict()}
            try:
                row["tensorflow"] = lrn.caffe_to_tf(caffe, name).as_dict()
            except UsageError as exc:
                row["error"] = str(exc)
            rows.append(row)
        if not rows:
            raise UsageError(f"{args.file}: has no LRN layers")
    elif args.local_size is not None:
        caffe = lrn.CaffeLRN(local_size=args.local_size, alpha=_given(args.alpha, "--alpha"),
                             beta=args.beta, k=1.0 if args.k is None else args.k)
        rows.append({"layer": None, "caffe": caffe.as_dict(),
                     "tensorflow": lrn.caffe_to_tf(caffe, "--local-size").as_dict()})
    elif args.depth_radius is not None:
        tf = lrn.TfLRN(depth_radius=args.depth_radius, alpha=_given(args.alpha, "--alpha"),
                       beta=args.beta, bias=1.0 if args.bias is None else args.bias)
        caffe = lrn.tf_to_caffe(tf, "--depth-radius")
        rows.append({"layer": None, "caffe": caffe.as_dict(), "tensorflow": tf.as_dict(),
                     "warnings": lrn.suspicious(tf)})
    else:
        raise UsageError("lrn needs a prototxt/caffemodel, or --local-size (Caffe -> TF), or "
                         "--depth-radius (TF -> Caffe)")
    failed = [row for row in rows if "error" in row]
    if args.json:
        print(json.dumps({"ok": not failed, "layers": rows}, indent=2))
    else:
        for row in rows:
            c = row["caffe"]
            label = f"{row['layer']}: " if row["layer"] else ""
            caffe_text = (f"Caffe local_size={c['local_size']} alpha={c['alpha']:g} "
                          f"beta={c['beta']:g} k={c['k']:g}")
            if "error" in row:
                print(f"{label}{caffe_text} -> no TensorFlow equivalent: {row['error']}")
                continue
            t = row["tensorflow"]
            print(f"{label}{caffe_text} <-> tf.nn.local_response_normalization("
                  f"depth_radius={t['depth_radius']}, alpha={t['alpha']:g}, beta={t['beta']:g}, "
                  f"bias={t['bias']:g})")
            for warning in row.get("warnings", []):
                print(f"  warning: {warning}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else EXIT_OK


def _given(value: float | None, flag: str) -> float:
    if value is None:
        raise UsageError(f"{flag} is required")
    return value


def _lrn_layers(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if path.suffix.lower() in (".prototxt", ".pbtxt"):
        from weightconv.formats.caffe.net import net_def_from_message, parse_prototxt

        message, _ = parse_prototxt(path)
        return [(layer.name, layer.params) for layer in net_def_from_message(message).layers
                if layer.type == "LRN"]
    weights = formats.detect(path).read(path)
    return [(layer.name, layer.params) for layer in weights.layers if layer.kind == "lrn"]


def _floats3(text: str) -> tuple[float, float, float]:
    try:
        b, g, r = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,G,R such as 104,117,123, got {text!r}"
                                         ) from None
    return b, g, r


def _size2(text: str) -> tuple[int, int]:
    try:
        h, w = (int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        h = w = 0
    if min(h, w) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W such as 227,227, got {text!r}")
    return h, w


def _preprocessing(args: argparse.Namespace) -> Any:
    from weightconv.verify.core import IMAGENET_MEAN_BGR, Preprocessing

    size = args.size
    if size is None and getattr(args, "prototxt", None) is not None:
        from weightconv.formats.caffe.net import net_def_from_message, parse_prototxt
        from weightconv.nets.alexnet import net_input_size

        size = net_input_size(net_def_from_message(parse_prototxt(args.prototxt)[0]))
    return Preprocessing(size=tuple(size or (227, 227)), scale=args.scale,
                         mean_bgr=args.mean or IMAGENET_MEAN_BGR,
                         mean_file=str(args.mean_file) if args.mean_file else None,
                         mean_mode=args.mean_mode)


def _image_files(paths: list[Path]) -> list[Path] | None:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir()
                                if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")))
        else:
            files.append(path)
    return files or None


def _verify(args: argparse.Namespace) -> int:
    from weightconv.verify.core import Tolerance, verify

    if (args.against is None) == (args.card is None):
        raise UsageError("verify needs exactly one reference: --against MODEL.caffemodel "
                         "--prototxt DEPLOY, or --card CARD.json")
    tolerance = None
    if args.prob_tol is not None or args.logit_tol is not None:
        tolerance = Tolerance(prob=1e-4 if args.prob_tol is None else args.prob_tol,
                              logit=args.logit_tol)
    options: dict[str, Any] = {}
    if args.src_format:
        options["format"] = args.src_format
    if args.trust_pickle:
        options["trust_pickle"] = True
    result = verify(args.weights, against=args.against, prototxt=args.prototxt, card=args.card,
                    images=_image_files(args.images), count=args.count, seed=args.seed,
                    preprocessing=_preprocessing(args), tolerance=tolerance,
                    variant=args.variant, channel_order=args.channels, top=args.top,
                    **options)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=_json_default))
    else:
        print(result.report(all_images=not args.quiet))
    return result.exit_code


def _reference(args: argparse.Namespace) -> int:
    from weightconv.verify.core import write_card

    card = write_card(args.model, args.output, prototxt=args.prototxt,
                      images=_image_files(args.images), preprocessing=_preprocessing(args),
                      count=args.count, seed=args.seed, top=args.top, variant=args.variant,
                      channel_order=args.channels, force=args.force)
    if args.json:
        print(json.dumps({"ok": True, "card": str(args.output), **card}, indent=2,
                         default=_json_default))
    else:
        print(f"wrote {args.output}: {len(card.get('images', []))} images, top-{args.top} "
              f"of {card.get('model', {}).get('name') or args.model}")
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
    from weightconv.testing import synthetic

    args.dir.mkdir(parents=True, exist_ok=True)
    # scale 0.7 keeps the logits near 30, so the softmax is not saturated and probabilities
    # are a sharp test of the conversion
    net = synthetic.build("alexnet", width=args.width, seed=0, scale=0.7)
    model = args.dir / "alexnet.caffemodel"
    prototxt = args.dir / "alexnet.prototxt"
    net.write_caffemodel(model)
    prototxt.write_text(net.deploy_prototxt)
    talk = not args.quiet and not args.json
    if talk:
        print(f"generated {model} ({_mb(model.stat().st_size)}) and {prototxt}")
    steps = [("caffe2npy", model, args.dir / "alexnet.npy", ["--prototxt", str(prototxt)]),
             ("npy2ckpt", args.dir / "alexnet.npy", args.dir / "alexnet.ckpt", []),
             ("ckpt2h5", args.dir / "alexnet.ckpt", args.dir / "alexnet.weights.h5", [])]
    parser = build_parser()
    for verb, source, output, extra in steps:
        parsed = parser.parse_args([verb, str(source), "-o", str(output), "--force", "-q",
                                    *extra])
        parsed.json = False
        if talk:
            status = int(parsed.handler(parsed))
        else:
            with contextlib.redirect_stdout(io.StringIO()):
                status = int(parsed.handler(parsed))
        if status != EXIT_OK:
            return status
    if args.no_verify:
        return EXIT_OK
    try:
        from weightconv.verify.core import verify
    except ImportError as exc:  # pragma: no cover - verify's own imports are lazy
        raise UsageError(f"verification needs TensorFlow and OpenCV ({exc}): "
                         f"pip install 'weightconv[verify]', or run with --no-verify") from None
    rows = []
    for verb, _, output, _ in steps:
        result = verify(output, against=model, prototxt=prototxt)
        rows.append({"step": verb, "output": str(output), "passed": result.passed,
                     "summary": result.summary})
    if args.json:
        print(json.dumps({"ok": all(r["passed"] for r in rows), "verified": rows}, indent=2,
                         default=_json_default))
    else:
        print(f"verified against {model.name} run by OpenCV's Caffe importer, "
              f"{rows[0]['summary']['images']} images:")
        for row in rows:
            summary = row["summary"]
            print(f"  {row['step']:<10} {Path(row['output']).name:<22} "
                  f"{'PASS' if row['passed'] else 'FAIL'}  top-1 {summary['top1_agree']}/"
                  f"{summary['images']}, top-5 {summary['topk_agree']}/{summary['images']}, "
                  f"max |dprob| {summary['max_abs_prob_diff']:.1e}")
    return EXIT_OK if all(r["passed"] for r in rows) else EXIT_CHECK_FAILED


def _mb(count: int | None) -> str:
    return f"{(count or 0) / 1e6:,.1f} MB"


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


if __name__ == "__main__":
    sys.exit(main())
