"""Caffe: `.caffemodel` (V0, V1, V2) and HDF5 snapshots, with the net definition and Caffe's
shape arithmetic (`net`). The read options are declared here, apart from the readers, so that
the registry can list them without importing protobuf or h5py."""

from __future__ import annotations

import os
from dataclasses import dataclass

from weightconv._util.text import parse_shape
from weightconv.formats.base import Options, option


@dataclass(frozen=True)
class CaffeReadOptions(Options):
    prototxt: str | os.PathLike[str] | None = option(
        None,
        metavar="P",
        help="the net definition (deploy .prototxt): layer kinds, order and "
        "the blob shapes that fix fully-connected layers' row order",
    )
    input_shape: tuple[int, ...] | None = option(
        None,
        metavar="C,H,W",
        parse=parse_shape,
        help="the net's input size when the net definition does not give it",
    )
