"""TensorFlow V1 checkpoints ("tensor_slice" format: one table file, values inside it).

The table's empty key holds a ``SavedTensorSlices`` whose ``meta`` lists every tensor
(name, shape, dtype, its slices). Each slice is stored under a binary slice key
(`ordered_code.encode_slice_key`) as a ``SavedTensorSlices`` whose ``data`` is a
``SavedSlice`` with a ``TensorProto`` holding the values in its typed repeated
fields (``float_val``, ``int_val``, ...). Those fields are decoded at the wire level
straight into arrays: packed fixed-width fields are viewed in place, packed varints
are decoded with vectorised NumPy.

Example::

    infos, detail = v1.list_tensors("vgg_16.ckpt")
    kernel = infos[0].load()
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from weightconv._util.limits import check_fits, element_count
from weightconv.codecs import ordered_code, protowire, sstable
from weightconv.errors import FormatError
from weightconv.formats.ckpt import dtypes as tf_types
from weightconv.formats.ckpt.slices import (
    Extent,
    TensorInfo,
    assemble,
    describe_extents,
    extents_of,
    region,
)

# TensorProto field numbers.
_CONTENT, _FLOAT, _DOUBLE, _INT, _STRING, _SCOMPLEX = 4, 5, 6, 7, 8, 9
_INT64, _BOOL, _DCOMPLEX, _HALF, _UINT32, _UINT64 = 10, 11, 12, 13, 16, 17

#: dtype enum -> (field, how the field encodes each element).
_FIELDS: dict[int, tuple[int, str]] = {
    1: (_FLOAT, "<f4"),
    2: (_DOUBLE, "<f8"),
    8: (_SCOMPLEX, "<f4"),
    18: (_DCOMPLEX, "<f8"),
    3: (_INT, "varint"),
    4: (_INT, "varint"),
    5: (_INT, "varint"),
    6: (_INT, "varint"),
    11: (_INT, "varint"),
    12: (_INT, "varint"),
    13: (_INT, "varint"),
    15: (_INT, "varint"),
    16: (_INT, "varint"),
    17: (_INT, "varint"),
    9: (_INT64, "varint"),
    10: (_BOOL, "varint"),
    19: (_HALF, "varint"),
    14: (_HALF, "varint"),
    22: (_UINT32, "varint"),
    23: (_UINT64, "varint"),
}


def list_tensors(path: str | os.PathLike[str]) -> tuple[list[TensorInfo], dict[str, Any]]:
    """The tensors a V1 checkpoint declares (values read lazily) and facts about it."""
    from weightconv._proto import tf_checkpoint_pb2 as pb

    label = os.fspath(path)
    with sstable.TableReader(path, mapped=Path(path).stat().st_size >= (1 << 20)) as table:
        meta_value = table.get(b"")
        if meta_value is None:
            raise FormatError(f"{label}: a table without the V1 checkpoint header (empty key)")
        message = pb.SavedTensorSlices()
        try:
            message.ParseFromString(bytes(meta_value))
        except Exception as exc:
            raise FormatError(f"{label}: V1 checkpoint header is not valid: {exc}") from None
        del meta_value
    reader = _SliceReader(label)
    file_size = Path(path).stat().st_size
    infos = []
    for tensor in message.meta.tensor:
        shape = tuple(int(d.size) for d in tensor.shape.dim)
        what = f"{label}: tensor {tensor.name!r}"
        count = element_count(shape, what)
        # The values are in this file: a declared shape it cannot hold is refused now,
        # before anyone sizes an output by it.
        check_fits(count * _min_bytes(int(tensor.type)), file_size, f"{what} of shape {shape}")
        slices = extents_of(tensor.slice)
        dtype = int(tensor.type)
        itemsize = tf_types.numpy_dtype(dtype, label).itemsize if dtype in _FIELDS else 0
        infos.append(
            TensorInfo(
                tensor.name,
                dtype,
                shape,
                _bind(reader, tensor.name, dtype, shape, slices),
                count * itemsize,
                len(slices),
            )
        )
    detail = {
        "version": "V1 (tensor_slice)",
        "file": label,
        "producer": int(message.meta.versions.producer),
    }
    return infos, detail


def _bind(
    reader: _SliceReader,
    name: str,
    dtype: int,
    shape: tuple[int, ...],
    slices: list[list[Extent]],
) -> Callable[[], np.ndarray]:
    return lambda: reader.read(name, dtype, shape, slices)


class _SliceReader:
    def __init__(self, path: str) -> None:
        self.path = path

    def read(
        self, name: str, dtype: int, shape: tuple[int, ...], slices: list[list[Extent]]
    ) -> np.ndarray:
        what = f"{self.path}: tensor {name!r}"
        if not slices:
            raise FormatError(f"{what}: the header lists no stored slices for it")
        numpy_dtype = tf_types.numpy_dtype(dtype, what)
        for extents in slices:  # inside the tensor, before any is looked up by its key
            region(extents, shape, what)
        with sstable.TableReader(self.path) as table:
            if len(slices) == 1 and all(
                length < 0 or (start == 0 and length == size)
                for (start, length), size in zip(slices[0], shape, strict=False)
            ):
                values = self._slice(table, name, slices[0], dtype, numpy_dtype, shape, what)
                return values.reshape(shape)

            records = {
                tuple(extents): self._record(
                    table, name, extents, f"{what} slice {describe_extents(extents)}"
                )
                for extents in slices
            }

            def read_piece(extents: list[Extent], piece_shape: tuple[int, ...]) -> np.ndarray:
                where = f"{what} slice {describe_extents(extents)}"
                tensor = records[tuple(extents)]
                return self._values(tensor, dtype, numpy_dtype, piece_shape, where)

            # Fewest bytes an element is stored in: a varint or string takes one at least.
            held = (sum(len(record) for record in records.values()), _min_bytes(dtype))
            return assemble(shape, numpy_dtype, slices, read_piece, what, held)

    def _slice(
        self,
        table: sstable.TableReader,
        name: str,
        extents: list[Extent],
        dtype: int,
        numpy_dtype: np.dtype[Any],
        shape: tuple[int, ...],
        what: str,
    ) -> np.ndarray:
        tensor = self._record(table, name, extents, what)
        return self._values(tensor, dtype, numpy_dtype, shape, what)

    def _record(
        self, table: sstable.TableReader, name: str, extents: list[Extent], what: str
    ) -> memoryview:
        """The stored ``TensorProto`` of one slice (a view into the table)."""
        key = ordered_code.encode_slice_key(name, extents)
        stored = table.get(key)
        if stored is None:
            raise FormatError(f"{what}: listed in the header but not stored")
        saved_slice = _field(stored, 2, f"{what}: record")  # SavedTensorSlices.data
        return _field(saved_slice, 3, f"{what}: record")  # SavedSlice.data

    def _values(
        self,
        tensor: memoryview,
        dtype: int,
        numpy_dtype: np.dtype[Any],
        shape: tuple[int, ...],
        what: str,
    ) -> np.ndarray:
        count = math.prod(shape)
        values = _decode_values(tensor, dtype, numpy_dtype, count, what)
        if values.size != count:
            raise FormatError(
                f"{what}: holds {values.size} values, shape {list(shape)} needs {count}"
            )
        return values.reshape(shape)


def _min_bytes(dtype: int) -> int:
    """The fewest bytes one element takes in a record: a varint or a string one at least,
    a packed float or double its width."""
    encoding = _FIELDS.get(dtype, (_STRING, "varint"))[1]
    return 1 if encoding == "varint" else np.dtype(encoding).itemsize


def _field(buf: memoryview | None, number: int, what: str) -> memoryview:
    """The (last) length-delimited field `number` of a message."""
    if buf is None:
        raise FormatError(f"{what}: missing")
    found = None
    for field, wire_type, _, start, end in protowire.iter_field_spans(buf):
        if field == number and wire_type == protowire.LENGTH_DELIMITED:
            found = buf[start:end]
    if found is None:
        raise FormatError(f"{what}: has no field {number}")
    return found


def _decode_values(
    tensor: memoryview, dtype: int, numpy_dtype: np.dtype[Any], count: int, what: str
) -> np.ndarray:
    if dtype == tf_types.STRING:
        # Collected first, so the array is as large as what is stored, not as declared.
        items: list[bytes] = []
        for field, wire_type, _, start, end in protowire.iter_field_spans(tensor):
            if field == _STRING and wire_type == protowire.LENGTH_DELIMITED:
                if len(items) >= count:
                    raise FormatError(f"{what}: more strings stored than its shape holds")
                items.append(bytes(tensor[start:end]))
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out
    if dtype not in _FIELDS:
        raise FormatError(
            f"{what}: dtype {tf_types.name(dtype)} is not readable from a V1 checkpoint"
        )
    number, encoding = _FIELDS[dtype]
    pieces: list[np.ndarray] = []
    for field, wire_type, _, start, end in protowire.iter_field_spans(tensor):
        if field == _CONTENT and wire_type == protowire.LENGTH_DELIMITED:
            return np.frombuffer(
                tensor,
                dtype=numpy_dtype.newbyteorder("<"),
                count=(end - start) // max(numpy_dtype.itemsize, 1),
                offset=start,
            ).astype(numpy_dtype, copy=False)
        if field != number:
            continue
        if wire_type == protowire.LENGTH_DELIMITED:  # packed
            if encoding == "varint":
                pieces.append(decode_varints(tensor, start, end, what))
            else:
                width = np.dtype(encoding).itemsize
                if (end - start) % width:
                    raise FormatError(
                        f"{what}: packed field {number} is {end - start} bytes, "
                        f"not a multiple of {width}"
                    )
                pieces.append(
                    np.frombuffer(
                        tensor, dtype=encoding, count=(end - start) // width, offset=start
                    )
                )
        else:  # one element per field, as unpacked encoders write them
            if encoding == "varint":
                pieces.append(decode_varints(tensor, start, end, what))
            else:
                pieces.append(np.frombuffer(tensor, dtype=encoding, count=1, offset=start))
    if not pieces:
        raw = np.empty(0, dtype=np.uint64 if encoding == "varint" else encoding)
    else:
        raw = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    return _as_dtype(raw, dtype, numpy_dtype, what)


def _as_dtype(raw: np.ndarray, dtype: int, numpy_dtype: np.dtype[Any], what: str) -> np.ndarray:
    if dtype in (8, 18):  # complex: (re, im) pairs
        return raw.view(numpy_dtype.newbyteorder("<")).astype(numpy_dtype, copy=False)
    if raw.dtype == np.uint64:
        if dtype in (19, 14):  # half / bfloat16: the 16 bits in an int32
            return raw.astype(np.uint16).view(numpy_dtype)
        if dtype == 10:
            return raw != 0
        if numpy_dtype.kind == "i":  # negative values are sign-extended to 64 bits
            return raw.view(np.int64).astype(numpy_dtype)
        return raw.astype(numpy_dtype)
    return raw.astype(numpy_dtype, copy=False)


def decode_varints(buf: memoryview, start: int, end: int, what: str) -> np.ndarray:
    """Every base-128 varint in ``buf[start:end]`` as uint64, decoded with NumPy."""
    data = np.frombuffer(buf, dtype=np.uint8, count=end - start, offset=start)
    if data.size == 0:
        return np.empty(0, dtype=np.uint64)
    last = np.flatnonzero(data < 0x80)
    if last.size == 0 or last[-1] != data.size - 1:
        raise FormatError(f"{what}: packed varints are truncated")
    first = np.empty_like(last)
    first[0] = 0
    first[1:] = last[:-1] + 1
    lengths = last - first + 1
    if lengths.max() > 10:
        raise FormatError(f"{what}: a varint is longer than 10 bytes")
    values = np.zeros(last.size, dtype=np.uint64)
    payload = (data & 0x7F).astype(np.uint64)
    for k in range(int(lengths.max())):
        take = lengths > k
        values[take] |= payload[first[take] + k] << np.uint64(7 * k)
    return values
