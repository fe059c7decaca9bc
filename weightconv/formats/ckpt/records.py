"""The two records of a V2 checkpoint's index, decoded from the protobuf wire format as
protobuf decodes them: ``BundleHeaderProto`` and ``BundleEntryProto`` (``proto/tf_checkpoint.proto``
gives their fields).

Decoding the few fields by hand spares the index reader protobuf's import and its message
classes, which cost more than reading a whole index. Protobuf's rules are kept: unknown
fields and fields of an unexpected wire type are skipped, the last of a repeated scalar
wins, a message field given twice is merged, integers wrap to their declared width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weightconv.codecs.protowire import (
    FIXED32,
    LENGTH_DELIMITED,
    VARINT,
    as_int64,
    iter_fields,
)
from weightconv.formats.ckpt.slices import Extent

#: ``BundleHeaderProto.Endianness.BIG``.
BIG_ENDIAN = 1


@dataclass
class Header:
    """A ``BundleHeaderProto``: data-file count, byte order, and its ``VersionDef``."""

    num_shards: int = 0
    endianness: int = 0
    producer: int = 0
    min_consumer: int = 0


@dataclass
class EntryRecord:
    """A ``BundleEntryProto``, its slices as extents (length -1: to the end)."""

    dtype: int = 0
    shape: list[int] = field(default_factory=list)
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int = 0
    slices: list[list[Extent]] = field(default_factory=list)


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def decode_header(buf: bytes | memoryview) -> Header:
    header = Header()
    for number, wire_type, start, end in iter_fields(buf):
        if wire_type == VARINT:
            if number == 1:
                header.num_shards = _int32(start)
            elif number == 2:
                header.endianness = _int32(start)
        elif number == 3 and wire_type == LENGTH_DELIMITED:
            for inner, inner_type, value, _ in iter_fields(buf, start, end):
                if inner_type == VARINT and inner == 1:
                    header.producer = _int32(value)
                elif inner_type == VARINT and inner == 2:
                    header.min_consumer = _int32(value)
    return header


def decode_entry(buf: bytes | memoryview) -> EntryRecord:
    entry = EntryRecord()
    for number, wire_type, start, end in iter_fields(buf):
        if wire_type == VARINT:
            if number == 1:
                entry.dtype = _int32(start)
            elif number == 3:
                entry.shard_id = _int32(start)
            elif number == 4:
                entry.offset = as_int64(start)
            elif number == 5:
                entry.size = as_int64(start)
        elif wire_type == FIXED32 and number == 6:
            entry.crc32c = int.from_bytes(buf[start:end], "little")
        elif wire_type == LENGTH_DELIMITED:
            if number == 2:
                entry.shape.extend(_shape_dims(buf, start, end))
            elif number == 7:
                entry.slices.append(_extents(buf, start, end))
    return entry


def _shape_dims(buf: bytes | memoryview, start: int, end: int) -> list[int]:
    """The sizes of a ``TensorShapeProto``'s dims (their names are not needed)."""
    sizes = []
    for number, wire_type, dim_start, dim_end in iter_fields(buf, start, end):
        if number == 2 and wire_type == LENGTH_DELIMITED:
            size = 0
            for inner, inner_type, value, _ in iter_fields(buf, dim_start, dim_end):
                if inner == 1 and inner_type == VARINT:
                    size = as_int64(value)
            sizes.append(size)
    return sizes


def _extents(buf: bytes | memoryview, start: int, end: int) -> list[Extent]:
    """A ``TensorSliceProto``'s extents as (start, length), length -1 when it has none."""
    extents: list[Extent] = []
    for number, wire_type, extent_start, extent_end in iter_fields(buf, start, end):
        if number == 1 and wire_type == LENGTH_DELIMITED:
            first, length = 0, -1
            for inner, inner_type, value, _ in iter_fields(buf, extent_start, extent_end):
                if inner_type != VARINT:
                    continue
                if inner == 1:
                    first = as_int64(value)
                elif inner == 2:
                    length = as_int64(value)
            extents.append((first, length))
    return extents
