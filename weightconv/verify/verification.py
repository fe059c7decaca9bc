"""`verify`: does a converted model predict what its source predicts?

The converted weights run in the built-in graph (`weightconv.nets`, TensorFlow) on inputs
preprocessed as Caffe's examples do (`weightconv.verify.inputs`); the reference is the source
``.caffemodel`` run by OpenCV's Caffe importer on the very same inputs, or a reference card
(`weightconv.verify.cards`). `weightconv.verify.comparison` gives the verdict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from weightconv.errors import UsageError
from weightconv.model import WeightSet
from weightconv.nets import AlexNet
from weightconv.nets.keras_export import is_keras_model
from weightconv.verify.blobs import BLOB_TOLERANCE
from weightconv.verify.cards import card_inputs, file_sha1, is_caffe, load_card
from weightconv.verify.comparison import (
    PUBLISHED_CARD_TOLERANCE,
    TOP,
    Tolerance,
    VerifyResult,
    compare,
)
from weightconv.verify.graph_verification import verify_graph
from weightconv.verify.inputs import (
    CHANNEL_ORDERS,
    SYNTHETIC_COUNT,
    Preprocessing,
    make_inputs,
)
from weightconv.verify.predictions import card_predictions, graph_predictions, opencv_predictions

#: The engines verify runs converted weights in: NumPy (any deploy net), TensorFlow, Keras.
ENGINES = ("numpy", "tf", "keras")
DEFAULT_ENGINE = "numpy"


def verify(
    weights: WeightSet | AlexNet | str | os.PathLike[str],
    *,
    against: str | os.PathLike[str] | None = None,
    prototxt: str | os.PathLike[str] | None = None,
    card: str | os.PathLike[str] | dict[str, Any] | None = None,
    images: Sequence[str | os.PathLike[str]] | None = None,
    count: int = SYNTHETIC_COUNT,
    seed: int = 0,
    preprocessing: Preprocessing | None = None,
    tolerance: Tolerance | None = None,
    variant: str | None = None,
    channel_order: str | None = None,
    top: int = TOP,
    format: str | None = None,
    read_options: Mapping[str, Any] | None = None,
    engine: str | None = None,
    outputs: Sequence[str] | None = None,
    trace: bool = False,
    blob_tolerance: float = BLOB_TOLERANCE,
) -> VerifyResult:
    """Check converted weights against their source model or a reference card.

    Args:
        weights: a weight file in any format, a WeightSet, or a built `AlexNet`.
        against: the source ``.caffemodel``, run by OpenCV on the same inputs (with
            `prototxt`, which also defines our graph's strides, pads, groups and LRN).
        prototxt: the deploy net; for a card, defaults to the card's ``deploy_prototxt``
            when that file exists, else BVLC's definition of `variant`.
        card: a reference card (path or `load_card` dict) instead of `against`.
        images: image files; default `count` synthetic images. With a card: where the
            card's images are (each matched to the card by sha256 or file name; one the card
            does not have is refused); default the card's images, relative to the card.
        preprocessing: default 227x227 (or the net's input), ImageNet mean; a card's own.
        tolerance: default `Tolerance()`; for a card, the card's, else
            `PUBLISHED_CARD_TOLERANCE`.
        variant: "alexnet" or "caffenet" when no prototxt defines the graph.
        channel_order: the order the converted weights expect (default: recorded, else bgr).
        format: the format of the weight file (default: detected).
        read_options: the format's reader options, as `weightconv.load` takes them (e.g.
            ``{"trust_pickle": True}``); one the reader does not take is refused.
        engine: "numpy" (any deploy net, `weightconv.nets.numpy_engine`; every output
            blob compared with OpenCV's), "keras" or "tf" (with a prototxt: the same
            graph as a Keras 3 model, `weightconv.nets.keras_engine`; without one, the
            built-in AlexNet graph in TensorFlow / Keras; needs TensorFlow). Default:
            "keras" for a ``.keras`` model file with a prototxt (the model itself is run,
            found by the layer names `weightconv.nets.keras_export` gives; "numpy" runs the
            weights it holds instead), else "numpy". A built `AlexNet` always runs in
            TensorFlow.
        outputs: the blobs to compare (graph engines; default every output blob).
        trace: after a failure, find the first blob that differs from OpenCV's (graph
            engines, against a caffemodel).
        blob_tolerance: a blob agrees when max |Δ| / max |reference| is below it.

    Returns a VerifyResult (``.passed``, ``.exit_code``, ``.report()``, ``.to_dict()``).

    Example::

        result = verify("alexnet.npy", against="alexnet.caffemodel", prototxt="deploy.prototxt")
        print(result.report())
        sys.exit(result.exit_code)          # 0 pass, 1 fail
    """
    if (against is None) == (card is None):
        raise UsageError(
            "give either the source model to verify against (against=MODEL.caffemodel with "
            "prototxt=DEPLOY.prototxt) or a reference card (card=CARD.json), not both and "
            "not neither"
        )
    if channel_order is not None and channel_order not in CHANNEL_ORDERS:
        raise UsageError(f"channel_order={channel_order!r}: must be 'bgr' or 'rgb'")
    model_file = isinstance(weights, str | os.PathLike) and is_keras_model(weights)
    if engine is None:
        engine = "keras" if model_file and prototxt is not None else DEFAULT_ENGINE
    model_file = model_file and engine != "numpy"
    if engine not in ENGINES:
        raise UsageError(f"engine={engine!r}: one of {', '.join(ENGINES)}")
    notes: list[str] = []
    subject = _subject(weights)
    graph_engine = engine == "numpy" or prototxt is not None or model_file
    if graph_engine and not isinstance(weights, AlexNet):
        return _verify_numpy(
            weights,
            subject,
            against=against,
            prototxt=prototxt,
            card=card,
            images=images,
            count=count,
            seed=seed,
            preprocessing=preprocessing,
            tolerance=tolerance,
            variant=variant,
            channel_order=channel_order,
            top=top,
            format=format,
            read_options=read_options,
            outputs=outputs,
            trace=trace,
            blob_tolerance=blob_tolerance,
            engine=engine,
        )
    if outputs or trace:
        raise UsageError(
            "outputs= and trace= compare blobs, which the graph engines do: give the deploy "
            "net (prototxt=DEPLOY.prototxt)"
        )
    if against is not None:
        _check_against(against, prototxt)
        assert prototxt is not None
        net = _build(weights, prototxt, variant, format, read_options)
        prep = preprocessing or Preprocessing(size=net.architecture.input_size)
        inputs = make_inputs(images, preprocessing=prep, count=count, seed=seed)
        reference = opencv_predictions(against, prototxt, inputs)
        tol = tolerance or Tolerance()
    else:
        assert card is not None
        card_data = card if isinstance(card, dict) else load_card(card)
        graph_prototxt = prototxt
        if graph_prototxt is None:
            graph_prototxt, prototxt_notes = _card_prototxt(card_data)
            notes += prototxt_notes
        inputs = card_inputs(card_data, preprocessing, images)
        net = _build(weights, graph_prototxt, variant, format, read_options)
        reference = card_predictions(card_data, inputs.entries)
        tol = _card_tolerance(card_data, tolerance, notes)
        notes += _identity_notes(weights, card_data)
    notes += inputs.notes
    if inputs.bgr.shape[1:3] != tuple(net.architecture.input_size):
        raise UsageError(
            f"the inputs are {inputs.bgr.shape[1]}x{inputs.bgr.shape[2]}; the "
            f"graph takes {net.architecture.input_size[0]}x"
            f"{net.architecture.input_size[1]}"
        )
    ours = graph_predictions(net, inputs, channel_order=channel_order, name=subject, engine=engine)
    notes += [note for note in net.notes if "matched to the graph" in note]
    return compare(
        ours,
        reference,
        inputs.names,
        tolerance=tol,
        k=top,
        subject=ours.source,
        inputs=inputs.description,
        notes=notes,
    )


def _verify_numpy(
    weights: WeightSet | str | os.PathLike[str],
    subject: str,
    *,
    against: str | os.PathLike[str] | None,
    prototxt: str | os.PathLike[str] | None,
    card: str | os.PathLike[str] | dict[str, Any] | None,
    tolerance: Tolerance | None,
    images: Sequence[str | os.PathLike[str]] | None,
    preprocessing: Preprocessing | None,
    **options: Any,
) -> VerifyResult:
    """`verify` in a graph engine (NumPy or Keras): against OpenCV's run of the source, or
    a card."""
    if against is not None:
        _check_against(against, prototxt)
        return verify_graph(
            weights,
            subject=subject,
            against=against,
            prototxt=prototxt,
            images=images,
            preprocessing=preprocessing,
            tolerance=tolerance,
            **options,
        )
    assert card is not None
    if options.get("outputs") or options.get("trace"):
        raise UsageError("outputs= and trace= compare blobs with OpenCV's: verify against=MODEL")
    card_data = card if isinstance(card, dict) else load_card(card)
    notes: list[str] = []
    graph_prototxt = prototxt
    if graph_prototxt is None:
        graph_prototxt, prototxt_notes = _card_prototxt(card_data)
        notes += prototxt_notes
    inputs = card_inputs(card_data, preprocessing, images)
    reference = card_predictions(card_data, inputs.entries)
    tol = _card_tolerance(card_data, tolerance, notes)
    notes += _identity_notes(weights, card_data)
    return verify_graph(
        weights,
        subject=subject,
        against=None,
        prototxt=graph_prototxt,
        reference=reference,
        card_inputs=inputs,
        tolerance=tol,
        notes=notes,
        **options,
    )


def _check_against(against: str | os.PathLike[str], prototxt: Any) -> None:
    if prototxt is None:
        raise UsageError(
            f"{against}: verifying against a Caffe model needs its deploy net: "
            f"prototxt=DEPLOY.prototxt"
        )
    if not is_caffe(Path(against)):
        raise UsageError(
            f"{against}: against=MODEL.caffemodel takes the source Caffe model (run by "
            f"OpenCV's Caffe importer); to compare two converted files diff them, or "
            f"make a reference card of the source and verify with card=CARD.json"
        )


def _card_tolerance(
    card: dict[str, Any], tolerance: Tolerance | None, notes: list[str]
) -> Tolerance:
    """The tolerance given, else the card's, else `PUBLISHED_CARD_TOLERANCE` (with a note)."""
    if tolerance is not None:
        return tolerance
    if "tolerance" in card:
        return Tolerance.from_dict(card["tolerance"])
    notes.append(
        f"the card states no tolerance; using max |Δprob| < "
        f"{PUBLISHED_CARD_TOLERANCE.prob:g} for predictions made by other software"
    )
    return PUBLISHED_CARD_TOLERANCE


def _subject(weights: Any) -> str:
    if isinstance(weights, AlexNet):
        return "the weights"
    if isinstance(weights, WeightSet):
        return Path(weights.source.path).name if weights.source else "the given weights"
    return Path(weights).name


def _build(
    weights: WeightSet | AlexNet | str | os.PathLike[str],
    prototxt: str | os.PathLike[str] | None,
    variant: str | None,
    format: str | None,
    read_options: Mapping[str, Any] | None,
) -> AlexNet:
    if isinstance(weights, AlexNet):
        if format is not None or read_options:
            raise UsageError(
                "format= and read_options= apply to a weight file, not to a built AlexNet"
            )
        return weights
    return AlexNet.from_weights(
        weights, prototxt=prototxt, variant=variant, format=format, read_options=read_options
    )


def _card_prototxt(card: dict[str, Any]) -> tuple[Path | None, list[str]]:
    """The deploy net the card names, when it is where the card says; else a note."""
    relative = card.get("model", {}).get("deploy_prototxt")
    if not relative:
        return None, []
    path = Path(card.get("_path", ".")).parent / relative
    if path.is_file():
        return path, []
    return None, [
        f"the card's deploy net {relative} is not at {path}; the graph has BVLC's layer "
        f"settings (give the deploy prototxt to use the card's)"
    ]


def _identity_notes(weights: Any, card: dict[str, Any]) -> list[str]:
    model = card.get("model", {})
    expected = model.get("caffemodel_sha1")
    if not expected:
        return []
    if isinstance(weights, str | os.PathLike) and is_caffe(Path(weights)):
        actual = file_sha1(Path(weights))
        if actual != expected:
            return [
                f"{Path(weights).name} has sha1 {actual}; the card is for "
                f"{model.get('caffemodel', 'a model')} with sha1 {expected}"
            ]
        return [f"{Path(weights).name} is the card's model (sha1 matches)"]
    return [
        f"the card is for {model.get('caffemodel', 'a model')} (sha1 {expected}); a "
        f"converted file cannot be matched by checksum, only by its predictions"
    ]


__all__ = ["verify"]
