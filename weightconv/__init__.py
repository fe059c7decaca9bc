"""weightconv: move neural-network weights between Caffe, .npy, TensorFlow and Keras files.

Example::

    import weightconv
    ws = weightconv.load("lenet.caffemodel", prototxt="lenet.prototxt")
    weightconv.save(ws, "lenet.npy")
    weightconv.convert("lenet.caffemodel", "lenet.npy", prototxt="lenet.prototxt")
"""

from __future__ import annotations

import os
from typing import Any

from weightconv import formats
from weightconv.errors import (
    CheckFailed,
    FormatError,
    MappingError,
    OutputExistsError,
    ShapeError,
    UnsafeInputError,
    UsageError,
    WeightconvError,
)
from weightconv.model import Kind, Layer, Provenance, WeightSet

__version__ = "0.1.0"

__all__ = [
    "CheckFailed",
    "FormatError",
    "Kind",
    "Layer",
    "MappingError",
    "OutputExistsError",
    "Provenance",
    "ShapeError",
    "UnsafeInputError",
    "UsageError",
    "WeightSet",
    "WeightconvError",
    "convert",
    "load",
    "save",
]


def load(path: str | os.PathLike[str], *, format: str | None = None,
         **options: Any) -> WeightSet:
    """Read any supported weight file into a WeightSet.

    Args:
        path: the weight file.
        format: a format name from `weightconv formats`; detected from content when None.
        **options: reader options, e.g. ``prototxt=``, ``input_shape=(3, 227, 227)``,
            ``trust_pickle=True``.

    Example::

        ws = weightconv.load("bvlc_alexnet.npy")
        W, b = ws["conv1"].tensors["weights"], ws["conv1"].tensors["biases"]
    """
    return formats.detect(path, format).read(path, **options)


def save(weights: WeightSet, path: str | os.PathLike[str], *, format: str | None = None,
         force: bool = False, **options: Any) -> dict[str, Any]:
    """Write a WeightSet; the format follows from the suffix unless `format` is given.

    Returns a summary (tensors, parameters, bytes, ...). Refuses to overwrite an
    existing file unless `force`; never leaves a partial file behind.

    Example::

        summary = weightconv.save(ws, "alexnet.npy")
    """
    return formats.for_output(path, format).write(weights, path, force=force, **options)


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
            src_format: str | None = None, dst_format: str | None = None,
            force: bool = False, **options: Any) -> dict[str, Any]:
    """Read `src` and write it to `dst`: `save(load(src), dst)` with options passed to both.

    Example::

        weightconv.convert("lenet.caffemodel", "lenet.npy", prototxt="lenet.prototxt")
    """
    target = formats.for_output(dst, dst_format)
    weights = load(src, format=src_format, **options)
    return target.write(weights, dst, force=force, **options)
