"""Reading V2 checkpoints ("TensorBundle", every TensorFlow since 2016).

``PREFIX.index`` is a LevelDB-format table (`sstable`) whose empty key holds a
``BundleHeaderProto`` (the number of data files, their byte order, the bundle version) and
whose other keys are tensor names holding ``BundleEntryProto``s: dtype, shape, which data
file, the byte offset and size of the tensor there, and the masked CRC32C of those bytes.
The bytes live in ``PREFIX.data-00000-of-0000N`` (`naming`). A partitioned variable's
entry lists its slices instead; each slice is stored under a binary slice key
(`ordered_code`) with an entry of its own.

Opening a bundle parses only the index; a tensor's data file is mapped when the tensor is
first read, and its bytes are checked against their CRC32C before they are used.

Example::

    reader = BundleReader("model.ckpt-1000")
    kernel = reader.read("conv1/weights")
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from weightconv._util.files import open_input
from weightconv._util.limits import describe_shape, element_count
from weightconv._util.memory import release_pages
from weightconv._util.regions import file_region, map_input
from weightconv.codecs import crc32c, ordered_code, sstable
from weightconv.codecs.protowire import WireError
from weightconv.errors import FormatError, MappingError
from weightconv.formats.ckpt import dtypes as tf_types
from weightconv.formats.ckpt import records
from weightconv.formats.ckpt.naming import MAX_SHARDS, data_filename, index_filename
from weightconv.formats.ckpt.slices import (
    Extent,
    TensorInfo,
    assemble,
    describe_extents,
)
from weightconv.formats.ckpt.strings import decode_strings

#: The bundle version this reader knows (and the writer records), as TensorFlow's.
BUNDLE_VERSION_PRODUCER = 1
#: Data is checksummed (and its pages released) in pieces of this size.
CHUNK_BYTES = 16 << 20


@dataclass
class Entry:
    """One ``BundleEntryProto``: a tensor, or one slice of a partitioned one."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int
    slices: list[list[Extent]] = field(default_factory=list)


class BundleReader:
    """A V2 checkpoint: the parsed index, and data files mapped on first use."""

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        self.prefix = os.fspath(prefix)
        self.index_path = str(index_filename(self.prefix))
        self.entries: dict[str, Entry] = {}
        #: tensor name -> its slices' extents -> the slice's entry.
        self.slice_entries: dict[str, dict[tuple[Extent, ...], Entry]] = {}
        self._maps: dict[int, mmap.mmap | bytes] = {}
        label = self.index_path
        with sstable.TableReader(self.index_path, mapped=False) as table:
            items = table.items()
            first = next(items, None)
            if first is None or first[0] != b"":
                raise FormatError(
                    f"{label}: no bundle header (the table's first key is "
                    f"{first[0]!r} rather than empty)"
                    if first
                    else f"{label}: empty table, no bundle header"
                )
            header = _parse(records.decode_header, first[1], f"{label}: bundle header")
            self.num_shards = header.num_shards
            self.big_endian = header.endianness == records.BIG_ENDIAN
            self.producer = header.producer
            if header.min_consumer > BUNDLE_VERSION_PRODUCER:
                raise FormatError(
                    f"{label}: written for readers of bundle version "
                    f">= {header.min_consumer}; this reader knows "
                    f"version {BUNDLE_VERSION_PRODUCER}"
                )
            if not 1 <= self.num_shards <= MAX_SHARDS:
                raise FormatError(f"{label}: header says {self.num_shards} data shards")
            for key, value in items:
                if ordered_code.is_slice_key(key):
                    name, extents = ordered_code.decode_slice_key(key)
                    record = _parse(records.decode_entry, value, f"{label}: slice of {name!r}")
                    pieces = self.slice_entries.setdefault(name, {})
                    pieces[tuple(extents)] = self._entry(name, record, label)
                    continue
                name = key.decode("utf-8", errors="surrogateescape")
                record = _parse(records.decode_entry, value, f"{label}: entry {name!r}")
                self.entries[name] = self._entry(name, record, label)

    def _entry(self, name: str, record: records.EntryRecord, label: str) -> Entry:
        shape = tuple(record.shape)
        if any(n < 0 for n in shape):
            raise FormatError(f"{label}: tensor {name!r} has shape {list(shape)}")
        if not record.slices:
            if not 0 <= record.shard_id < self.num_shards:
                raise FormatError(
                    f"{label}: tensor {name!r} is in shard {record.shard_id} of {self.num_shards}"
                )
            _check_declared_size(name, record.dtype, shape, record.size, label)
        return Entry(
            name,
            record.dtype,
            shape,
            record.shard_id,
            record.offset,
            record.size,
            record.crc32c,
            record.slices,
        )

    def close(self) -> None:
        for mapping in self._maps.values():
            if isinstance(mapping, mmap.mmap):
                with contextlib.suppress(BufferError):
                    mapping.close()
        self._maps.clear()

    def _shard(self, shard: int, tensor: str) -> mmap.mmap | bytes:
        if shard not in self._maps:
            path = data_filename(self.prefix, shard, self.num_shards)
            if not path.exists():
                raise FormatError(f"{path}: missing; the index lists tensor {tensor!r} in it")
            with open_input(path) as handle:
                if os.fstat(handle.fileno()).st_size == 0:
                    self._maps[shard] = b""
                else:
                    self._maps[shard] = map_input(handle)
        return self._maps[shard]

    def tensors(self) -> list[TensorInfo]:
        """Every tensor, in key order; partitioned variables once, as whole tensors."""
        infos = []
        for entry in self.entries.values():
            nbytes = entry.size if entry.dtype == tf_types.STRING else _value_bytes(entry)
            position = (entry.shard, entry.offset)
            if entry.slices:
                pieces = self.slice_entries.get(entry.name, {}).values()
                position = min(((e.shard, e.offset) for e in pieces), default=(1 << 31, 0))
                if entry.dtype == tf_types.STRING:
                    nbytes = sum(e.size for e in pieces)
            infos.append(
                TensorInfo(
                    entry.name,
                    entry.dtype,
                    entry.shape,
                    _bind(self.read, entry.name),
                    nbytes,
                    len(entry.slices),
                    position,
                    _bind(self.release, entry.name),
                    None
                    if entry.slices or entry.dtype == tf_types.STRING
                    else _bind(self.read_deferred, entry.name),
                )
            )
        return infos

    def read(self, name: str) -> np.ndarray:
        """The values of tensor `name`, checked against the stored CRC32C."""
        entry = self.entries.get(name)
        if entry is None:
            raise MappingError(f"{self.index_path}: no tensor {name!r}")
        if entry.slices:
            return self._assemble(entry)
        return self._read_entry(entry)

    def _read_entry(self, entry: Entry) -> np.ndarray:
        what = f"{self.prefix}: tensor {entry.name!r}"
        tf_types.numpy_dtype(entry.dtype, what)  # a dtype we cannot hold is refused first
        raw = self._raw(entry, what)
        if entry.dtype == tf_types.STRING:
            strings, actual = decode_strings(raw, entry.shape, what)
            self._compare(entry, actual, what)
            return strings
        self._compare(entry, _crc_and_release(raw), what)
        return self._values(entry, raw, what)

    def read_deferred(self, name: str) -> tuple[np.ndarray, Callable[[], None]] | None:
        """Tensor `name`'s values unchecked, and the check that raises if they do not match
        their stored CRC32C (summed from the file on one thread, for running alongside a copy
        of them); None for a tensor that is not one plain numeric region of a data file."""
        entry = self.entries.get(name)
        if entry is None or entry.slices or entry.dtype == tf_types.STRING:
            return None
        what = f"{self.prefix}: tensor {entry.name!r}"
        raw = self._raw(entry, what)
        region = file_region(raw)
        if region is None:
            return None
        values = self._values(entry, raw, what)

        def check() -> None:
            self._compare(entry, crc32c.of_file(*region, raw.nbytes), what)

        return values, check

    def _raw(self, entry: Entry, what: str) -> np.ndarray:
        mapping = self._check_in_shard(entry, what)
        return np.frombuffer(mapping, dtype=np.uint8, count=entry.size, offset=entry.offset)

    def _compare(self, entry: Entry, actual: int, what: str) -> None:
        if actual != crc32c.unmask(entry.crc):
            data_path = data_filename(self.prefix, entry.shard, self.num_shards)
            raise FormatError(
                f"{what}: checksum mismatch in {data_path} (stored "
                f"{crc32c.unmask(entry.crc):#010x}, computed {actual:#010x}); "
                f"the checkpoint is corrupt"
            )

    def _values(self, entry: Entry, raw: np.ndarray, what: str) -> np.ndarray:
        dtype = tf_types.numpy_dtype(entry.dtype, what)
        count = math.prod(entry.shape)
        if count * dtype.itemsize != entry.size:
            raise FormatError(
                f"{what}: {entry.size} bytes stored for shape "
                f"{list(entry.shape)} of {tf_types.name(entry.dtype)} "
                f"({count * dtype.itemsize} expected)"
            )
        if self.big_endian:
            dtype = dtype.newbyteorder(">")
        return raw.view(dtype).reshape(entry.shape)

    def _check_in_shard(self, entry: Entry, what: str) -> mmap.mmap | bytes:
        """The entry's data file, once its bytes are known to lie inside it."""
        mapping = self._shard(entry.shard, entry.name)
        if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > len(mapping):
            data_path = data_filename(self.prefix, entry.shard, self.num_shards)
            raise FormatError(
                f"{what}: bytes {entry.offset}..{entry.offset + entry.size} lie "
                f"outside {data_path} ({len(mapping)} bytes)"
            )
        return mapping

    def release(self, name: str) -> None:
        """Let the kernel drop the mapped pages of tensor `name` (values stay readable)."""
        entry = self.entries.get(name)
        if entry is None or entry.slices or entry.shard not in self._maps:
            return
        mapping = self._maps[entry.shard]
        if isinstance(mapping, mmap.mmap) and 0 <= entry.offset <= entry.offset + entry.size <= (
            len(mapping)
        ):
            release_pages(
                np.frombuffer(mapping, dtype=np.uint8, count=entry.size, offset=entry.offset)
            )

    def _assemble(self, entry: Entry) -> np.ndarray:
        what = f"{self.prefix}: partitioned tensor {entry.name!r}"
        pieces = self.slice_entries.get(entry.name, {})

        def read_piece(extents: list[Extent], _shape: tuple[int, ...]) -> np.ndarray:
            piece = pieces.get(tuple(extents))
            if piece is None:
                raise FormatError(
                    f"{what}: slice {describe_extents(extents)} is listed but not stored"
                )
            return self._read_entry(piece)

        dtype = tf_types.numpy_dtype(entry.dtype, what)
        # What the stored slices hold bounds the tensor before it is allocated: every
        # listed slice is stored and inside its data file, and together they must hold the
        # fewest bytes the declared shape can be stored in.
        held = 0
        for extents in dict.fromkeys(tuple(e) for e in entry.slices):  # a repeat holds no more
            piece = pieces.get(extents)
            if piece is None:
                raise FormatError(
                    f"{what}: slice {describe_extents(list(extents))} is listed but not stored"
                )
            self._check_in_shard(piece, f"{what} slice {describe_extents(list(extents))}")
            held += piece.size
        bound = (held, tf_types.min_stored_bytes(entry.dtype))
        full = assemble(entry.shape, dtype, entry.slices, read_piece, what, bound)
        full.flags.writeable = False
        return full


_Record = TypeVar("_Record", records.Header, records.EntryRecord)


def _parse(decode: Callable[[memoryview], _Record], value: memoryview, what: str) -> _Record:
    try:
        return decode(value)
    except WireError as exc:
        raise FormatError(f"{what}: not a valid record ({exc})") from None


def _value_bytes(entry: Entry) -> int:
    """Element count times item size; 0 for dtypes without a fixed item size."""
    return math.prod(entry.shape) * (tf_types.itemsize(entry.dtype) or 0)


def _check_declared_size(
    name: str, dtype: int, shape: tuple[int, ...], size: int, label: str
) -> None:
    """An entry's size against its shape, exactly: item size times elements for fixed-width
    dtypes; for strings, at least one length byte per element and the lengths' checksum."""
    what = f"{label}: tensor {name!r}"
    count = element_count(shape, what)
    itemsize = tf_types.itemsize(dtype)
    if size < 0:
        raise FormatError(f"{what}: declares a size of {size} bytes")
    if itemsize is not None and count * itemsize != size:
        raise FormatError(
            f"{what}: {size} bytes stored for shape {list(shape)} of "
            f"{tf_types.name(dtype)} ({count * itemsize} expected)"
        )
    if dtype == tf_types.STRING and count + 4 > size:
        raise FormatError(
            f"{what}: declares {count:,} strings (shape {describe_shape(shape)}), "
            f"its {size:,} stored bytes can hold at most {max(size - 4, 0):,}"
        )


def _crc_and_release(raw: np.ndarray) -> int:
    """CRC32C of mapped bytes: read from the file on both cores when `raw` is a region of a
    mapped input (no page of it is faulted in), else summed piece by piece, each piece's pages
    dropped once summed, so checking a large tensor does not leave all of it resident."""
    region = file_region(raw)
    if region is not None:
        return crc32c.of_file(*region, raw.nbytes, threads=2)
    crc = 0
    for start in range(0, raw.size, CHUNK_BYTES):
        piece = raw[start : start + CHUNK_BYTES]
        crc = crc32c.extend(crc, piece)
        release_pages(piece)
    return crc


def _bind(action: Callable[[str], Any], name: str) -> Callable[[], Any]:
    return lambda: action(name)
