"""`demo`: the main job on a built-in example, through the library's own verbs."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from weightconv import pipeline
from weightconv.cli import args as common
from weightconv.cli.convert import render
from weightconv.cli.inspect import json_default
from weightconv.errors import EXIT_CHECK_FAILED, EXIT_OK, OutputExistsError, UsageError

_FILES = (
    "alexnet.caffemodel",
    "alexnet.prototxt",
    "alexnet.npy",
    "alexnet.ckpt.index",
    "alexnet.weights.h5",
    "squeezenet.caffemodel",
    "squeezenet.prototxt",
    "squeezenet.npy",
)


def _fire(name: str, bottom: str, squeeze: int, expand: int) -> str:
    def conv(layer: str, below: str, params: str) -> str:
        return (
            f'layer {{ name: "{layer}" type: "Convolution" bottom: "{below}" top: "{layer}" '
            f"convolution_param {{ {params} }} }}\n"
            f'layer {{ name: "{layer}/relu" type: "ReLU" bottom: "{layer}" top: "{layer}" }}\n'
        )

    return (
        conv(f"{name}/squeeze1x1", bottom, f"num_output: {squeeze} kernel_size: 1")
        + conv(f"{name}/expand1x1", f"{name}/squeeze1x1", f"num_output: {expand} kernel_size: 1")
        + conv(
            f"{name}/expand3x3",
            f"{name}/squeeze1x1",
            f"num_output: {expand} kernel_size: 3 pad: 1",
        )
        + f'layer {{ name: "{name}/concat" type: "Concat" bottom: "{name}/expand1x1" '
        f'bottom: "{name}/expand3x3" top: "{name}/concat" }}\n'
    )


def squeezenet_prototxt(size: int = 63, classes: int = 10) -> str:
    """A small SqueezeNet-shaped deploy net: Fire modules (1x1 squeeze, parallel 1x1 and
    padded 3x3 expands, Concat), ceil-mode max pooling, a 1x1 classifier conv and global
    average pooling into a Softmax."""
    pool = (
        'layer {{ name: "{0}" type: "Pooling" bottom: "{1}" top: "{0}" pooling_param {{ {2} }} }}\n'
    )
    return (
        'name: "squeezenet-demo"\n'
        'layer { name: "data" type: "Input" top: "data" '
        f"input_param {{ shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }} }} }}\n"
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
        "convolution_param { num_output: 16 kernel_size: 3 stride: 2 } }\n"
        'layer { name: "relu_conv1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
        + pool.format("pool1", "conv1", "pool: MAX kernel_size: 3 stride: 2")
        + _fire("fire2", "pool1", 8, 16)
        + _fire("fire3", "fire2/concat", 8, 16)
        + pool.format("pool3", "fire3/concat", "pool: MAX kernel_size: 3 stride: 2")
        + _fire("fire4", "pool3", 16, 32)
        + 'layer { name: "drop9" type: "Dropout" bottom: "fire4/concat" top: "fire4/concat" }\n'
        'layer { name: "conv10" type: "Convolution" bottom: "fire4/concat" top: "conv10" '
        f"convolution_param {{ num_output: {classes} kernel_size: 1 }} }}\n"
        + pool.format("pool10", "conv10", "pool: AVE global_pooling: true")
        + 'layer { name: "prob" type: "Softmax" bottom: "pool10" top: "prob" }\n'
    )


def add(verbs: Any) -> None:
    p = verbs.add_parser(
        "demo",
        help="generate an AlexNet-shaped Caffe model, convert and verify it",
        description="Build a small AlexNet-shaped .caffemodel (grouped conv, LRN) in DIR, "
        "convert it to .npy, that to a TensorFlow checkpoint and that to Keras "
        ".weights.h5, then verify each against the caffemodel run by OpenCV's "
        "Caffe importer: the whole path on a built-in example.",
        epilog=common.examples(
            "weightconv demo",
            "weightconv demo --dir /tmp/demo --force",
            "weightconv demo --no-verify --json",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=Path("weightconv-demo"),
        help="where to write (default: ./weightconv-demo)",
    )
    p.add_argument(
        "--width",
        type=float,
        default=0.25,
        help="AlexNet width factor (1.0 = full size; default 0.25)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="only convert (verification needs TensorFlow and OpenCV)",
    )
    p.add_argument(
        "-f", "--force", action="store_true", help="replace the files of an earlier demo in DIR"
    )
    common.global_switches(p, top=False)
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from weightconv.testing import synthetic

    if not args.no_verify:
        missing = [name for name in ("cv2",) if importlib.util.find_spec(name) is None]
        if missing:
            raise UsageError(
                f"verification needs {' and '.join(missing)}: pip install "
                f"'weightconv[verify]', or run the demo with --no-verify"
            )
    existing = [name for name in _FILES if (args.dir / name).exists()]
    if existing and not args.force:
        raise OutputExistsError(
            f"{args.dir}: holds an earlier demo ({existing[0]}); pass force=True to replace it"
        )
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
        print(f"generated {model} ({common.mb(model.stat().st_size)}) and {prototxt}")
    steps = [
        ("caffe2npy", model, args.dir / "alexnet.npy", {"prototxt": prototxt}),
        ("npy2ckpt", args.dir / "alexnet.npy", args.dir / "alexnet.ckpt", {}),
        ("ckpt2h5", args.dir / "alexnet.ckpt", args.dir / "alexnet.weights.h5", {}),
    ]
    for verb, source, output, options in steps:
        report = pipeline.convert(source, output, read_options=options, force=True)
        report.verb = verb
        if talk:
            render(report, quiet=True)
    graph_model, graph_prototxt, graph_npy = _graph_model(args.dir, talk)
    if args.no_verify:
        if args.json:
            print(
                json.dumps(
                    {
                        "schema_version": pipeline.SCHEMA_VERSION,
                        "ok": True,
                        "verb": "demo",
                        "verified": [],
                    },
                    indent=2,
                )
            )
        return EXIT_OK
    from weightconv.verify import verify

    rows: list[dict[str, Any]] = []
    for verb, _, output, _ in steps:
        result = verify(output, against=model, prototxt=prototxt)
        rows.append(
            {
                "step": verb,
                "output": str(output),
                "passed": result.passed,
                "summary": result.summary,
            }
        )
    graph_result = verify(graph_npy, against=graph_model, prototxt=graph_prototxt)
    graph_row: dict[str, Any] = {
        "step": "caffe2npy",
        "output": str(graph_npy),
        "engine": "numpy",
        "passed": graph_result.passed,
        "summary": graph_result.summary,
        "blobs": [check.to_dict() for check in getattr(graph_result, "blobs", [])],
    }
    passed = all(r["passed"] for r in rows) and graph_row["passed"]
    if args.json:
        print(
            json.dumps(
                {
                    "schema_version": pipeline.SCHEMA_VERSION,
                    "ok": passed,
                    "verb": "demo",
                    "verified": rows,
                    "graph": graph_row,
                },
                indent=2,
                default=json_default,
            )
        )
    else:
        print(
            f"verified against {model.name} run by OpenCV's Caffe importer, "
            f"{rows[0]['summary']['images']} images:"
        )
        for row in rows:
            summary = row["summary"]
            print(
                f"  {row['step']:<10} {Path(row['output']).name:<22} "
                f"{'PASS' if row['passed'] else 'FAIL'}  top-1 {summary['top1_agree']}/"
                f"{summary['images']}, top-5 {summary['topk_agree']}/{summary['images']}, "
                f"max |dprob| {summary['max_abs_prob_diff']:.1e}"
            )
        summary = graph_result.summary
        blobs = graph_row["blobs"]
        print(
            f"graph model against {graph_model.name} (SqueezeNet-shaped: Fire modules, "
            f"global AVE pooling), NumPy engine, every output blob:"
        )
        print(
            f"  caffe2npy  {graph_npy.name:<22} {'PASS' if graph_result.passed else 'FAIL'}  "
            f"top-1 {summary['top1_agree']}/{summary['images']}, max |dprob| "
            f"{summary['max_abs_prob_diff']:.1e}, {sum(b['passed'] for b in blobs)}/"
            f"{len(blobs)} blobs agree"
        )
    return EXIT_OK if passed else EXIT_CHECK_FAILED


def _graph_model(folder: Path, talk: bool) -> tuple[Path, Path, Path]:
    """A SqueezeNet-shaped deploy net with seeded weights, converted to .npy."""
    from weightconv.nets.graph import Graph
    from weightconv.testing.caffe_weights import write_caffemodel

    prototxt = folder / "squeezenet.prototxt"
    model = folder / "squeezenet.caffemodel"
    npy = folder / "squeezenet.npy"
    prototxt.write_text(squeezenet_prototxt())
    # scale 0.7 keeps the softmax from saturating (probabilities 0.6 to 0.95), as above
    shapes = Graph.from_prototxt(prototxt).shapes
    write_caffemodel(prototxt, model, seed=0, scale=0.7, shapes=shapes)
    report = pipeline.convert(model, npy, read_options={"prototxt": prototxt}, force=True)
    report.verb = "caffe2npy"
    if talk:
        render(report, quiet=True)
    return model, prototxt, npy
