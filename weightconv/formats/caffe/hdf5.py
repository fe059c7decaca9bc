"""Caffe's HDF5 snapshots (`.caffemodel.h5`): groups `data/<layer>/<blob index>`.

The file holds only blobs; layer types, order and shapes come from the prototxt.
Without one, layers are listed in the file's (alphabetical) order and their kinds
follow from the blob ranks, which is enough to inspect; a fully-connected layer is then
converted only where its input shape is known (never, as the order says nothing about
which layer feeds which).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from weightconv._util.hdf5 import check_dataset, guard
from weightconv.errors import FormatError, UsageError, WeightconvError
from weightconv.formats.caffe import net as caffe_net
from weightconv.formats.caffe.assemble import RawLayer, assemble
from weightconv.formats.caffe.net import LayerDef, NetDef
from weightconv.model import WeightSet

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def sniff(head: bytes, path: Path) -> bool:
    if not head.startswith(HDF5_MAGIC):
        return False
    import h5py

    try:
        with guard(path, "HDF5 structure"), h5py.File(path, "r") as handle:
            return is_caffe_snapshot(handle)
    except (OSError, WeightconvError):
        return False


def is_caffe_snapshot(handle: Any) -> bool:
    """Caffe's layout: a `data` group of layer groups whose members are named 0, 1, ..."""
    import h5py

    group = handle.get("data")
    if not isinstance(group, h5py.Group) or "layer_names" in handle.attrs:
        return False
    for layer in group.values():
        if not isinstance(layer, h5py.Group) or not all(key.isdigit() for key in layer):
            return False
    return True


def _blob(group: Any, key: str, source: Path, file_size: int) -> np.ndarray:
    """One blob, its declared size checked against its storage before it is read."""
    import h5py

    with guard(source, f"dataset {group.name}/{key}"):
        dataset = group.get(key)
        if not isinstance(dataset, h5py.Dataset):
            raise FormatError(
                f"{source}: {group.name}/{key}: expected a blob dataset, found "
                f"{type(dataset).__name__}"
            )
        check_dataset(dataset, source, file_size)
        return np.asarray(dataset[()])


def read(
    path: str | os.PathLike[str],
    *,
    prototxt: str | os.PathLike[str] | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> WeightSet:
    """Read a Caffe HDF5 snapshot into a WeightSet in Caffe layout, like a .caffemodel."""
    import h5py

    source = Path(path)
    if not source.exists():
        raise UsageError(f"{source}: no such file")
    try:
        handle = h5py.File(source, "r")
    except OSError as exc:
        raise FormatError(f"{source}: not a readable HDF5 file ({exc})") from None
    with handle:
        with guard(source, "HDF5 structure under /data"):
            if not is_caffe_snapshot(handle):
                raise FormatError(
                    f"{source}: not a Caffe HDF5 snapshot (no data/<layer>/<n> groups)"
                )
            layers = list(handle["data"].items())
        file_size = source.stat().st_size
        raw_layers = []
        for name, group in layers:
            with guard(source, f"group {group.name}"):
                keys = sorted(group, key=int)
            blobs = [_blob(group, key, source, file_size) for key in keys]
            rank = blobs[0].ndim if blobs else 0
            layer_type = {4: "Convolution", 2: "InnerProduct"}.get(rank, "Unknown")
            raw_layers.append(RawLayer(LayerDef(name=name, type=layer_type), blobs))
    notes: list[str] = []
    deploy_net = None
    if prototxt is not None:
        deploy_net, prototxt_notes = caffe_net.read_net_def(prototxt)
        notes.extend(prototxt_notes)
    else:
        notes.append(
            f"{source.name}: no prototxt; layers in the file's order with kinds "
            f"taken from blob ranks (4-D convolution, 2-D inner product)"
        )
    model_net = NetDef(name="", encoding="HDF5", layers=[raw.definition for raw in raw_layers])
    detail = {"encoding": "HDF5", "prototxt": str(prototxt) if prototxt is not None else None}
    return assemble(
        source,
        "caffe-h5",
        raw_layers,
        model_net,
        deploy_net,
        input_shape,
        notes,
        detail,
        in_net_order=False,
    )
