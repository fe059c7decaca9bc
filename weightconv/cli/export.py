"""The Keras model verbs: `caffe2keras` (a .caffemodel) and `export-keras` (weights in any
format), each with the deploy prototxt, writing a runnable Keras 3 ``.keras`` model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from weightconv import formats
from weightconv.cli import args as common
from weightconv.errors import EXIT_OK, UsageError
from weightconv.reports import document

_CAFFE = ("caffemodel", "caffe-h5")
_LOAD_HINT = (
    "load it with: import keras; import weightconv.nets.keras_layers; keras.saving.load_model(PATH)"
)


def add(verbs: Any) -> None:
    for verb, what, lines in (
        (
            "caffe2keras",
            "a Caffe .caffemodel",
            (
                "weightconv caffe2keras model.caffemodel --prototxt deploy.prototxt -o model.keras",
                "weightconv caffe2keras googlenet.caffemodel --prototxt deploy.prototxt "
                "-o googlenet.keras --force --json",
            ),
        ),
        (
            "export-keras",
            "weights in any format (.npy, .ckpt, .h5, .pt, .safetensors, .npz, .caffemodel)",
            (
                "weightconv export-keras model.npy --prototxt deploy.prototxt -o model.keras",
                "weightconv export-keras ckpt/model.ckpt --prototxt deploy.prototxt -o model.keras",
                "weightconv export-keras weights.pt --trust-pickle --prototxt deploy.prototxt "
                "-o model.keras",
            ),
        ),
    ):
        p = verbs.add_parser(
            verb,
            help=f"write {what} and its deploy net as a runnable Keras 3 .keras model",
            description=f"Build the deploy net of --prototxt as a Keras 3 functional model "
            f"with Caffe's exact semantics (NHWC; explicit padding, ceil-mode pooling, "
            f"grouped and dilated convolution, Caffe's LRN...), set the weights of MODEL "
            f"({what}) and save it with model.save. The model takes NHWC inputs and gives "
            f"the net's output blobs. A layer Keras cannot compute exactly is refused, "
            f"naming it. Check the result with `weightconv verify OUT.keras --against "
            f"MODEL.caffemodel --prototxt DEPLOY`; {_LOAD_HINT}.",
            epilog=common.examples(*lines),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("model", type=Path, help=f"{what}")
        p.add_argument(
            "--prototxt", metavar="P", type=Path, required=True, help="the deploy prototxt"
        )
        p.add_argument(
            "-o", "--output", metavar="OUT.keras", type=Path, help="default: MODEL's name.keras"
        )
        p.add_argument("-f", "--force", action="store_true", help="overwrite OUT if it exists")
        p.add_argument(
            "--from",
            dest="src_format",
            metavar="FORMAT",
            help="format of MODEL (default: detected)",
        )
        if verb == "export-keras":
            p.add_argument(
                "--trust-pickle",
                action="store_true",
                help="allow a pickled .npy or .pt (as for conversions)",
            )
        common.global_switches(p, top=False)
        p.set_defaults(handler=_export, caffe_only=verb == "caffe2keras")


def _export(args: argparse.Namespace) -> int:
    from weightconv.nets.keras_export import export_keras

    source = formats.detect(args.model, args.src_format)
    if args.caffe_only and source.name not in _CAFFE:
        raise UsageError(
            f"{args.model}: is {source.title}, not a Caffe model; use `weightconv export-keras`"
        )
    output = args.output or args.model.with_suffix(".keras")
    options = {"trust_pickle": True} if getattr(args, "trust_pickle", False) else None
    report = export_keras(
        args.model,
        args.prototxt,
        output,
        force=args.force,
        format=source.name,
        read_options=options,
    )
    if args.json:
        print(json.dumps(document(args.verb, True, report.to_dict()), indent=2))
        return EXIT_OK
    print(
        f"wrote {report.output} (Keras 3 model): {report.layers} layers, "
        f"{report.parameters:,} parameters, {common.mb(report.bytes)}"
    )
    inputs = ", ".join(
        f"{blob} {common.shape_text(shape)}" for blob, shape in report.inputs.items()
    )
    print(f"  inputs (NHWC): {inputs}")
    print(f"  outputs: {', '.join(report.outputs)}")
    if report.custom_layers:
        print(f"  weightconv layers: {', '.join(report.custom_layers)}")
    print(f"  {_LOAD_HINT.replace('PATH', repr(report.output))}")
    if not args.quiet:
        for note in report.notes:
            print(f"note: {common.translate(note)}", file=sys.stderr)
    return EXIT_OK
