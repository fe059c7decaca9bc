"""`verify` with the NumPy engine: any deploy net, every output blob, OpenCV as the reference.

The converted weights run in the graph of the deploy prototxt (`weightconv.nets.graph`,
`numpy_engine`); OpenCV's Caffe importer runs the source .caffemodel on the same inputs.
Every output blob (or those asked for) is compared elementwise, relative to its scale; a
classifier head (a Softmax over a flat blob) is also compared image by image, top-k classes
by identity (`weightconv.verify.comparison.compare`). With ``trace``, a failure is followed
blob by blob to the first one that differs. Inputs: images, preprocessed as Caffe's example
does, when the net takes one 3-channel image blob; otherwise seeded synthetic inputs of
every shape the prototxt declares.

Our run comes first and frees its weights layer by layer; OpenCV's after it, so the two
never hold a model's weights at the same time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from weightconv.errors import UsageError
from weightconv.model import WeightSet
from weightconv.nets import Architecture
from weightconv.nets.alexnet import read_weights
from weightconv.nets.graph import Graph
from weightconv.nets.graph_weights import GraphWeights, bind
from weightconv.nets.keras_export import is_keras_model
from weightconv.nets.numpy_engine import run
from weightconv.nets.params import assign
from weightconv.verify.blobs import (
    BLOB_TOLERANCE,
    BlobCheck,
    Trace,
    compare_blobs,
    opencv_blobs,
    trace_points,
)
from weightconv.verify.blobs import trace as find_divergence
from weightconv.verify.comparison import TOP, Tolerance, VerifyResult, compare
from weightconv.verify.inputs import SYNTHETIC_COUNT, Inputs, Preprocessing, make_inputs
from weightconv.verify.predictions import Predictions, lrn_k_notes


@dataclass
class GraphVerifyResult(VerifyResult):
    """A `VerifyResult` with the output blobs compared elementwise and, after a failure
    with ``trace``, the first blob that differs."""

    blobs: list[BlobCheck] = field(default_factory=list)
    trace: Trace | None = None
    classifier: bool = True
    blob_tolerance: float = BLOB_TOLERANCE

    @property
    def passed(self) -> bool:
        head = bool(self.summary["passed"]) if self.classifier else True
        return head and all(check.passed for check in self.blobs)

    def headline(self) -> str:
        agree = sum(check.passed for check in self.blobs)
        worst = max((check.relative for check in self.blobs), default=0.0)
        blobs = (
            f"{agree}/{len(self.blobs)} output blobs agree (max |Δ| {worst:.2g} of the blob's "
            f"scale, tolerance {self.blob_tolerance:g})"
        )
        if not self.classifier:
            return f"{'PASS' if self.passed else 'FAIL'}: {blobs}"
        return f"{super().headline()}; {blobs}"

    def report(self, *, all_images: bool = True) -> str:
        if self.classifier:
            lines = super().report(all_images=all_images).splitlines()[:-1]
        else:
            lines = [f"verify {self.subject}", f"  against {self.reference}"]
            lines += [f"  inputs  {self.inputs}"] + [f"  note: {note}" for note in self.notes]
        for check in self.blobs:
            lines.append(f"  blob {check.describe()}  {'ok' if check.passed else 'FAIL'}")
        if self.trace is not None:
            lines.append(f"  {self.trace.describe()}")
        lines.append(self.headline())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        document = super().to_dict()
        document.update(
            ok=self.passed,
            verdict="pass" if self.passed else "fail",
            exit_code=self.exit_code,
            blobs=[check.to_dict() for check in self.blobs],
            blob_tolerance=self.blob_tolerance,
            trace=None if self.trace is None else self.trace.to_dict(),
        )
        return document


def build_graph(
    weights: WeightSet,
    prototxt: str | os.PathLike[str] | None,
    variant: str | None,
) -> Graph:
    """The deploy net's graph, or BVLC's AlexNet/CaffeNet sized from the weights."""
    if prototxt is not None:
        if variant is not None:
            arch = Architecture.from_prototxt(prototxt)
            if arch.variant != variant:
                raise UsageError(f"{prototxt} defines a {arch.variant}, not a {variant}")
        return Graph.from_prototxt(prototxt)
    arch = Architecture.bvlc(variant or "alexnet")
    params, _ = assign(arch, weights)
    first = arch.weighted[0]
    kernel = params[first.name].weights
    in_channels = kernel.shape[2] * first.group if kernel.ndim == 4 else 3
    outputs = {name: int(p.weights.shape[-1]) for name, p in params.items()}
    return Graph.from_architecture(arch, in_channels=in_channels, num_outputs=outputs)


def graph_inputs(
    graph: Graph,
    images: Sequence[str | os.PathLike[str]] | None,
    preprocessing: Preprocessing | None,
    count: int,
    seed: int,
) -> tuple[Inputs | None, dict[str, np.ndarray], list[str], str]:
    """(image inputs or None, the BGR feed by input blob, names, description)."""
    ((name, shape),) = graph.inputs.items() if len(graph.inputs) == 1 else ((None, ()),)
    if name is not None and len(shape) == 4 and shape[1] == 3:
        prep = preprocessing or Preprocessing(size=(shape[2], shape[3]))
        if tuple(prep.size) != (shape[2], shape[3]):
            raise UsageError(
                f"the inputs are {prep.size[0]}x{prep.size[1]}; the graph takes "
                f"{shape[2]}x{shape[3]}"
            )
        inputs = make_inputs(images, preprocessing=prep, count=count, seed=seed)
        feed = {name: inputs.bgr.transpose(0, 3, 1, 2)}
        return inputs, feed, inputs.names, inputs.description
    if images:
        raise UsageError(
            f"the net's inputs ({', '.join(f'{n} {s}' for n, s in graph.inputs.items())}) are "
            f"not one 3-channel image; leave the images out to verify on seeded inputs"
        )
    rng = np.random.default_rng(seed)
    feed = {
        blob: rng.standard_normal((count, *dims[1:])).astype(np.float32)
        for blob, dims in graph.inputs.items()
    }
    shapes = ", ".join(
        f"{blob} (N, {', '.join(map(str, dims[1:]))})" for blob, dims in graph.inputs.items()
    )
    names = [f"synthetic-{i}" for i in range(count)]
    return None, feed, names, f"{count} seeded normal inputs (seed {seed}) for {shapes}"


def _predictions(
    source: str, blobs: Mapping[str, np.ndarray], head: tuple[str, str], count: int
) -> Predictions:
    logits = np.asarray(blobs[head[0]], dtype=np.float64).reshape(count, -1)
    probabilities = np.asarray(blobs[head[1]], dtype=np.float64).reshape(count, -1)
    return Predictions(source, probabilities, logits, num_classes=logits.shape[1])


def verify_graph(
    weights: WeightSet | str | os.PathLike[str],
    *,
    subject: str,
    against: str | os.PathLike[str] | None,
    prototxt: str | os.PathLike[str] | None,
    reference: Predictions | None = None,
    card_inputs: Inputs | None = None,
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
    outputs: Sequence[str] | None = None,
    trace: bool = False,
    blob_tolerance: float = BLOB_TOLERANCE,
    notes: Sequence[str] = (),
    engine: str = "numpy",
) -> GraphVerifyResult:
    """Run the converted weights in the NumPy engine (or, `engine` "keras" or "tf", in the
    Keras engine; a ``.keras`` model file is run itself) and compare with OpenCV's run of
    the source model (`against`) or with a card's predictions (`reference`,
    `card_inputs`)."""
    early = Graph.from_prototxt(prototxt) if prototxt is not None and variant is None else None
    model_file = (
        engine != "numpy" and not isinstance(weights, WeightSet) and is_keras_model(weights)
    )
    weight_set: WeightSet | None
    if model_file:
        if early is None:
            raise UsageError(
                f"{weights}: verifying a .keras model needs the deploy net it was built from: "
                f"prototxt=DEPLOY.prototxt (and no variant)"
            )
        weight_set = None
    elif isinstance(weights, WeightSet):
        if format is not None or read_options:
            raise UsageError(
                "format= and read_options= apply to a weight file, not to a WeightSet already read"
            )
        weight_set = weights
    else:
        weight_set = read_weights(Path(weights), prototxt, format, read_options)
    if weight_set is None:
        assert early is not None
        graph, bound = early, None
    else:
        graph = early or build_graph(weight_set, prototxt, variant)
        bound = bind(graph, weight_set)
    all_notes = [*notes, *graph.notes]
    if bound is not None:
        all_notes += [note for note in bound.notes if "matched to the graph" in note]
    if card_inputs is not None:
        inputs: Inputs | None = card_inputs
        ((input_blob, _),) = graph.inputs.items()
        feed = {input_blob: card_inputs.bgr.transpose(0, 3, 1, 2)}
        names, description = card_inputs.names, card_inputs.description
    else:
        inputs, feed, names, description = graph_inputs(graph, images, preprocessing, count, seed)
    if inputs is not None:
        all_notes += inputs.notes
        order = channel_order or (bound.channel_order if bound is not None else None)
        if order is None:
            order = "bgr"
            all_notes.append(
                "the weights do not record their input channel order; fed BGR (Caffe's "
                "convention): give the channel order (rgb) if they were converted to RGB"
            )
        ((input_blob, _),) = graph.inputs.items()
        ours_feed = {input_blob: inputs.in_order(order).transpose(0, 3, 1, 2)}
    else:
        order, ours_feed = "bgr", feed
    head = graph.classifier()
    # a classifier's logits too: a saturated softmax hides differences its input shows
    wanted = list(outputs) if outputs else [*(head[:1] if head else ()), *graph.outputs]
    asked = list(dict.fromkeys([*wanted, *(head or ())]))
    n = len(names)
    graph = graph.with_batch(n)
    if bound is not None:
        ours, engine_name = _run(graph, bound, ours_feed, asked, trace, engine), _ENGINES[engine]
    else:
        assert not isinstance(weights, WeightSet)
        ours, engine_name = _run_model(Path(weights), graph, ours_feed, asked, trace)
    # a mapped weight file is unmapped here, before OpenCV reads the source model
    del bound, weight_set
    where = Path(graph.source).name if os.sep in graph.source else graph.source
    our_source = f"{subject} {engine_name} ({where}), {order.upper()} input"
    checks: list[BlobCheck] = []
    theirs: dict[str, np.ndarray] = {}
    their_layers: dict[str, list[np.ndarray]] = {}
    if against is not None:
        assert prototxt is not None
        traced = trace_points(graph) if trace else []
        theirs, their_layers = opencv_blobs(
            against, prototxt, graph, feed, asked, layers=[layer for _, layer, _ in traced]
        )
        checks = compare_blobs(
            ours.blobs, {blob: theirs[blob] for blob in wanted}, tolerance=blob_tolerance
        )
        reference = None
        if head is not None:
            reference = _predictions(
                f"{Path(against).name} run by OpenCV {_cv2_version()}'s Caffe importer",
                theirs,
                head,
                n,
            )
            reference.notes = lrn_k_notes(Path(prototxt))
        ref_source = f"{Path(against).name} run by OpenCV {_cv2_version()}'s Caffe importer"
    else:
        ref_source = reference.source if reference is not None else "the reference"
    tol = tolerance or Tolerance()
    if head is not None and reference is not None:
        mine = _predictions(our_source, ours.blobs, head, n)
        base = compare(
            mine,
            reference,
            names,
            tolerance=tol,
            k=top,
            subject=our_source,
            inputs=description,
            notes=all_notes,
        )
        result = GraphVerifyResult(**vars(base), blobs=checks, blob_tolerance=blob_tolerance)
    elif against is None:
        raise UsageError(
            "a reference card compares classes: the net has no Softmax classifier head"
        )
    else:
        result = GraphVerifyResult(
            our_source,
            ref_source,
            description,
            [],
            {"passed": True, "images": n},
            tol,
            list(dict.fromkeys(all_notes)),
            blobs=checks,
            classifier=False,
            blob_tolerance=blob_tolerance,
        )
    if trace and not result.passed and their_layers:
        result = replace(
            result,
            trace=find_divergence(
                ours.layers, their_layers, trace_points(graph), tolerance=blob_tolerance
            ),
        )
    return result


def _cv2_version() -> str:
    import cv2

    return str(cv2.__version__)


_ENGINES = {
    "numpy": "in the NumPy engine",
    "keras": "in the Keras engine",
    "tf": "in the Keras engine (TensorFlow)",
}


def _run_model(
    path: Path,
    graph: Graph,
    feed: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    keep_layers: bool,
) -> tuple[Any, str]:
    """A ``.keras`` model file loaded by Keras and run: (its blobs, how it ran)."""
    from weightconv.nets.keras_engine import import_keras, model_blobs

    keras = import_keras()
    from weightconv.nets import keras_layers  # noqa: F401 - registers our layers

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many kinds
        raise UsageError(f"{path}: Keras cannot load it as a model: {exc}") from None
    keep = "layers" if keep_layers else "outputs"
    ran = model_blobs(model, graph, feed, outputs=outputs, keep=keep)
    return ran, f"loaded by Keras {keras.__version__}"


def _run(
    graph: Graph,
    weights: GraphWeights,
    feed: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    keep_layers: bool,
    engine: str = "numpy",
) -> Any:
    if engine != "numpy":
        from weightconv.nets import keras_engine

        return keras_engine.run(
            graph, weights, feed, outputs=outputs, keep="layers" if keep_layers else "outputs"
        )
    return run(
        graph,
        weights,
        feed,
        outputs=outputs,
        keep="layers" if keep_layers else "outputs",
        release=not keep_layers,
    )


__all__ = ["GraphVerifyResult", "build_graph", "graph_inputs", "verify_graph"]
