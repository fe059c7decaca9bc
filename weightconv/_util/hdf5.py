"""Reading HDF5 through h5py without surprises.

- `guard`: any exception h5py or libhdf5 raises inside the block (RuntimeError, KeyError,
  OSError, ValueError...) becomes one `FormatError` naming the file and the object; an
  exception raised by our own code passes through untouched (it is a bug, not a bad file).
- `check_global_heaps`: libhdf5 1.14 loops forever parsing a global heap collection
  (``GCOL``, where variable-length strings live) whose walk meets an object header of index 0
  and size 0: it advances by that size. One flipped size byte of an earlier object lands the
  walk in the collection's zero-filled free space, which reads exactly so. We walk every
  collection first, the way libhdf5 will, and refuse one whose walk does not end.
- `read_attribute`: the attribute's class, dataspace and size are checked before a byte is
  read (a variable-length sequence of a corrupt base type crashes h5py).
- `check_dataset`: shape x itemsize against what the storage holds, before allocating.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from weightconv._util.regions import map_input
from weightconv.errors import FormatError, WeightconvError

#: Attribute values larger than this are refused (Keras's biggest, model_config, is a few MB).
MAX_ATTRIBUTE_BYTES = 256 << 20
#: A chunked (compressed) dataset may declare at most this many times its stored bytes.
MAX_COMPRESSION_RATIO = 64
#: No tensor is larger than this.
MAX_DATASET_BYTES = 64 << 30

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _from_h5py(exc: BaseException) -> bool:
    """True when the innermost frame that is h5py's or ours is h5py's."""
    last = ""
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.startswith("h5py/") or f"{os.sep}h5py{os.sep}" in name:
            last = "h5py"
        elif name.startswith(_PACKAGE):
            last = "ours"
        tb = tb.tb_next
    return last == "h5py"


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).strip("'\"").split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def guard(where: object, what: str) -> Iterator[None]:
    """h5py's and libhdf5's errors in the block as a FormatError: "`where`: `what`: ..."."""
    try:
        yield
    except WeightconvError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        if not _from_h5py(exc):
            raise
        raise FormatError(f"{where}: {what}: corrupt or unreadable HDF5 ({_reason(exc)})") from None


def check_global_heaps(
    raw: BinaryIO, size: int, where: object, skip: list[tuple[int, int]] | None = None
) -> None:
    """Refuse HDF5 bytes (`size` of them in `raw`) holding a global heap collection whose
    walk would not end (see the module docstring). `skip` lists (offset, length) regions that
    hold dataset values, not metadata (see `data_extents`): a collection never lies in one,
    and not reading them keeps the check to the file's metadata."""
    found: list[int] = []
    for start, end in _gaps(sorted(skip or []), size):
        found.extend(_signatures(raw, start, end, b"GCOL"))
    for offset in sorted(set(found)):
        raw.seek(offset)
        head = raw.read(16)
        if len(head) < 16 or head[4] != 1 or head[5:8] != b"\0\0\0":
            continue  # not a collection header (version 1, reserved zero)
        length = int.from_bytes(head[8:16], "little")
        if length < 4096 or offset + length > size:
            raise FormatError(
                f"{where}: global heap collection at byte {offset}: declares {length:,} "
                f"bytes, expected 4,096 or more within the file's {size:,}"
            )
        raw.seek(offset)
        _walk_collection(raw.read(length), offset, where)


def data_extents(handle: Any, where: object) -> list[tuple[int, int]]:
    """(offset, length) of every contiguous dataset's values in an open h5py file; listing
    them reads object headers only, never an attribute's value."""
    import h5py

    extents: list[tuple[int, int]] = []

    def visit(_name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            offset = obj.id.get_offset()
            if offset is not None:
                extents.append((int(offset), int(obj.id.get_storage_size())))

    with guard(where, "HDF5 objects"):
        handle.visititems(visit)
    return extents


def _gaps(extents: list[tuple[int, int]], size: int) -> Iterator[tuple[int, int]]:
    at = 0
    for offset, length in extents:
        if offset > at:
            yield at, min(offset, size)
        at = max(at, offset + length)
    if at < size:
        yield at, size


def _signatures(raw: BinaryIO, start: int, end: int, magic: bytes) -> Iterator[int]:
    """Offsets of `magic` in bytes [start, end) of `raw`, read a block at a time."""
    block, overlap = 1 << 22, len(magic) - 1
    raw.seek(start)
    tail = b""
    at = start
    while at < end:
        data = tail + raw.read(min(block, end - at))
        if len(data) == len(tail):
            break
        base = at - len(tail)
        index = data.find(magic)
        while index >= 0:
            yield base + index
            index = data.find(magic, index + 1)
        at = base + len(data)
        tail = data[-overlap:]


def _walk_collection(data: bytes, offset: int, where: object) -> None:
    pos, end = 16, len(data)
    while pos < end:
        if pos + 16 > end:
            return  # too small for an object header: free space
        index = int.from_bytes(data[pos : pos + 2], "little")
        length = int.from_bytes(data[pos + 8 : pos + 16], "little")
        need = length if index == 0 else 16 + (length + 7) // 8 * 8
        if need <= 0 or need > end - pos:
            raise FormatError(
                f"{where}: global heap collection at byte {offset}: object {index} at "
                f"byte {offset + pos} declares {length:,} bytes, expected between 1 "
                f"and the collection's remaining {end - pos:,}"
            )
        pos += need


def read_attribute(obj: Any, name: str, where: object, file_size: int) -> Any:
    """The value of attribute `name` of `obj` (None when absent), checked before reading:
    strings, integers and floats only, and no more bytes than the file or the limit hold."""
    import h5py

    what = f"attribute {name!r} of {obj.name}"
    with guard(where, what):
        key = name.encode("utf-8")
        if not h5py.h5a.exists(obj.id, key):
            return None
        attr = h5py.h5a.open(obj.id, key)
        space, kind = attr.get_space(), attr.get_type()
        klass = kind.get_class()
        if klass not in (h5py.h5t.STRING, h5py.h5t.INTEGER, h5py.h5t.FLOAT):
            raise FormatError(
                f"{where}: {what}: has HDF5 type class {klass}, expected a string or number"
            )
        extent = space.get_simple_extent_type()
        if extent == h5py.h5s.NULL:
            return None
        dims = space.get_simple_extent_dims() if extent == h5py.h5s.SIMPLE else ()
        count = math.prod(int(n) for n in dims)
        variable = klass == h5py.h5t.STRING and kind.is_variable_str()
        itemsize = 16 if variable else int(kind.get_size())
        declared = count * itemsize
        limit = min(file_size, MAX_ATTRIBUTE_BYTES)
        if declared > limit:
            raise FormatError(
                f"{where}: {what}: declares {count:,} elements of {itemsize} bytes "
                f"({declared:,} bytes), the file holds {file_size:,}"
            )
        return obj.attrs[name]


def check_dataset(dataset: Any, where: object, file_size: int) -> None:
    """Refuse a dataset whose declared bytes its storage cannot hold."""
    import h5py

    what = f"dataset {dataset.name}"
    with guard(where, what):
        kind = dataset.id.get_type()
        klass = kind.get_class()
        if klass not in (h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.OPAQUE, h5py.h5t.BITFIELD):
            raise FormatError(f"{where}: {what}: has HDF5 type class {klass}, expected numbers")
        space = dataset.id.get_space()
        extent = space.get_simple_extent_type()
        if extent == h5py.h5s.NULL:
            raise FormatError(f"{where}: {what}: has an empty (null) dataspace, no values")
        dims = (space.get_simple_extent_dims() or ()) if extent == h5py.h5s.SIMPLE else ()
        declared = math.prod(int(n) for n in dims) * int(kind.get_size())
        stored = int(dataset.id.get_storage_size())
        plist = dataset.id.get_create_plist()
        if plist.get_external_count() > 0:
            raise FormatError(
                f"{where}: {what}: keeps its data in another file ({plist.get_external(0)[0]!r}); "
                f"a weight file must hold its own weights"
            )
        if plist.get_layout() == h5py.h5d.VIRTUAL:
            raise FormatError(f"{where}: {what}: is a virtual dataset made of other files' data")
        chunked = plist.get_layout() == h5py.h5d.CHUNKED
        room = min(file_size, stored)
        if chunked:
            room = min(MAX_COMPRESSION_RATIO * stored + file_size, MAX_DATASET_BYTES)
    if declared > room or declared > MAX_DATASET_BYTES:
        shape = "x".join(str(int(n)) for n in dims) or "()"
        raise FormatError(
            f"{where}: {what}: declares {shape} x {int(kind.get_size())} bytes "
            f"({declared:,} bytes), its storage holds {stored:,} of the file's {file_size:,}"
        )


def mapped_values(dataset: Any, path: Path, start: int) -> np.ndarray | None:
    """A contiguous dataset's values as a read-only view of its mapped file (no copy, and a
    writer can copy them file to file), the HDF5 file starting `start` bytes into `path`;
    None when HDF5 must read them (chunked, compressed, never written)."""
    import h5py

    plist = dataset.id.get_create_plist()
    offset = dataset.id.get_offset()
    if plist.get_layout() != h5py.h5d.CONTIGUOUS or offset is None:
        return None
    dtype = np.dtype(dataset.dtype)
    count = math.prod(dataset.shape or ())
    nbytes = count * dtype.itemsize
    if nbytes == 0 or dataset.id.get_storage_size() != nbytes:
        return None
    with open(path, "rb") as raw:
        if start + int(offset) + nbytes > os.fstat(raw.fileno()).st_size:
            return None  # check_dataset refuses what the file cannot hold
        mapping = map_input(raw)
    view = np.frombuffer(mapping, dtype=dtype, count=count, offset=start + int(offset))
    return view.reshape(dataset.shape)
