"""The conversion verbs: `convert`, the short verbs (`caffe2npy`, ...) and `map`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from weightconv import formats, pipeline
from weightconv._util.progress import Progress
from weightconv.cli import args as common
from weightconv.errors import EXIT_OK, UsageError
from weightconv.mapping.template import TEMPLATE_FORMATS, explain_template
from weightconv.reports import ConversionReport

_EXAMPLES = {
    "caffe2npy": (
        "weightconv caffe2npy bvlc_alexnet.caffemodel --prototxt deploy.prototxt",
        "weightconv caffe2npy lenet.caffemodel --prototxt lenet.prototxt -o lenet.npy "
        "--flavour dict",
    ),
    "npy2ckpt": (
        "weightconv npy2ckpt bvlc_alexnet.npy -o ckpt/alexnet.ckpt",
        "weightconv npy2ckpt vgg16.npy -o vgg16.ckpt --shards 4 --names tf1",
    ),
    "ckpt2npy": (
        "weightconv ckpt2npy vgg_16.ckpt -o vgg16.npy --strip-scope vgg_16/",
        "weightconv ckpt2npy model.ckpt-1000 --flat",
    ),
}


def add(verbs: Any) -> None:
    for verb, (sources, target) in formats.verbs().items():
        source_title = "/".join(sources)
        lines = _EXAMPLES.get(
            verb, (f"weightconv {verb} MODEL -o OUT", f"weightconv {verb} MODEL --skip fc8 --json")
        )
        p = verbs.add_parser(
            verb,
            help=f"convert {source_title} to {target}",
            description=f"Convert a {source_title} file to {target}: "
            f"`weightconv convert` with the formats fixed.",
            epilog=common.examples(*lines),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("model", type=Path, help=f"the {source_title} input")
        p.add_argument(
            "-o",
            "--output",
            metavar="OUT",
            type=Path,
            help="output (default: the input's name with the new suffix)",
        )
        _conversion_options(p, sources, [target])
        p.set_defaults(handler=_short_verb, verb_sources=sources, verb_target=target)

    p = verbs.add_parser(
        "convert",
        help="convert between any two supported formats",
        description="Convert SRC to DST; the input format comes from the content, the output "
        "format from DST's suffix (or --from/--to).",
        epilog=common.examples(
            "weightconv convert model.caffemodel model.npy --prototxt deploy.prototxt",
            "weightconv convert vgg16.npy vgg_16.ckpt --names slim --net vgg_16 --fc-as-conv",
            "weightconv convert weights model.npy --from caffemodel --json",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument(
        "--to",
        dest="dst_format",
        metavar="FORMAT",
        choices=[f.name for f in formats.FORMATS if f.can_write],
        help="output format (default: from DST's suffix)",
    )
    _conversion_options(p, None, None)
    p.set_defaults(handler=_convert)

    p = verbs.add_parser(
        "map",
        help="show the mapping plan (--explain), or apply it",
        description="Print the plan: each source tensor and shape -> target name and shape, "
        "and the transforms between (with --model TEMPLATE: each of our tensors -> the "
        "PyTorch or ONNX template's tensor it fills); with -o OUT it also converts, and "
        "with --explain it writes nothing.",
        epilog=common.examples(
            "weightconv map vgg16.caffemodel --prototxt deploy.prototxt --names slim "
            "--net vgg_16 --fc-as-conv --explain",
            "weightconv map theirs.ckpt --map rules.toml -o ours.npy",
            "weightconv map alexnet.caffemodel --model torchvision_alexnet.pt --explain",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", type=Path)
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        type=Path,
        help="also convert to OUT (after printing the plan)",
    )
    p.add_argument("--explain", action="store_true", help="only print the plan")
    p.add_argument(
        "--to",
        dest="dst_format",
        metavar="FORMAT",
        choices=[f.name for f in formats.FORMATS if f.can_write],
        help="output format (default: from OUT's suffix)",
    )
    _conversion_options(p, None, None)
    p.set_defaults(handler=_map)


def _conversion_options(p: argparse.ArgumentParser, sources: Any, targets: Any) -> None:
    common.global_switches(p, top=False)
    p.add_argument("-f", "--force", action="store_true", help="overwrite the output if it exists")
    common.add_input_format(p)
    common.add_selection(p)
    common.add_mapping(p)
    common.add_format_options(p, "read", sources)
    common.add_format_options(p, "write", targets)


def _short_verb(args: argparse.Namespace) -> int:
    source = formats.detect(args.model, args.src_format)
    if source.name not in args.verb_sources:
        raise UsageError(
            f"{args.model}: is {source.title}, not "
            f"{' or '.join(args.verb_sources)}; use `weightconv convert`"
        )
    target = formats.get(args.verb_target)
    write = common.options_for(
        target, target.write_options, common.given_options(args, "write"), "write"
    )
    output = args.output or pipeline.default_output(args.model, target.name, write)
    return _run(args, source, target, args.model, output)


def _convert(args: argparse.Namespace) -> int:
    source = formats.detect(args.src, args.src_format)
    target = formats.for_output(args.dst, args.dst_format)
    return _run(args, source, target, args.src, args.dst)


def _map(args: argparse.Namespace) -> int:
    if args.explain and args.output is not None:
        raise UsageError("--explain writes nothing; drop -o OUT, or drop --explain to convert")
    source = formats.detect(args.src, args.src_format)
    reading = common.options_for(
        source, source.read_options, common.given_options(args, "read"), "read"
    )
    writing = common.given_options(args, "write")
    target_format = formats.for_output(args.output, args.dst_format) if args.output else None
    # --model is a template to pair with, unless it is the Keras writer's model config
    keras = target_format is not None and target_format.name not in TEMPLATE_FORMATS
    template = None if keras else writing.get("model")
    if args.output is None and set(writing) - {"model", "torch_dense_inputs"}:
        raise UsageError("output options need an output: -o OUT")
    if args.output is None and writing and template is None:
        raise UsageError("output options need an output: -o OUT (or --model TEMPLATE)")
    weights, left_out = pipeline.select(source.read(args.src, reading), args.only, args.skip)
    plan = common.mapping_of(args)
    if template is not None:
        mapped = weights if plan.is_identity() else plan.apply(weights)
        dense = writing.get("torch_dense_inputs")
        rows = explain_template(mapped, template, dense_inputs=dense)
    else:
        rows = plan.explain(weights)
    converting = args.output is not None
    if args.json and not converting:
        document = {
            "schema_version": pipeline.SCHEMA_VERSION,
            "ok": True,
            "verb": "map",
            "input": {"path": str(args.src), "format": source.name},
            "plan": rows,
            "skipped": left_out,
            "notes": weights.notes,
        }
        print(json.dumps(document, indent=2))
        return EXIT_OK
    if not args.json:
        out = sys.stderr if converting else sys.stdout
        for row in rows:
            steps = "; ".join(row["transforms"]) or "as is"
            print(
                f"{row['from']} {common.shape_text(row['from_shape'])} -> {row['to']} "
                f"{common.shape_text(row['to_shape'])}: {steps}",
                file=out,
            )
        if left_out:
            print(f"skipped: {common.listed(left_out)}", file=out)
    if converting:
        target = formats.for_output(args.output, args.dst_format)
        return _run(args, source, target, args.src, args.output, verb="map")
    return EXIT_OK


def _run(
    args: argparse.Namespace,
    source: formats.Format,
    target: formats.Format,
    src: Path,
    dst: Path,
    verb: str | None = None,
) -> int:
    reading = common.options_for(
        source, source.read_options, common.given_options(args, "read"), "read"
    )
    writing = common.options_for(
        target, target.write_options, common.given_options(args, "write"), "write"
    )
    with Progress(
        total=1, label=f"{src.name} -> {dst.name}", enabled=False if args.quiet else None
    ) as bar:
        report = pipeline.convert(
            src,
            dst,
            src_format=source.name,
            dst_format=target.name,
            read_options=reading,
            write_options=writing,
            mapping=common.mapping_of(args),
            only=args.only,
            skip=args.skip,
            force=args.force,
            progress=_Sized(bar),
        )
    report.verb = verb or str(getattr(args, "verb", None) or "convert")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        render(report, quiet=args.quiet)
    return EXIT_OK


class _Sized:
    """Passes the total the pipeline learns on to the bar drawn here."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = max(total, 1)
        self.bar.advance(done - self.bar.done)


def render(report: ConversionReport, quiet: bool) -> None:
    out = report.output
    print(
        f"wrote {out.path} ({out.format}): {report.layers} layers, {report.tensors} tensors, "
        f"{report.parameters:,} parameters, {common.mb(report.bytes)}"
    )
    for item in report.transforms:
        print(f"  {item['step']}: {common.listed(item['layers'])}")
    print(f"  skipped: {common.listed(report.skipped) if report.skipped else 'nothing'}")
    applied = {**report.options["read"], **report.options["write"], **report.options["mapping"]}
    if applied:
        print(
            "  options: "
            + ", ".join(
                f"{common.translate(name + '=').strip()} {value}" for name, value in applied.items()
            )
        )
    if not quiet:
        for note in report.notes:
            print(f"note: {common.translate(note)}", file=sys.stderr)
