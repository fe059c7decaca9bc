"""One side of a comparison: what a model predicts on the inputs.

- `opencv_predictions`: the source ``.caffemodel`` run by OpenCV's Caffe importer, an
  independent implementation of Caffe's layers;
- `graph_predictions`: converted weights run in the built-in graph (`weightconv.nets`);
- `card_predictions`: the per-image top-k classes and probabilities a reference card records.

Example::

    reference = opencv_predictions("alexnet.caffemodel", "deploy.prototxt", inputs)
    reference.top_k(0, 5)        # [(class, probability), ...] of the first image
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightconv.errors import FormatError, UsageError
from weightconv.formats.caffe.net import NetDef, read_net_def
from weightconv.nets import AlexNet, softmax
from weightconv.verify.inputs import Inputs, cv2_module
from weightconv.verify.labels import class_label


@dataclass
class Predictions:
    """One side of a comparison: full probabilities (and logits) for a model, or per-image
    top-k lists (class, probability) for a card."""

    source: str
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None
    top: list[list[tuple[int, float]]] | None = None
    num_classes: int | None = None
    notes: list[str] = field(default_factory=list)
    #: Class names a card gives, by class index.
    labels: dict[int, str] = field(default_factory=dict)

    def label(self, cls: int, num_classes: int | None = None) -> str:
        """The name of class `cls`: the card's own, else ImageNet's for 1000 classes."""
        return self.labels.get(cls) or class_label(cls, self.num_classes or num_classes)

    def top_k(self, image: int, k: int) -> list[tuple[int, float]]:
        """The `k` most probable (class, probability) of image `image`, most probable first."""
        if self.probabilities is not None:
            row = self.probabilities[image]
            order = np.argsort(-row, kind="stable")[:k]
            return [(int(c), float(row[c])) for c in order]
        assert self.top is not None
        return self.top[image][:k]

    def prob_of(self, image: int, cls: int) -> float | None:
        """The probability of class `cls` on image `image`; None when not known."""
        if self.probabilities is not None:
            row = self.probabilities[image]
            return float(row[cls]) if 0 <= cls < row.shape[0] else None
        assert self.top is not None
        for c, p in self.top[image]:
            if c == cls:
                return p
        return None

    @property
    def count(self) -> int:
        """How many images these predictions are for."""
        if self.probabilities is not None:
            return int(self.probabilities.shape[0])
        return len(self.top or [])


def _net_def(prototxt: Path) -> NetDef:
    return read_net_def(prototxt)[0]


def _softmax_layer(prototxt: Path) -> tuple[str, str | None]:
    """(logits blob, probability blob or None) of a deploy net."""
    layers = [layer for layer in _net_def(prototxt).layers if layer.phase != "TRAIN"]
    softmaxes = [layer for layer in layers if layer.type == "Softmax"]
    if softmaxes:
        return softmaxes[-1].bottoms[0], softmaxes[-1].tops[0]
    if not layers or not layers[-1].tops:
        raise FormatError(f"{prototxt}: cannot tell which blob holds the logits")
    return layers[-1].tops[0], None


def lrn_k_notes(prototxt: Path) -> list[str]:
    """A note when an LRN layer's k is not 1, which OpenCV's importer ignores."""
    odd = [
        layer.name
        for layer in _net_def(prototxt).layers
        if layer.type == "LRN" and not math.isclose(layer.params.get("k", 1.0), 1.0)
    ]
    if odd:
        return [
            f"{', '.join(odd)}: LRN k is not 1; OpenCV's Caffe importer ignores k, so its "
            f"reference for this net is not Caffe's"
        ]
    return []


def opencv_predictions(
    caffemodel: str | os.PathLike[str],
    prototxt: str | os.PathLike[str],
    inputs: Inputs,
    *,
    channel_order: str = "bgr",
) -> Predictions:
    """The source Caffe model run by OpenCV's Caffe importer (``cv2.dnn.readNetFromCaffe``)
    on `inputs` (fed NCHW in `channel_order`, BGR for Caffe-trained models)."""
    cv2 = cv2_module()
    model, deploy = Path(caffemodel), Path(prototxt)
    for path, what in ((model, "caffemodel"), (deploy, "prototxt")):
        if not path.is_file():
            raise UsageError(f"{path}: no such {what}")
    logits_blob, prob_blob = _softmax_layer(deploy)
    try:
        net = cv2.dnn.readNetFromCaffe(str(deploy), str(model))
    except cv2.error as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else str(exc)
        raise FormatError(f"{model}: OpenCV's Caffe importer refuses it: {message}") from None
    batch = np.ascontiguousarray(
        inputs.in_order(channel_order).transpose(0, 3, 1, 2), dtype=np.float32
    )
    net.setInput(batch)
    try:
        outputs = net.forward([logits_blob, *([prob_blob] if prob_blob else [])])
    except cv2.error as exc:
        raise FormatError(f"{model}: OpenCV cannot run it: {str(exc).strip()}") from None
    n = batch.shape[0]
    logits = np.asarray(outputs[0], dtype=np.float64).reshape(n, -1)
    probabilities = (
        np.asarray(outputs[1], dtype=np.float64).reshape(n, -1) if prob_blob else softmax(logits)
    )
    return Predictions(
        f"{model.name} run by OpenCV {cv2.__version__}'s Caffe importer",
        probabilities,
        logits,
        num_classes=logits.shape[1],
        notes=lrn_k_notes(deploy),
    )


def graph_predictions(
    net: AlexNet,
    inputs: Inputs,
    *,
    channel_order: str | None = None,
    name: str = "weights",
    engine: str = "tf",
) -> Predictions:
    """The weights run in the built-in graph, fed in `channel_order` (default: the one the
    weights record, else BGR with a note); `engine` "tf" runs its TensorFlow ops, "keras"
    the Keras model `AlexNet.to_keras` builds."""
    notes = []
    order = channel_order or net.channel_order
    if order is None:
        order = "bgr"
        notes.append(
            "the weights do not record their input channel order; fed BGR (Caffe's "
            "convention): give the channel order (rgb) if they were converted to RGB"
        )
    if engine == "keras":
        model = net.to_keras(include_softmax=False)
        logits = np.asarray(model.predict(inputs.in_order(order), verbose=0), dtype=np.float64)
        what = "Keras model"
    else:
        logits = net.logits(inputs.in_order(order)).astype(np.float64)
        what = "graph"
    graph = net.architecture.source
    graph = Path(graph).name if os.sep in graph else graph
    return Predictions(
        f"{name} in the built-in {net.variant} {what} ({graph}), {order.upper()} input",
        softmax(logits),
        logits,
        num_classes=logits.shape[1],
        notes=notes,
    )


def top_key(entry: dict[str, Any]) -> str | None:
    """The key of a card image's top-k list (``top5``, ``top10``...), None when it has none."""
    return next((key for key in entry if re.fullmatch(r"top\d+", key)), None)


def card_predictions(
    card: dict[str, Any], entries: list[dict[str, Any]] | None = None
) -> Predictions:
    """The predictions a card records for its images (or for `entries`, some of them)."""
    chosen = card["images"] if entries is None else entries
    lists = [entry[top_key(entry) or "top5"] for entry in chosen]
    top = [[(int(item["class"]), float(item["prob"])) for item in items] for items in lists]
    model = card.get("model", {})
    name = model.get("name") or model.get("caffemodel") or "the model"
    who = card.get("computed_by", "")
    source = f"reference card {Path(card.get('_path', 'card')).name} ({name}" + (
        f", {who})" if who else ")"
    )
    labels = {
        int(item["class"]): str(item["label"])
        for items in lists
        for item in items
        if item.get("label")
    }
    return Predictions(source, top=top, num_classes=model.get("num_classes"), labels=labels)


__all__ = [
    "Predictions",
    "card_predictions",
    "graph_predictions",
    "lrn_k_notes",
    "opencv_predictions",
    "top_key",
]
