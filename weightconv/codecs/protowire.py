"""Protocol-buffer wire format at the byte level: walk fields without building messages.

Reading a 500 MB .caffemodel through protobuf objects costs about three copies of
the file and stops at 2 GiB. Walking the wire format over a memory map lets packed
float fields become zero-copy ``numpy.frombuffer`` views, with no size ceiling.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

from weightconv.errors import FormatError

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
START_GROUP = 3
END_GROUP = 4
FIXED32 = 5


class WireError(FormatError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: memoryview | bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode one varint at `pos`; return (value, position after it)."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


def iter_fields(
    buf: memoryview | bytes, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, value start, value end) for each field in buf[start:end].

    For VARINT fields the value is the decoded integer in place of start, and end
    is the position after it. For length-delimited and fixed fields, [start, end)
    is the payload. Groups are skipped whole.
    """
    for number, wire_type, _field_start, value_start, value_end in iter_field_spans(
        buf, start, end
    ):
        if wire_type == VARINT:
            value, _ = read_varint(buf, value_start, value_end)
            yield number, wire_type, value, value_end
        elif wire_type != START_GROUP:
            yield number, wire_type, value_start, value_end


def iter_field_spans(
    buf: memoryview | bytes, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (number, wire type, field start, value start, value end) for each field.

    [field start, value end) is the whole encoded field, key included, so fields
    can be copied or left out byte for byte. For a group, the value span covers
    the group's contents and its end marker.
    """
    pos = start
    stop = len(buf) if end is None else end
    while pos < stop:
        field_start = pos
        key, pos = read_varint(buf, pos, stop)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == VARINT:
            value_start = pos
            _, pos = read_varint(buf, pos, stop)
        elif wire_type == LENGTH_DELIMITED:
            length, value_start = read_varint(buf, pos, stop)
            pos = value_start + length
            if pos > stop:
                raise WireError(
                    f"field {number} claims {length} bytes but only "
                    f"{stop - value_start} remain (truncated file?)"
                )
        elif wire_type == FIXED32:
            value_start, pos = pos, pos + 4
        elif wire_type == FIXED64:
            value_start, pos = pos, pos + 8
        elif wire_type == START_GROUP:
            value_start = pos
            pos = _skip_group(buf, pos, stop, number)
        else:
            raise WireError(f"field {number}: invalid wire type {wire_type}")
        if pos > stop:
            raise WireError(f"field {number}: truncated")
        yield number, wire_type, field_start, value_start, pos


def _skip_group(buf: memoryview | bytes, pos: int, stop: int, number: int) -> int:
    depth = 1
    while depth:
        key, pos = read_varint(buf, pos, stop)
        wire_type = key & 7
        if wire_type == START_GROUP:
            depth += 1
        elif wire_type == END_GROUP:
            depth -= 1
        elif wire_type == VARINT:
            _, pos = read_varint(buf, pos, stop)
        elif wire_type == LENGTH_DELIMITED:
            length, pos = read_varint(buf, pos, stop)
            pos += length
        elif wire_type == FIXED32:
            pos += 4
        elif wire_type == FIXED64:
            pos += 8
        else:
            raise WireError(f"group {number}: invalid wire type {wire_type}")
        if pos > stop:
            raise WireError(f"group {number}: truncated")
    return pos


def packed_varints(buf: memoryview | bytes, start: int, end: int) -> list[int]:
    values = []
    pos = start
    while pos < end:
        value, pos = read_varint(buf, pos, end)
        values.append(value)
    return values


def as_int64(value: int) -> int:
    """Reinterpret a decoded varint as a signed 64-bit integer."""
    return value - (1 << 64) if value >= 1 << 63 else value


def packed_array(buf: memoryview | bytes, start: int, end: int, dtype: str) -> np.ndarray:
    """A read-only little-endian view of a packed fixed-width field; no copy."""
    item = np.dtype(dtype).itemsize
    if not 0 <= start <= end <= len(buf):
        raise WireError(
            f"packed field at bytes {start}..{end} lies outside the {len(buf)} bytes there are"
        )
    if (end - start) % item:
        raise WireError(
            f"packed field of {end - start} bytes is not a whole number of {item}-byte values"
        )
    return np.frombuffer(
        buf, dtype=np.dtype(dtype).newbyteorder("<"), count=(end - start) // item, offset=start
    )


def fixed_value(buf: memoryview | bytes, start: int, fmt: str) -> float | int:
    return struct.unpack_from("<" + fmt, buf, start)[0]


# --- encoding -------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_key(number: int, wire_type: int) -> bytes:
    return encode_varint(number << 3 | wire_type)


def encode_length_delimited_header(number: int, length: int) -> bytes:
    """Key and length of a length-delimited field; the payload follows."""
    return encode_key(number, LENGTH_DELIMITED) + encode_varint(length)
