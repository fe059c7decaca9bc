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
    passed = all(r["passed"] for r in rows)
    if args.json:
        print(
            json.dumps(
                {
                    "schema_version": pipeline.SCHEMA_VERSION,
                    "ok": passed,
                    "verb": "demo",
                    "verified": rows,
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
    return EXIT_OK if passed else EXIT_CHECK_FAILED
