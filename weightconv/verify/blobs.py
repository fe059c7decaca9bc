"""Blob by blob: OpenCV's values of a net's blobs, compared elementwise with ours, and the
trace that finds the first blob where two runs part.

OpenCV names a layer's outputs by the layer (``net.forwardAndRetrieve([layer names])``), so a
blob is asked of the last layer that writes it (an in-place ReLU's for a conv's blob), at
that layer's output index. For a trace, OpenCV's layer fusion is switched off, so that
every layer's output is its own and not a fused successor's.

A blob agrees when max |ours - reference| / max |reference| (its scale; 1 when the blob is
all zeros) is below the tolerance.

Example::

    theirs = opencv_blobs("model.caffemodel", "deploy.prototxt", graph, feed, ["prob"])
    checks = compare_blobs(ours, theirs, tolerance=1e-4)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weightconv.errors import FormatError, UsageError
from weightconv.nets.graph import Graph
from weightconv.verify.inputs import cv2_module

#: Blob agreement, relative to the reference blob's largest magnitude.
BLOB_TOLERANCE = 1e-4


@dataclass(frozen=True)
class BlobCheck:
    """One blob compared: its shape, max |Δ|, the reference's scale and the verdict."""

    blob: str
    shape: tuple[int, ...]
    max_abs_diff: float
    scale: float
    relative: float
    passed: bool
    written_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        entry = asdict(self)
        entry["shape"] = list(self.shape)
        return entry

    def describe(self) -> str:
        shape = "x".join(map(str, self.shape))
        return (
            f"{self.blob} ({shape}): max |Δ| {self.max_abs_diff:.3g} = {self.relative:.2g} of "
            f"its scale {self.scale:.3g}"
        )


def writers(graph: Graph, blobs: Sequence[str]) -> dict[str, tuple[str, int]]:
    """Each blob's last writer and output index; inputs map to ("", -1)."""
    found: dict[str, tuple[str, int]] = {}
    for blob in blobs:
        node = graph.producer(blob)
        found[blob] = ("", -1) if node is None else (node.name, node.tops.index(blob))
    return found


def opencv_blobs(
    caffemodel: str | os.PathLike[str],
    prototxt: str | os.PathLike[str],
    graph: Graph,
    feed: Mapping[str, np.ndarray],
    blobs: Sequence[str],
    *,
    layers: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """The values OpenCV's Caffe importer gives `blobs` on `feed` (input blob -> NCHW) and,
    for a trace, every output of each of `layers` as that layer writes it (with fusion off,
    OpenCV keeps an in-place layer's output apart from its bottom's)."""
    cv2 = cv2_module()
    model, deploy = Path(caffemodel), Path(prototxt)
    for path, what in ((model, "caffemodel"), (deploy, "prototxt")):
        if not path.is_file():
            raise UsageError(f"{path}: no such {what}")
    try:
        net = cv2.dnn.readNetFromCaffe(str(deploy), str(model))
    except cv2.error as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else str(exc)
        raise FormatError(f"{model}: OpenCV's Caffe importer refuses it: {message}") from None
    if layers:
        net.enableFusion(False)
    for name, array in feed.items():
        net.setInput(np.ascontiguousarray(array, dtype=np.float32), name)
    where = writers(graph, blobs)
    names = list(dict.fromkeys([*(layer for layer, _ in where.values() if layer), *layers]))
    try:
        retrieved = net.forwardAndRetrieve(names) if names else []
    except cv2.error as exc:
        raise FormatError(f"{model}: OpenCV cannot run it: {str(exc).strip()}") from None
    by_layer = {
        name: [np.asarray(out, dtype=np.float32) for out in outputs]
        for name, outputs in zip(names, retrieved, strict=True)
    }
    values: dict[str, np.ndarray] = {}
    for blob, (layer, index) in where.items():
        if not layer:
            values[blob] = np.asarray(feed[blob], dtype=np.float32)
            continue
        outputs = by_layer[layer]
        if index >= len(outputs):
            raise FormatError(f"OpenCV's layer {layer!r} has no output {index} ({blob})")
        values[blob] = outputs[index]
    del net
    return values, {name: by_layer[name] for name in layers}


def compare_blob(
    blob: str, ours: np.ndarray, theirs: np.ndarray, tolerance: float, written_by: str = ""
) -> BlobCheck:
    """`ours` against `theirs` (the reference), elementwise, relative to the reference's scale."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(theirs, dtype=np.float64)
    if a.size == b.size and a.shape != b.shape:
        b = b.reshape(a.shape)  # OpenCV drops trailing 1s of some blobs
    if a.shape != b.shape:
        return BlobCheck(blob, tuple(a.shape), float("inf"), 0.0, float("inf"), False, written_by)
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    if not np.isfinite(a).all() or not np.isfinite(b).all():
        diff = float("inf") if not np.array_equal(a, b, equal_nan=True) else 0.0
    scale = float(np.abs(b[np.isfinite(b)]).max()) if np.isfinite(b).any() else 0.0
    relative = diff / scale if scale > 0 else diff
    return BlobCheck(
        blob, tuple(a.shape), diff, scale, relative, bool(relative < tolerance), written_by
    )


def compare_blobs(
    ours: Mapping[str, np.ndarray],
    theirs: Mapping[str, np.ndarray],
    *,
    tolerance: float = BLOB_TOLERANCE,
) -> list[BlobCheck]:
    """Every blob of `theirs` compared with ours, in the order given."""
    return [compare_blob(blob, ours[blob], theirs[blob], tolerance) for blob in theirs]


@dataclass(frozen=True)
class Trace:
    """Where two runs part: the first blob (in graph order) that differs, the last one that
    agrees before it, and how many were compared."""

    first_divergent: BlobCheck | None
    last_agreeing: BlobCheck | None
    compared: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "first_divergent": None
            if self.first_divergent is None
            else self.first_divergent.to_dict(),
            "last_agreeing": None if self.last_agreeing is None else self.last_agreeing.to_dict(),
            "compared": self.compared,
        }

    def describe(self) -> str:
        if self.first_divergent is None:
            return f"trace: all {self.compared} blobs agree with the reference"
        first = self.first_divergent
        line = f"trace: first diverging blob {first.describe()}"
        if first.written_by and first.written_by != first.blob:
            line += f", written by layer {first.written_by}"
        if self.last_agreeing is not None:
            line += f"; the blob before it, {self.last_agreeing.blob}, agrees"
        return line


def trace_points(graph: Graph) -> list[tuple[str, str, int]]:
    """(blob, layer, output index) of every layer output a trace compares, in graph order."""
    return [(top, node.name, index) for node in graph.nodes for index, top in enumerate(node.tops)]


def trace(
    ours: Mapping[str, Sequence[np.ndarray]],
    theirs: Mapping[str, Sequence[np.ndarray]],
    points: Sequence[tuple[str, str, int]],
    *,
    tolerance: float = BLOB_TOLERANCE,
) -> Trace:
    """Walk `points` (blob, layer, index) over both runs' layer outputs and stop at the first
    that differs."""
    last: BlobCheck | None = None
    compared = 0
    for blob, layer, index in points:
        check = compare_blob(blob, ours[layer][index], theirs[layer][index], tolerance, layer)
        compared += 1
        if not check.passed:
            return Trace(check, last, compared)
        last = check
    return Trace(None, last, compared)


__all__ = [
    "BLOB_TOLERANCE",
    "BlobCheck",
    "Trace",
    "compare_blob",
    "compare_blobs",
    "opencv_blobs",
    "trace",
    "trace_points",
    "writers",
]
