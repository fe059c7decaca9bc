"""Mutations as JSON-able dicts: chosen from a seeded RNG, applied to a seed's bytes.

A mutation is either ``{"kind": "bytes", "ops": [...]}`` (truncate, flip, write, insert,
delete, splice; each op names its offset and bytes) or ``{"kind": "struct", "name": ...,
"params": {...}}``, a structure-aware rewrite (a protobuf with lying lengths, a checkpoint
entry declaring a huge shape, an HDF5 dataset of 2**40 rows, a deflate bomb, ...). `choose`
picks one for an input; `apply` rebuilds the same bytes from the seed and the dict, so a
recorded mutation replays exactly.
"""

from __future__ import annotations

import io
import json
import pickletools
import random
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

INTERESTING = [
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\xff\xff\xff\x7f",
    b"\x00\x00\x00\x80",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # the largest 10-byte varint
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # an over-long varint
    struct.pack("<Q", 1 << 62),
    struct.pack("<q", -1),
    struct.pack("<f", float("nan")),
    struct.pack("<f", float("inf")),
    struct.pack("<I", 0x7FFFFFFF),
]
HUGE = [1 << 62, 1 << 40, (1 << 31) - 1, 1 << 32, (1 << 63) - 1]


def _offset(rng: random.Random, size: int) -> int:
    if size <= 0:
        return 0
    r = rng.random()
    if r < 0.4:
        return rng.randrange(min(size, 256))
    if r < 0.55:
        return max(0, size - 1 - rng.randrange(min(size, 64)))
    return rng.randrange(size)


def choose_ops(rng: random.Random, data: bytes, others: list[str]) -> list[list[Any]]:
    """One to three byte-level operations, as lists (kind, offset, ...)."""
    ops: list[list[Any]] = []
    size = len(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kinds = ["truncate", "flip", "flip", "write", "write", "insert", "delete"]
        if others:
            kinds.append("splice")
        kind = rng.choice(kinds)
        if kind == "truncate":
            ops.append(["truncate", size * rng.randrange(16) // 16])
        elif kind == "flip":
            ops.append(["flip", _offset(rng, size), rng.randrange(8)])
        elif kind == "write":
            value = (
                rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 8))
            )
            ops.append(["write", _offset(rng, size), value.hex()])
        elif kind == "insert":
            value = (
                rng.choice(INTERESTING) if rng.random() < 0.4 else rng.randbytes(rng.randint(1, 16))
            )
            ops.append(["insert", _offset(rng, size), value.hex()])
        elif kind == "delete":
            ops.append(["delete", _offset(rng, size), rng.randint(1, 64)])
        else:
            other = rng.choice(others)
            ops.append(["splice", other, _offset(rng, size), rng.randrange(1 << 20)])
    return ops


def apply_ops(data: bytes, ops: list[list[Any]], seeds_root: Path) -> bytes:
    buf = bytearray(data)
    for op in ops:
        kind = op[0]
        if kind == "truncate":
            del buf[op[1] :]
        elif kind == "flip":
            if buf:
                buf[op[1] % len(buf)] ^= 1 << op[2]
        elif kind == "write":
            value = bytes.fromhex(op[2])
            at = op[1] % (len(buf) + 1)
            buf[at : at + len(value)] = value
        elif kind == "insert":
            at = op[1] % (len(buf) + 1)
            buf[at:at] = bytes.fromhex(op[2])
        elif kind == "delete":
            at = op[1] % (len(buf) + 1)
            del buf[at : at + op[2]]
        elif kind == "splice":
            other = (seeds_root / op[1]).read_bytes()
            at = op[1 + 1] % (len(buf) + 1)
            buf = buf[:at] + other[op[3] % (len(other) + 1) :]
        else:
            raise ValueError(f"unknown op {kind}")
    return bytes(buf)


# --- protobuf helpers -------------------------------------------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def ld(field: int, payload: bytes, claimed: int | None = None) -> bytes:
    """A length-delimited field whose length prefix may lie (`claimed`)."""
    length = len(payload) if claimed is None else claimed
    return varint(field << 3 | 2) + varint(length) + payload


def vf(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


# --- structure-aware mutations: choose(rng, data) -> params; apply(data, params, ctx) -> bytes


class Ctx:
    """Where a structure-aware mutation may read other seed files and write scratch files."""

    def __init__(self, seeds_root: Path, scratch: Path) -> None:
        self.seeds_root = seeds_root
        self.scratch = scratch


def _caffe_blobs(data: bytes) -> tuple[Any, list[tuple[str, int, int]]]:
    from weightconv._proto import caffe_pb2

    net = caffe_pb2.NetParameter.FromString(data)
    where = [("layer", i, j) for i, layer in enumerate(net.layer) for j in range(len(layer.blobs))]
    where += [
        ("layers", i, j) for i, layer in enumerate(net.layers) for j in range(len(layer.blobs))
    ]
    return net, where


def choose_caffe_huge_dims(rng: random.Random, data: bytes) -> dict[str, Any]:
    _, where = _caffe_blobs(data)
    dims = rng.choice(
        [
            [1 << 62, 4],
            [1 << 31, 1 << 31],
            [-1, 4],
            [0],
            [1 << 40],
            [1] * 40,
            [3, 1 << 61, 8],
            [(1 << 63) - 1],
            [],
        ]
    )
    return {"blob": list(rng.choice(where)) if where else None, "dims": dims}


def apply_caffe_huge_dims(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    net, _ = _caffe_blobs(data)
    if params["blob"] is None:
        return data
    group, i, j = params["blob"]
    blob = getattr(net, group)[i].blobs[j]
    blob.ClearField("num")
    blob.ClearField("channels")
    blob.ClearField("height")
    blob.ClearField("width")
    blob.shape.ClearField("dim")
    blob.shape.dim.extend(params["dims"])
    if not params["dims"]:
        blob.ClearField("shape")
    return bytes(net.SerializeToString())


def choose_caffe_v1_huge_nchw(rng: random.Random, data: bytes) -> dict[str, Any]:
    _, where = _caffe_blobs(data)
    big = (1 << 31) - 1
    nchw = rng.choice([[big, big, big, big], [1, 1, big, 4], [-1, 1, 1, 4], [0, 0, 0, 0]])
    return {"blob": list(rng.choice(where)) if where else None, "nchw": nchw}


def apply_caffe_v1_huge_nchw(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    net, _ = _caffe_blobs(data)
    if params["blob"] is None:
        return data
    group, i, j = params["blob"]
    blob = getattr(net, group)[i].blobs[j]
    blob.ClearField("shape")
    blob.num, blob.channels, blob.height, blob.width = params["nchw"]
    return bytes(net.SerializeToString())


def choose_caffe_lying_packed(rng: random.Random, data: bytes) -> dict[str, Any]:
    try:
        net, _ = _caffe_blobs(data)
        v1 = len(net.layers) > 0
    except Exception:
        v1 = False
    return {
        "v1": v1,
        "floats": rng.choice([0, 1, 4, 20]),
        "claimed": rng.choice([1 << 31, 1 << 62, (1 << 64) - 1, len(data) + 4, 84, 3]),
        "lie": rng.choice(["data", "blob", "layer", "all"]),
        "append": rng.random() < 0.5,
        "dims": rng.choice([[5], [1, 5], [2, 2, 5]]),
        "double": rng.random() < 0.2,
    }


def apply_caffe_lying_packed(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    lie, claimed = params["lie"], params["claimed"]
    values = np.arange(params["floats"], dtype="<f8" if params["double"] else "<f4").tobytes()
    packed = b"".join(varint(d) for d in params["dims"])
    payload = ld(8 if params["double"] else 5, values, claimed if lie in ("data", "all") else None)
    if params["v1"]:
        blob = b"".join(
            vf(n, d) for n, d in zip((1, 2, 3, 4), [1, 1, 1, *params["dims"]][-4:], strict=True)
        )
        blob += payload
        layer = (
            ld(4, b"conv1") + vf(5, 4) + ld(6, blob, claimed if lie in ("blob", "all") else None)
        )
        net = ld(2, layer, claimed if lie in ("layer", "all") else None)
    else:
        blob = ld(7, ld(1, packed)) + payload
        layer = ld(1, b"conv1") + ld(2, b"Convolution")
        layer += ld(7, blob, claimed if lie in ("blob", "all") else None)
        net = ld(100, layer, claimed if lie in ("layer", "all") else None)
    return (data + net) if params["append"] else ld(1, b"fuzz") + net


def _table_items(data: bytes, ctx: Ctx) -> list[tuple[bytes, bytes]]:
    from weightconv.codecs import sstable

    path = ctx.scratch / "table.in"
    path.write_bytes(data)
    with sstable.TableReader(path, mapped=False) as table:
        return [(bytes(k), bytes(v)) for k, v in table.items()]


def _table_bytes(items: list[tuple[bytes, bytes]]) -> bytes:
    from weightconv.codecs import sstable

    out = io.BytesIO()
    table = sstable.TableWriter(out)
    for key, value in sorted(items):
        table.add(key, value)
    table.finish()
    return out.getvalue()


def choose_ckpt_entry_lie(rng: random.Random, data: bytes) -> dict[str, Any]:
    field = rng.choice(["shape", "size", "offset", "shard_id", "dtype", "crc32c", "slices"])
    value: Any
    if field == "shape":
        value = rng.choice([[1 << 62, 4], [-5], [1 << 31] * 3, [0, 7], [1] * 70, [-1]])
    elif field == "dtype":
        value = rng.choice([0, 7, 20, 21, 99, 1 << 20, 14, 23])
    elif field == "shard_id":
        value = rng.choice([1, 5, (1 << 31) - 1, -1])
    elif field == "crc32c":
        value = rng.randrange(1 << 32)
    elif field == "slices":
        value = rng.choice([[[0, 1 << 62]], [[-3, 2]], [[0, -1], [5, 5]]])
    else:
        value = rng.choice([*HUGE, -1, 0, 1, 3])
    return {"entry": rng.randrange(1 << 16), "field": field, "value": value}


def apply_ckpt_entry_lie(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    from weightconv._proto import tf_checkpoint_pb2 as pb

    items = _table_items(data, ctx)
    keys = [i for i, (k, _) in enumerate(items) if k]
    if not keys:
        return data
    index = keys[params["entry"] % len(keys)]
    key, value = items[index]
    field, new = params["field"], params["value"]
    if key and items[0][0] == b"" and _is_v1(items):
        return data  # a V1 table: see ckpt_v1_lie
    entry = pb.BundleEntryProto.FromString(value)
    if field == "shape":
        entry.shape.ClearField("dim")
        for d in new:
            entry.shape.dim.add().size = d
    elif field == "slices":
        entry.ClearField("slices")
        piece = entry.slices.add()
        for start, length in new:
            extent = piece.extent.add()
            extent.start = start
            extent.length = length
    else:
        setattr(entry, field, new)
    items[index] = (key, entry.SerializeToString())
    return _table_bytes(items)


def _is_v1(items: list[tuple[bytes, bytes]]) -> bool:
    from weightconv._proto import tf_checkpoint_pb2 as pb

    try:
        meta = pb.SavedTensorSlices.FromString(items[0][1])
    except Exception:
        return False
    return len(meta.meta.tensor) > 0


def choose_ckpt_header_lie(rng: random.Random, data: bytes) -> dict[str, Any]:
    field = rng.choice(["num_shards", "endianness", "producer", "min_consumer", "bad_consumers"])
    value = {
        "num_shards": rng.choice([0, 2, 10**9, (1 << 31) - 1, -1]),
        "endianness": rng.choice([1, 7]),
        "producer": rng.choice([0, 1 << 30]),
        "min_consumer": rng.choice([1 << 30, 5]),
        "bad_consumers": rng.choice([[0], [1], list(range(1000))]),
    }[field]
    return {"field": field, "value": value}


def apply_ckpt_header_lie(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    from weightconv._proto import tf_checkpoint_pb2 as pb

    items = _table_items(data, ctx)
    if not items or items[0][0] != b"":
        return data
    header = pb.BundleHeaderProto.FromString(items[0][1])
    field, value = params["field"], params["value"]
    if field in ("producer", "min_consumer"):
        setattr(header.version, field, value)
    elif field == "bad_consumers":
        header.version.bad_consumers.extend(value)
    else:
        setattr(header, field, value)
    items[0] = (b"", header.SerializeToString())
    return _table_bytes(items)


def choose_ckpt_v1_lie(rng: random.Random, data: bytes) -> dict[str, Any]:
    what = rng.choice(
        [
            "meta_shape",
            "meta_extent",
            "meta_type",
            "data_shape",
            "data_values",
            "data_content",
            "data_name",
            "drop_slice",
        ]
    )
    return {
        "what": what,
        "tensor": rng.randrange(1 << 16),
        "dims": rng.choice([[1 << 62, 4], [-3], [1 << 31, 1 << 31], [2, 2]]),
        "extent": rng.choice([[0, 1 << 62], [-5, 3], [1 << 62, 1], [0, 0]]),
        "type": rng.choice([0, 7, 20, 99, 2, 9, 14]),
        "count": rng.choice([0, 1, 3, 10000]),
    }


def apply_ckpt_v1_lie(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    from weightconv._proto import tf_checkpoint_pb2 as pb

    items = _table_items(data, ctx)
    if not items or items[0][0] != b"" or not _is_v1(items):
        return data
    meta = pb.SavedTensorSlices.FromString(items[0][1])
    what = params["what"]
    tensors = meta.meta.tensor
    t = tensors[params["tensor"] % len(tensors)]
    records = [i for i, (k, _) in enumerate(items) if k]
    if what.startswith("meta"):
        if what == "meta_shape":
            t.shape.ClearField("dim")
            for d in params["dims"]:
                t.shape.dim.add().size = d
        elif what == "meta_extent":
            piece = t.slice[0] if t.slice else t.slice.add()
            piece.ClearField("extent")
            extent = piece.extent.add()
            extent.start, extent.length = params["extent"]
        else:
            t.type = params["type"]
        items[0] = (b"", meta.SerializeToString())
        return _table_bytes(items)
    if not records:
        return data
    index = records[params["tensor"] % len(records)]
    key, value = items[index]
    if what == "drop_slice":
        del items[index]
        return _table_bytes(items)
    record = pb.SavedTensorSlices.FromString(value)
    tensor = record.data.data
    if what == "data_shape":
        tensor.tensor_shape.ClearField("dim")
        for d in params["dims"]:
            tensor.tensor_shape.dim.add().size = d
    elif what == "data_values":
        del tensor.float_val[:]
        tensor.float_val.extend([1.0] * params["count"])
    elif what == "data_content":
        tensor.tensor_content = bytes(params["count"] * 4 + 1)
    else:
        record.data.name = "no_such_tensor"
    items[index] = (key, record.SerializeToString())
    return _table_bytes(items)


def _h5_paths(path: Path) -> tuple[list[str], list[str]]:
    import h5py

    datasets: list[str] = []
    groups: list[str] = []
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, obj: (datasets if isinstance(obj, h5py.Dataset) else groups).append(name)
        )
    return sorted(datasets), sorted(groups)


def choose_h5_huge_dataset(rng: random.Random, data: bytes) -> dict[str, Any]:
    return {
        "pick": rng.randrange(1 << 16),
        "shape": rng.choice([[1 << 40, 4], [1 << 31, 1 << 31], [1 << 50], [1 << 20, 1 << 20, 16]]),
        "chunked": rng.random() < 0.7,
        "fill": rng.choice([0.0, 1.0, float("nan")]),
        "dtype": rng.choice(["<f4", "<f8", "<f2"]),
    }


def _h5_edit(data: bytes, ctx: Ctx, edit: Callable[[Any, list[str], list[str]], None]) -> bytes:
    import h5py

    path = ctx.scratch / "edit.h5"
    path.write_bytes(data)
    datasets, groups = _h5_paths(path)
    with h5py.File(path, "r+") as handle:
        edit(handle, datasets, groups)
    return path.read_bytes()


def apply_h5_huge_dataset(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    def edit(handle: Any, datasets: list[str], groups: list[str]) -> None:
        if not datasets:
            return
        name = datasets[params["pick"] % len(datasets)]
        del handle[name]
        shape = tuple(params["shape"])
        chunks = (1,) * (len(shape) - 1) + (min(shape[-1], 1024),) if params["chunked"] else None
        handle.create_dataset(
            name, shape=shape, dtype=params["dtype"], chunks=chunks, fillvalue=params["fill"]
        )

    return _h5_edit(data, ctx, edit)


def choose_h5_odd_dataset(rng: random.Random, data: bytes) -> dict[str, Any]:
    return {
        "pick": rng.randrange(1 << 16),
        "what": rng.choice(
            [
                "string",
                "vlen",
                "compound",
                "int64",
                "bool",
                "complex",
                "scalar",
                "empty",
                "group",
                "external_missing",
                "external_self",
                "soft_loop",
                "dangling",
                "ext_link",
                "zero_dim",
                "enum",
                "reference",
                "big_endian",
                "null_space",
            ]
        ),
    }


def apply_h5_odd_dataset(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    import h5py

    unlimited = h5py.h5f.UNLIMITED

    def edit(handle: Any, datasets: list[str], groups: list[str]) -> None:
        if not datasets:
            return
        name = datasets[params["pick"] % len(datasets)]
        old = handle[name]
        shape, what = old.shape, params["what"]
        del handle[name]
        if what == "string":
            handle.create_dataset(name, data=np.array([b"abc"] * max(1, int(np.prod(shape)))))
        elif what == "vlen":
            handle.create_dataset(name, shape=(2,), dtype=h5py.vlen_dtype(np.float32))
        elif what == "compound":
            handle.create_dataset(name, shape=shape, dtype=[("a", "<f4"), ("b", "<i4")])
        elif what == "int64":
            handle.create_dataset(name, shape=shape, dtype="<i8")
        elif what == "bool":
            handle.create_dataset(name, shape=shape, dtype=bool)
        elif what == "complex":
            handle.create_dataset(name, shape=shape, dtype="<c8")
        elif what == "scalar":
            handle.create_dataset(name, data=np.float32(3))
        elif what == "empty":
            handle.create_dataset(name, data=h5py.Empty("f4"))
        elif what == "null_space":
            handle.create_dataset(name, shape=None, dtype="f4")
        elif what == "zero_dim":
            handle.create_dataset(name, shape=(0, *shape[1:]), dtype="<f4")
        elif what == "group":
            handle.create_group(name)
        elif what == "external_missing":
            handle.create_dataset(
                name, shape=shape, dtype="<f4", external=[("/nonexistent/fuzz.bin", 0, unlimited)]
            )
        elif what == "external_self":
            handle.create_dataset(
                name, shape=shape, dtype="<f4", external=[("/proc/self/cmdline", 0, unlimited)]
            )
        elif what == "soft_loop":
            handle[name] = h5py.SoftLink("/" + name)
        elif what == "dangling":
            handle[name] = h5py.SoftLink("/no/such/object")
        elif what == "ext_link":
            handle[name] = h5py.ExternalLink("/nonexistent.h5", "/x")
        elif what == "enum":
            handle.create_dataset(name, shape=shape, dtype=h5py.enum_dtype({"A": 0, "B": 1}))
        elif what == "reference":
            handle.create_dataset(name, shape=(1,), dtype=h5py.ref_dtype)
        elif what == "big_endian":
            handle.create_dataset(name, shape=shape, dtype=">f4")

    return _h5_edit(data, ctx, edit)


def choose_h5_attr_garbage(rng: random.Random, data: bytes) -> dict[str, Any]:
    return {
        "pick": rng.randrange(1 << 16),
        "attr": rng.choice(["layer_names", "weight_names", "keras_version", "backend", "name"]),
        "value": rng.choice(
            ["ints", "huge_list", "missing_names", "dupes", "empty", "bytes", "nested", "float"]
        ),
    }


def apply_h5_attr_garbage(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    def edit(handle: Any, datasets: list[str], groups: list[str]) -> None:
        places = ["", *groups]
        where = places[params["pick"] % len(places)]
        obj = handle[where] if where else handle
        value: Any = {
            "ints": np.arange(5),
            "huge_list": np.array([b"x%d" % i for i in range(20000)]),
            "missing_names": np.array([b"no_such_layer", b"nor_this"]),
            "dupes": np.array([b"dense", b"dense", b"dense"]),
            "empty": np.array([], dtype="S1"),
            "bytes": np.void(b"\x00\xff" * 8),
            "nested": np.array([[b"a", b"b"], [b"c", b"d"]]),
            "float": 1.5,
        }[params["value"]]
        obj.attrs[params["attr"]] = value

    return _h5_edit(data, ctx, edit)


def _npy_split(data: bytes) -> tuple[bytes, int, bytes, bytes]:
    """(version bytes, header-length size, header text, rest) of an .npy file."""
    version = data[6:8]
    size = 2 if version[:1] == b"\x01" else 4
    length = int.from_bytes(data[8 : 8 + size], "little")
    return version, size, data[8 + size : 8 + size + length], data[8 + size + length :]


NPY_HEADERS = [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }",
    "{'descr': '|O', 'fortran_order': True, 'shape': (), }",
    "{'descr': '|O', 'fortran_order': False, 'shape': (-1,), }",
    "{'descr': '|O', 'fortran_order': False, 'shape': (1, 2), }",
    "{'descr': [('a', '<f4'), ('b', '|O')], 'fortran_order': False, 'shape': (), }",
    "__import__('os').system('true')",
    "{'descr': '|O', 'fortran_order': False, 'shape': (), 'extra': 1, }",
    "{'descr': '|O'",
    "{" + "(" * 300 + ")" * 300 + "}",
    "{'descr': '<U99999999999', 'fortran_order': False, 'shape': (), }",
    "{'descr': '|O', 'fortran_order': 'yes', 'shape': (), }",
    "{'descr': '|O', 'fortran_order': False, 'shape': 5, }",
    "{'descr': 'O', 'fortran_order': False, 'shape': (2.5,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }",
    "{'descr': 'V99999999', 'fortran_order': False, 'shape': (), }",
    "{'descr': '|O', 'fortran_order': False, 'shape': (), } " + "x" * 70000,
    "[1, 2, 3]",
    "{1: 2}",
    "{'descr': '\\x00', 'fortran_order': False, 'shape': (), }",
]


def choose_npy_header_garbage(rng: random.Random, data: bytes) -> dict[str, Any]:
    return {
        "header": rng.randrange(len(NPY_HEADERS)),
        "length": rng.choice(["honest", "honest", "honest", "huge", "short", "zero"]),
        "version": rng.choice(["keep", "keep", "keep", "0100", "0200", "0300", "0909"]),
    }


def apply_npy_header_garbage(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    version, size, _, rest = _npy_split(data)
    if params["version"] != "keep":
        version = bytes.fromhex(params["version"])
        size = 2 if version[:1] == b"\x01" else 4
    text = NPY_HEADERS[params["header"]].encode("latin1")
    total = 8 + size + len(text) + 1
    text += b" " * ((-total) % 64) + b"\n"
    length = {
        "honest": len(text),
        "huge": (1 << (8 * size)) - 1,
        "short": len(text) // 2,
        "zero": 0,
    }[params["length"]]
    if size == 2 and length >= 1 << 16:
        length = 0xFFFF
    return b"\x93NUMPY" + version + length.to_bytes(size, "little") + text + rest


def _pickle_ops(data: bytes) -> tuple[int, list[tuple[str, int, Any]]]:
    _, size, header, _ = _npy_split(data)
    start = 8 + size + len(header)
    ops = []
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(data[start:])):
            ops.append((op.name, start + (pos or 0), arg))
    except Exception:
        pass
    return start, ops


_LENGTH_OPS = {
    "BINBYTES": 4,
    "BINBYTES8": 8,
    "SHORT_BINBYTES": 1,
    "BINUNICODE": 4,
    "SHORT_BINUNICODE": 1,
    "BINUNICODE8": 8,
    "BINSTRING": 4,
    "SHORT_BINSTRING": 1,
    "FRAME": 8,
    "BYTEARRAY8": 8,
    "LONG1": 1,
    "LONG4": 4,
}


def choose_npy_pickle_lie(rng: random.Random, data: bytes) -> dict[str, Any]:
    return {
        "pick": rng.randrange(1 << 16),
        "how": rng.choice(
            [
                "length_huge",
                "length_plus",
                "length_minus",
                "length_zero",
                "global",
                "int_huge",
                "drop_stop",
                "memo",
            ]
        ),
        "global": rng.choice(
            [
                "os system",
                "builtins eval",
                "numpy frombuffer",
                "numpy.core.multiarray scalar",
                "collections OrderedDict",
                "numpy dtype",
                "_codecs encode",
                "numpy.random _pickle",
            ]
        ),
        "int": rng.choice([1 << 62, -1, (1 << 31) - 1, 0, 1 << 100]),
    }


def apply_npy_pickle_lie(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    _, ops = _pickle_ops(data)
    how = params["how"]
    buf = bytearray(data)
    if how.startswith("length"):
        found = [(n, p) for n, p, _ in ops if n in _LENGTH_OPS]
        if not found:
            return data
        name, pos = found[params["pick"] % len(found)]
        width = _LENGTH_OPS[name]
        old = int.from_bytes(buf[pos + 1 : pos + 1 + width], "little")
        limit = (1 << (8 * width)) - 1
        new = {
            "length_huge": limit,
            "length_plus": min(old + 1, limit),
            "length_minus": max(old - 1, 0),
            "length_zero": 0,
        }[how]
        buf[pos + 1 : pos + 1 + width] = new.to_bytes(width, "little")
        return bytes(buf)
    if how == "global":
        globals_ = [(n, p, a) for n, p, a in ops if n in ("GLOBAL", "STACK_GLOBAL")]
        module, name = params["global"].split()
        for n, p, a in globals_:
            if n == "GLOBAL":  # its argument is "module name": one byte shorter than on disk
                end = p + 1 + len(a.encode()) + 1
                buf[p:end] = b"c" + f"{module}\n{name}\n".encode()
                return bytes(buf)
        return data
    if how == "int_huge":
        ints = [(n, p) for n, p, _ in ops if n in ("BININT1", "BININT2", "BININT")]
        if not ints:
            return data
        n, p = ints[params["pick"] % len(ints)]
        width = {"BININT1": 1, "BININT2": 2, "BININT": 4}[n]
        value = params["int"]
        body = value.to_bytes((value.bit_length() + 8) // 8 or 1, "little", signed=True)
        buf[p : p + 1 + width] = b"\x8a" + bytes([len(body)]) + body
        return bytes(buf)
    if how == "drop_stop":
        stops = [p for n, p, _ in ops if n == "STOP"]
        return bytes(buf[: stops[-1]]) if stops else data
    found = [(n, p) for n, p, _ in ops if n in ("BINGET", "LONG_BINGET")]
    if not found:
        return data
    n, p = found[params["pick"] % len(found)]
    buf[p + 1] = (buf[p + 1] + 17) % 256
    return bytes(buf)


def choose_snappy_lie(rng: random.Random, data: bytes) -> dict[str, Any]:
    declared = rng.choice([0, 1, 10, 64, 200, 1 << 20, (1 << 32) - 1])
    out = bytearray(varint(declared) if rng.random() < 0.9 else b"\xff\xff\xff\xff\xff\x0f")
    produced = 0
    for _ in range(rng.randint(1, 6)):
        kind = rng.choice(["lit", "lit_long", "copy1", "copy2", "copy4", "junk"])
        if kind == "lit":
            n = rng.randint(1, 60)
            out.append((n - 1) << 2)
            out += rng.randbytes(rng.choice([n, n - 1, 0]))
            produced += n
        elif kind == "lit_long":
            extra = rng.randint(1, 4)
            n = rng.choice([61, 300, 1 << 20, (1 << 32) - 1]) & ((1 << (8 * extra)) - 1)
            out.append((59 + extra) << 2)
            out += (n - 1 if n else 0).to_bytes(extra, "little")
            out += rng.randbytes(min(n, 64))
        elif kind == "copy1":
            length = rng.randint(4, 11)
            offset = rng.choice([0, 1, produced, produced + 1, 2047])
            out.append(1 | ((length - 4) << 2) | ((offset >> 8) << 5))
            out.append(offset & 0xFF)
        elif kind in ("copy2", "copy4"):
            length = rng.randint(1, 64)
            offset = rng.choice([0, 1, produced, produced + 5, 65535])
            out.append((2 if kind == "copy2" else 3) | ((length - 1) << 2))
            out += offset.to_bytes(2 if kind == "copy2" else 4, "little")
        else:
            out += rng.randbytes(rng.randint(1, 4))
    return {"hex": bytes(out).hex(), "prefix": rng.random() < 0.3}


def apply_snappy_lie(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    raw = bytes.fromhex(params["hex"])
    return data + raw[1:] if params["prefix"] else raw


def _zip_members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(i.filename, archive.read(i)) for i in archive.infolist()]


def _zip(members: list[tuple[str, bytes]], deflate: bool) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, body in members:
            info = zipfile.ZipInfo(name, (2025, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            archive.writestr(info, body)
    return out.getvalue()


def _choose_member(rng: random.Random, data: bytes, member: str) -> dict[str, Any]:
    members = dict(_zip_members(data))
    body = members.get(member, b"")
    return {
        "member": member,
        "ops": choose_ops(rng, body, []),
        "deflate": rng.random() < 0.3,
        "drop": rng.random() < 0.05,
    }


def choose_zip_member_config(rng: random.Random, data: bytes) -> dict[str, Any]:
    return _choose_member(rng, data, rng.choice(["config.json", "config.json", "metadata.json"]))


def choose_zip_member_h5(rng: random.Random, data: bytes) -> dict[str, Any]:
    return _choose_member(rng, data, "model.weights.h5")


def apply_zip_member(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    members = []
    for name, body in _zip_members(data):
        if name == params["member"]:
            if params["drop"]:
                continue
            body = apply_ops(body, params["ops"], ctx.seeds_root)
        members.append((name, body))
    return _zip(members, params["deflate"])


def choose_text_numbers_config(rng: random.Random, data: bytes) -> dict[str, Any]:
    members = dict(_zip_members(data))
    return {"text": choose_text_numbers(rng, members.get("config.json", b""))}


def apply_text_numbers_config(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    members = [
        (n, apply_text_numbers(b, params["text"], ctx) if n == "config.json" else b)
        for n, b in _zip_members(data)
    ]
    return _zip(members, False)


def choose_zip_size_lie(rng: random.Random, data: bytes) -> dict[str, Any]:
    return {
        "member": rng.choice(["model.weights.h5", "config.json"]),
        "field": rng.choice(["usize", "csize", "offset", "crc", "method"]),
        "value": rng.choice([0, 1, 0xFFFFFFFE, 0x7FFFFFFF, 12, 99]),
        "where": rng.choice(["local", "central", "both"]),
    }


def apply_zip_size_lie(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    buf = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(params["member"]) if params["member"] in archive.namelist() else None
    if info is None:
        return data
    value, field = params["value"], params["field"]
    local = {"crc": 14, "csize": 18, "usize": 22, "method": 8}
    central = {"crc": 16, "csize": 20, "usize": 24, "method": 10, "offset": 42}
    width = 2 if field == "method" else 4
    value &= (1 << (8 * width)) - 1
    if params["where"] in ("local", "both") and field in local:
        at = info.header_offset + local[field]
        buf[at : at + width] = value.to_bytes(width, "little")
    if params["where"] in ("central", "both"):
        pos = 0
        name = params["member"].encode()
        while True:
            pos = data.find(b"PK\x01\x02", pos)
            if pos < 0:
                break
            n = int.from_bytes(data[pos + 28 : pos + 30], "little")
            if data[pos + 46 : pos + 46 + n] == name:
                at = pos + central[field]
                buf[at : at + width] = value.to_bytes(width, "little")
            pos += 4
    return bytes(buf)


def choose_zip_bomb(rng: random.Random, data: bytes) -> dict[str, Any]:
    return {}


def apply_zip_bomb(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    return (ctx.seeds_root / "_extra" / "bomb.keras").read_bytes()


_NUMBER = re.compile(rb"-?\d+(\.\d+)?(e-?\d+)?")
NUMBERS = [
    "0",
    "-1",
    "4294967296",
    "9223372036854775808",
    "1e308",
    "nan",
    "-0",
    "1.5",
    "99999999999999999999999",
    "2147483647",
    "-2147483649",
    "inf",
    "0x10",
    "1e-400",
]


def choose_text_numbers(rng: random.Random, data: bytes) -> dict[str, Any]:
    count = len(_NUMBER.findall(data)) or 1
    lines = data.count(b"\n") or 1
    return {
        "op": rng.choice(["number", "number", "number", "delete_line", "dup_line", "brace"]),
        "index": rng.randrange(count),
        "line": rng.randrange(lines),
        "value": rng.choice(NUMBERS),
    }


def apply_text_numbers(data: bytes, params: dict[str, Any], ctx: Ctx) -> bytes:
    op = params["op"]
    if op == "number":
        matches = list(_NUMBER.finditer(data))
        if not matches:
            return data
        m = matches[params["index"] % len(matches)]
        return data[: m.start()] + params["value"].encode() + data[m.end() :]
    lines = data.split(b"\n")
    i = params["line"] % len(lines)
    if op == "delete_line":
        del lines[i]
    elif op == "dup_line":
        lines.insert(i, lines[i])
    else:
        lines[i] = lines[i].replace(b"}", b"").replace(b"{", b"{{") or b"}"
    return b"\n".join(lines)


STRUCT: dict[str, tuple[Callable[..., dict[str, Any]], Callable[..., bytes]]] = {
    "caffe_huge_dims": (choose_caffe_huge_dims, apply_caffe_huge_dims),
    "caffe_v1_huge_nchw": (choose_caffe_v1_huge_nchw, apply_caffe_v1_huge_nchw),
    "caffe_lying_packed": (choose_caffe_lying_packed, apply_caffe_lying_packed),
    "ckpt_entry_lie": (choose_ckpt_entry_lie, apply_ckpt_entry_lie),
    "ckpt_header_lie": (choose_ckpt_header_lie, apply_ckpt_header_lie),
    "ckpt_v1_lie": (choose_ckpt_v1_lie, apply_ckpt_v1_lie),
    "h5_huge_dataset": (choose_h5_huge_dataset, apply_h5_huge_dataset),
    "h5_odd_dataset": (choose_h5_odd_dataset, apply_h5_odd_dataset),
    "h5_attr_garbage": (choose_h5_attr_garbage, apply_h5_attr_garbage),
    "npy_header_garbage": (choose_npy_header_garbage, apply_npy_header_garbage),
    "npy_pickle_lie": (choose_npy_pickle_lie, apply_npy_pickle_lie),
    "snappy_lie": (choose_snappy_lie, apply_snappy_lie),
    "zip_member_config": (choose_zip_member_config, apply_zip_member),
    "zip_member_h5": (choose_zip_member_h5, apply_zip_member),
    "zip_size_lie": (choose_zip_size_lie, apply_zip_size_lie),
    "zip_bomb": (choose_zip_bomb, apply_zip_bomb),
    "text_numbers": (choose_text_numbers, apply_text_numbers),
    "text_numbers_config": (choose_text_numbers_config, apply_text_numbers_config),
}
RARE = {"zip_bomb": 0.05}  # relative weight of a structure-aware mutation (default 1)


def choose(
    rng: random.Random, data: bytes, struct_names: tuple[str, ...], others: list[str]
) -> dict[str, Any]:
    """A mutation for one input: structure-aware on about a third of inputs when any apply."""
    if struct_names and rng.random() < 0.35:
        weights = [RARE.get(n, 1.0) for n in struct_names]
        name = rng.choices(struct_names, weights)[0]
        params = STRUCT[name][0](rng, data)
        return {"kind": "struct", "name": name, "params": params}
    return {"kind": "bytes", "ops": choose_ops(rng, data, others)}


def apply(data: bytes, mutation: dict[str, Any], seeds_root: Path) -> bytes:
    """The mutated bytes (deterministic: the same seed bytes and dict give the same result)."""
    if mutation["kind"] == "bytes":
        return apply_ops(data, mutation["ops"], seeds_root)
    scratch = Path(tempfile.mkdtemp(prefix="wc-fuzz-mut-"))
    try:
        return STRUCT[mutation["name"]][1](data, mutation["params"], Ctx(seeds_root, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def describe(mutation: dict[str, Any]) -> str:
    """A short one-line description: ``flip@123.4 write@9=ffff`` or ``struct:name {...}``."""
    if mutation["kind"] == "struct":
        params = json.dumps(mutation["params"], sort_keys=True)
        if len(params) > 160:
            params = params[:157] + "..."
        return f"struct:{mutation['name']} {params}"
    parts = []
    for op in mutation["ops"]:
        if op[0] in ("write", "insert"):
            parts.append(f"{op[0]}@{op[1]}={op[2][:24]}")
        elif op[0] == "splice":
            parts.append(f"splice@{op[2]}+{op[1]}[{op[3]}:]")
        else:
            parts.append(f"{op[0]}@" + ".".join(str(x) for x in op[1:]))
    return " ".join(parts)
