"""The safetensors file, written a tensor at a time, byte for byte as the reference writes it.

The layout::

    n            8 bytes, little-endian: the length of the header
    header       n bytes of compact JSON (no spaces), padded with spaces to a multiple of 8:
                 "__metadata__" first when given, then one entry per tensor in data order,
                 {"dtype": "F32", "shape": [4, 3], "data_offsets": [begin, end]}, the
                 offsets counted from the start of the data
    data         each tensor's little-endian bytes, C order, back to back

The data order is the one ``safetensors.numpy.save_file`` writes: widest dtype first (the
reverse of `DTYPES`'s order, which is the reference's dtype enumeration), then by name in code
point order. The reference takes the metadata as a hash map and so orders several keys at
random; here they are sorted.

Shapes and dtypes are all known before a value is made, so the header goes first; then the
tensors come in any order (a writer's walk over its layers) and each goes straight to its place:
a `FilledTensor` is filled in the mapped output, a view of a mapped input is copied by the
kernel, anything else is written in chunks.

Example::

    specs = {"w": ((2, 3), np.dtype(np.float32))}
    write_file("out.safetensors", specs, [("w", np.ones((2, 3), np.float32))], {"format": "pt"})
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from weightconv._util.files import atomic_output, chunks
from weightconv._util.memory import release_pages
from weightconv._util.progress import Progress
from weightconv._util.regions import copy_region, output_region
from weightconv.errors import FormatError, MappingError
from weightconv.model import FilledTensor, Tensor

#: The header's dtype codes -> NumPy dtypes, in the reference's order (narrowest first).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "I16": np.dtype(np.int16),
    "U16": np.dtype(np.uint16),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I32": np.dtype(np.int32),
    "U32": np.dtype(np.uint32),
    "F32": np.dtype(np.float32),
    "C64": np.dtype(np.complex64),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "U64": np.dtype(np.uint64),
}
#: The format's own cap on the header.
MAX_HEADER_BYTES = 100_000_000
#: Largest piece of a tensor converted and written at once.
CHUNK_BYTES = 16 << 20

_CODES = {dtype: code for code, dtype in DTYPES.items()}
_RANKS = {code: rank for rank, code in enumerate(DTYPES)}
_METADATA_KEY = "__metadata__"

#: Name -> (shape, dtype) of each tensor of a file.
Specs = Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]]


@dataclass
class _Place:
    name: str
    code: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]  # little-endian
    nbytes: int
    start: int = 0  # in the file


def write_file(
    path: str | os.PathLike[str],
    specs: Specs,
    tensors: Iterable[tuple[str, Tensor]],
    metadata: Mapping[str, str] | None = None,
    *,
    force: bool = False,
    notes: list[str] | None = None,
    progress: Progress | None = None,
) -> int:
    """Write a safetensors file of the tensors `specs` lists, with `metadata` as
    ``__metadata__`` (left out when None); returns its size in bytes.

    `tensors` gives each tensor of `specs` once, in any order, with the shape and dtype listed
    (any byte order); each is written when it comes and may be dropped then. The file appears
    at `path` only when all went well (`atomic_output`).
    """
    where = os.fspath(path)
    head, places = _plan(specs, metadata, where)
    with atomic_output(path, force, notes=notes) as handle:
        handle.write(head)
        handle.flush()
        fd = handle.fileno()
        for name, tensor in tensors:
            place = places.pop(name, None)
            if place is None:
                raise FormatError(f"{where}: tensor {name!r} was not planned, or came twice")
            _put(fd, place, tensor, where, progress)
            del tensor  # before the next is made: only one need be alive
        if places:
            raise FormatError(f"{where}: tensor {next(iter(places))!r} never came to be written")
        size = os.fstat(fd).st_size
    return size


def _plan(
    specs: Specs, metadata: Mapping[str, str] | None, where: str
) -> tuple[bytes, dict[str, _Place]]:
    """The file's first bytes (length and header), and where each tensor goes."""
    places = []
    for name, (shape, dtype) in specs.items():
        code = _CODES.get(np.dtype(dtype).newbyteorder("="))
        if code is None:
            raise FormatError(
                f"{where}: tensor {name!r} has dtype {dtype}, which safetensors does not store"
            )
        if name == _METADATA_KEY:
            raise MappingError(
                f"{where}: a tensor cannot be named {_METADATA_KEY!r}, the header's key for the "
                f"metadata"
            )
        little = np.dtype(dtype).newbyteorder("<")
        shape = tuple(int(n) for n in shape)
        places.append(_Place(name, code, shape, little, math.prod(shape) * little.itemsize))
    places.sort(key=lambda place: (-_RANKS[place.code], place.name))
    header: dict[str, Any] = {}
    if metadata is not None:
        header[_METADATA_KEY] = dict(sorted(metadata.items()))
    offset = 0
    for place in places:
        header[place.name] = {
            "dtype": place.code,
            "shape": list(place.shape),
            "data_offsets": [offset, offset + place.nbytes],
        }
        place.start = offset
        offset += place.nbytes
    try:
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[max(exc.start - 20, 0) : exc.end + 20]
        raise FormatError(
            f"{where}: a tensor name or metadata text is not valid Unicode (near {bad!r})"
        ) from None
    text += b" " * (-len(text) % 8)
    if len(text) > MAX_HEADER_BYTES:
        raise FormatError(
            f"{where}: the header would be {len(text):,} bytes, more than safetensors allows "
            f"({MAX_HEADER_BYTES:,})"
        )
    head = len(text).to_bytes(8, "little") + text
    for place in places:
        place.start += len(head)
    return head, {place.name: place for place in places}


def _put(fd: int, place: _Place, tensor: Tensor, where: str, progress: Progress | None) -> None:
    """One tensor into its place: filled there, copied there by the kernel, or written."""
    shape = tuple(int(n) for n in tensor.shape)
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    if shape != place.shape or dtype != place.dtype:
        raise FormatError(
            f"{where}: tensor {place.name!r} came as {shape} {dtype}, planned as "
            f"{place.shape} {place.dtype}"
        )
    if not place.nbytes:
        return
    advance = progress.advance if progress is not None else None
    if isinstance(tensor, FilledTensor):
        _fill(fd, place, tensor.fill)
        if advance is not None:
            advance(place.nbytes)
        return
    array = np.asarray(tensor)
    if array.dtype == place.dtype and copy_region(array, fd, place.start, advance):
        return
    position = place.start
    for chunk in chunks(array, CHUNK_BYTES):
        data = np.ascontiguousarray(chunk, dtype=place.dtype).reshape(-1).view(np.uint8)
        _write_at(fd, data.data, position)
        position += data.nbytes
        if advance is not None:
            advance(data.nbytes)
        del data  # before the next chunk is made, so only one is alive
        release_pages(chunk)  # a mapped input's pages, once written, need not stay resident
    if position != place.start + place.nbytes:  # chunks() would be wrong; the file corrupt
        raise FormatError(
            f"{where}: tensor {place.name!r}: wrote {position - place.start} of {place.nbytes} "
            f"bytes"
        )


def _fill(fd: int, place: _Place, fill: Callable[[np.ndarray], None]) -> None:
    with output_region(fd, place.start, place.nbytes) as region:
        fill(region.view(place.dtype).reshape(place.shape))
        del region  # no view may outlive the block, or the mapping cannot close


def _write_at(fd: int, view: memoryview, position: int) -> None:
    while view:
        done = os.pwrite(fd, view, position)
        view = view[done:]
        position += done
