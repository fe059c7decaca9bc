"""The checking verbs: `verify` and `reference` (predictions against the source model or a
card) and `lrn` (LRN parameters between Caffe and TensorFlow)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from weightconv import formats
from weightconv.cli import args as common
from weightconv.cli.inspect import json_default
from weightconv.errors import EXIT_BAD_INPUT, EXIT_OK, UsageError
from weightconv.mapping import CHANNEL_ORDERS
from weightconv.reports import document

positive_int = common.positive_int


def add(verbs: Any) -> None:
    p = verbs.add_parser(
        "lrn",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=common.examples(
            "weightconv lrn --local-size 5 --alpha 1e-4 --beta 0.75",
            "weightconv lrn --depth-radius 2 --alpha 2e-5 --bias 1",
            "weightconv lrn deploy.prototxt --json",
        ),
        help="translate LRN parameters between Caffe and TensorFlow",
        description="Translate LRN parameters: Caffe (--local-size, --alpha, "
        "--beta, --k) to tf.nn.local_response_normalization "
        "(depth_radius, alpha/local_size, beta, bias) or, with "
        "--depth-radius/--bias, back; or list every LRN layer of "
        "a prototxt or caffemodel in both forms.",
    )
    p.add_argument("file", type=Path, nargs="?", help="a .prototxt or .caffemodel")
    p.add_argument("--local-size", type=int, help="Caffe local_size (odd)")
    p.add_argument("--depth-radius", type=int, help="TensorFlow depth_radius")
    p.add_argument("--alpha", type=float, help="alpha, as the side given spells it")
    p.add_argument("--beta", type=float, default=0.75, help="beta (default 0.75)")
    p.add_argument("--k", type=float, help="Caffe k (default 1)")
    p.add_argument("--bias", type=float, help="TensorFlow bias (default 1)")
    common.global_switches(p, top=False)
    p.set_defaults(handler=_lrn)

    checking = argparse.ArgumentParser(add_help=False)
    checking.add_argument(
        "--image",
        dest="images",
        metavar="FILE",
        type=Path,
        action="append",
        default=[],
        help="an image to classify (repeatable; a folder adds "
        "its images); default: built-in synthetic inputs (for --card: "
        "the card's images, found beside the card)",
    )
    checking.add_argument(
        "--count",
        type=positive_int,
        default=8,
        help="how many synthetic inputs without --image (default 8)",
    )
    checking.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs")
    checking.add_argument(
        "--mean",
        metavar="B,G,R",
        type=_floats3,
        help="per-channel mean to subtract, BGR (default: ImageNet's)",
    )
    checking.add_argument(
        "--mean-file",
        metavar="MEAN.npy",
        type=Path,
        help="mean image (3,H,W) BGR .npy, e.g. ilsvrc_2012_mean.npy",
    )
    checking.add_argument(
        "--mean-mode",
        choices=("channel", "image"),
        default=None,
        help="subtract the mean file's per-channel average (default, as "
        "Caffe's example does) or the resized image",
    )
    checking.add_argument(
        "--size",
        metavar="H,W",
        type=_size2,
        default=None,
        help="net input size (default: from the prototxt, else 227,227)",
    )
    checking.add_argument(
        "--scale",
        type=float,
        default=None,
        help="pixel scale after reading in [0, 1] (default 255)",
    )
    checking.add_argument(
        "--variant", choices=("alexnet", "caffenet"), help="LRN/pool order when no prototxt says it"
    )
    checking.add_argument(
        "--channels",
        choices=CHANNEL_ORDERS,
        help="channel order the weights expect (default: recorded, else bgr)",
    )
    checking.add_argument("--top", type=positive_int, default=5, help="classes per image")

    p = verbs.add_parser(
        "verify",
        parents=[checking],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=common.examples(
            "weightconv verify alexnet.npy --against bvlc_alexnet.caffemodel "
            "--prototxt deploy.prototxt",
            "weightconv verify alexnet.ckpt --card caffenet_cat.json",
            "weightconv verify alexnet.weights.h5 --against "
            "bvlc_alexnet.caffemodel --prototxt deploy.prototxt --image cat.jpg",
            "weightconv verify resnet.npy --against resnet.caffemodel --prototxt "
            "deploy.prototxt --engine keras --trace",
            "weightconv verify model.keras --against model.caffemodel --prototxt deploy.prototxt",
        ),
        help="check converted weights against their source model or a card",
        description="Run WEIGHTS (any format) in the graph of the deploy prototxt "
        "(NumPy engine, Caffe's semantics; --engine keras|tf: the same graph as a "
        "Keras 3 model; a .keras model file made by caffe2keras or export-keras is "
        "run itself, in Keras) and compare every output blob, "
        "elementwise, and a classifier's top-k with the source caffemodel "
        "run by OpenCV's Caffe importer (--against), or the predictions "
        "with a reference card (--card). Exit 0 when they agree, 1 when "
        "not, 2 for a layer type the engine does not run.",
    )
    p.add_argument("weights", type=Path)
    p.add_argument(
        "--against", metavar="MODEL", type=Path, help="the source .caffemodel (needs --prototxt)"
    )
    p.add_argument("--card", metavar="CARD.json", type=Path, help="a reference card")
    p.add_argument(
        "--prototxt",
        metavar="P",
        type=Path,
        help="deploy prototxt: the source's net, also the graph's layer settings",
    )
    p.add_argument(
        "--from", dest="src_format", metavar="FORMAT", help="format of WEIGHTS (default: detected)"
    )
    p.add_argument("--trust-pickle", action="store_true", help="as for conversions")
    p.add_argument(
        "--prob-tol",
        type=float,
        default=None,
        help="max |difference| of probabilities (default 1e-4; a card may set it)",
    )
    p.add_argument(
        "--logit-tol",
        type=float,
        default=None,
        help="also require max |Δlogit| / logit scale below this",
    )
    p.add_argument(
        "--engine",
        choices=("numpy", "tf", "keras"),
        default=None,
        help="what runs WEIGHTS: numpy (default; any deploy net, no TensorFlow), keras or "
        "tf (the deploy net as a Keras 3 model on TensorFlow; without --prototxt the "
        "built-in AlexNet graph); default keras for a .keras model with --prototxt",
    )
    p.add_argument(
        "--outputs",
        metavar="BLOB[,BLOB]",
        action="append",
        default=[],
        help="blobs to compare (repeatable; default: every output blob)",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="on a failure, name the first blob that differs from OpenCV's and by how much",
    )
    common.global_switches(p, top=False)
    p.set_defaults(handler=_verify)

    p = verbs.add_parser(
        "reference",
        parents=[checking],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=common.examples(
            "weightconv reference bvlc_alexnet.caffemodel --prototxt "
            "deploy.prototxt -o alexnet_card.json",
            "weightconv reference bvlc_alexnet.caffemodel --prototxt "
            "deploy.prototxt --image photos/ -o card.json",
        ),
        help="write a reference card of a model's predictions",
        description="Run MODEL (a .caffemodel through OpenCV's Caffe importer, "
        "any other weight file through the built-in graph) on the "
        "images and write its top classes and probabilities, the "
        "preprocessing and the model's identity as JSON, for "
        "`verify --card`.",
    )
    p.add_argument("model", type=Path)
    p.add_argument("--prototxt", metavar="P", type=Path, help="deploy prototxt")
    p.add_argument("-o", "--output", metavar="CARD.json", type=Path, required=True)
    p.add_argument("-f", "--force", action="store_true", help="overwrite the card if it exists")
    common.global_switches(p, top=False)
    p.set_defaults(handler=_reference)


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
        caffe = lrn.CaffeLRN(
            local_size=args.local_size,
            alpha=_given(args.alpha, "--alpha"),
            beta=args.beta,
            k=1.0 if args.k is None else args.k,
        )
        rows.append(
            {
                "layer": None,
                "caffe": caffe.as_dict(),
                "tensorflow": lrn.caffe_to_tf(caffe, "--local-size").as_dict(),
            }
        )
    elif args.depth_radius is not None:
        tf = lrn.TfLRN(
            depth_radius=args.depth_radius,
            alpha=_given(args.alpha, "--alpha"),
            beta=args.beta,
            bias=1.0 if args.bias is None else args.bias,
        )
        caffe = lrn.tf_to_caffe(tf, "--depth-radius")
        rows.append(
            {
                "layer": None,
                "caffe": caffe.as_dict(),
                "tensorflow": tf.as_dict(),
                "warnings": lrn.suspicious(tf),
            }
        )
    else:
        raise UsageError(
            "lrn needs a prototxt/caffemodel, or --local-size (Caffe -> TF), or "
            "--depth-radius (TF -> Caffe)"
        )
    failed = [row for row in rows if "error" in row]
    if args.json:
        print(json.dumps(document("lrn", not failed, {"layers": rows}), indent=2))
    else:
        for row in rows:
            c = row["caffe"]
            label = f"{row['layer']}: " if row["layer"] else ""
            caffe_text = (
                f"Caffe local_size={c['local_size']} alpha={c['alpha']:g} "
                f"beta={c['beta']:g} k={c['k']:g}"
            )
            if "error" in row:
                print(f"{label}{caffe_text} -> no TensorFlow equivalent: {row['error']}")
                continue
            t = row["tensorflow"]
            print(
                f"{label}{caffe_text} <-> tf.nn.local_response_normalization("
                f"depth_radius={t['depth_radius']}, alpha={t['alpha']:g}, beta={t['beta']:g}, "
                f"bias={t['bias']:g})"
            )
            for warning in row.get("warnings", []):
                print(f"  warning: {warning}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else EXIT_OK


def _given(value: float | None, flag: str) -> float:
    if value is None:
        raise UsageError(f"{flag} is required")
    return value


def _lrn_layers(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if path.suffix.lower() in (".prototxt", ".pbtxt"):
        from weightconv.formats.caffe.net import read_net_def

        return [
            (layer.name, layer.params)
            for layer in read_net_def(path)[0].layers
            if layer.type == "LRN"
        ]
    weights = formats.detect(path).read(path)
    return [(layer.name, layer.params) for layer in weights.layers if layer.kind == "lrn"]


def _floats3(text: str) -> tuple[float, float, float]:
    try:
        b, g, r = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected B,G,R such as 104,117,123, got {text!r}"
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


_PREPROCESSING_FLAGS = ("size", "scale", "mean", "mean_file", "mean_mode")


def _preprocessing(args: argparse.Namespace, *, card: bool = False) -> Any:
    """The preprocessing the flags ask for; None for a card when no flag asks (the card's)."""
    from weightconv.nets.architecture import prototxt_input_size
    from weightconv.verify import IMAGENET_MEAN_BGR, Preprocessing

    if card and all(getattr(args, name) is None for name in _PREPROCESSING_FLAGS):
        return None
    size = args.size
    if size is None and getattr(args, "prototxt", None) is not None:
        size = prototxt_input_size(args.prototxt)
    return Preprocessing(
        size=size or (227, 227),
        scale=255.0 if args.scale is None else args.scale,
        mean_bgr=args.mean or IMAGENET_MEAN_BGR,
        mean_file=str(args.mean_file) if args.mean_file else None,
        mean_mode=args.mean_mode or "channel",
    )


def _image_files(paths: list[Path]) -> list[Path] | None:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")
                )
            )
        else:
            files.append(path)
    return files or None


def _verify(args: argparse.Namespace) -> int:
    from weightconv.verify import Tolerance, verify

    if (args.against is None) == (args.card is None):
        raise UsageError(
            "verify needs exactly one reference: --against MODEL.caffemodel "
            "--prototxt DEPLOY, or --card CARD.json"
        )
    tolerance = None
    if args.prob_tol is not None or args.logit_tol is not None:
        tolerance = Tolerance(
            prob=1e-4 if args.prob_tol is None else args.prob_tol, logit=args.logit_tol
        )
    result = verify(
        args.weights,
        against=args.against,
        prototxt=args.prototxt,
        card=args.card,
        images=_image_files(args.images),
        count=args.count,
        seed=args.seed,
        preprocessing=_preprocessing(args, card=args.card is not None),
        tolerance=tolerance,
        variant=args.variant,
        channel_order=args.channels,
        top=args.top,
        format=args.src_format,
        read_options={"trust_pickle": True} if args.trust_pickle else None,
        engine=args.engine,
        outputs=[blob for entry in args.outputs for blob in entry.split(",") if blob] or None,
        trace=args.trace,
    )
    if args.json:
        verdict = result.to_dict()
        print(
            json.dumps(
                document("verify", bool(verdict.pop("ok")), verdict), indent=2, default=json_default
            )
        )
    else:
        print(result.report(all_images=not args.quiet))
    return result.exit_code


def _reference(args: argparse.Namespace) -> int:
    from weightconv.verify import write_card

    card = write_card(
        args.model,
        args.output,
        prototxt=args.prototxt,
        images=_image_files(args.images),
        preprocessing=_preprocessing(args),
        count=args.count,
        seed=args.seed,
        top=args.top,
        variant=args.variant,
        channel_order=args.channels,
        force=args.force,
    )
    if args.json:
        print(
            json.dumps(
                document("reference", True, {"card": str(args.output), **card}),
                indent=2,
                default=json_default,
            )
        )
    else:
        print(
            f"wrote {args.output}: {len(card.get('images', []))} images, top-{args.top} "
            f"of {card.get('model', {}).get('name') or args.model}"
        )
    return EXIT_OK
