"""Decompressor for the raw Snappy block format (no framing), in pure Python.

LevelDB-style tables, such as a TensorFlow checkpoint's ``.index`` file, may store
their blocks Snappy-compressed. A raw block is a varint of the uncompressed length
followed by a sequence of literal and back-reference (copy) elements.
"""

from __future__ import annotations

from weightconv.errors import FormatError

#: Default cap on the declared uncompressed length.
DEFAULT_LIMIT = 1 << 31

# The most output any element can produce per input byte: a 3-byte copy of 64 bytes.
# Bounds the declared length by what the remaining input could possibly expand to.
_MAX_OUT_PER_ELEMENT = 64
_MIN_BYTES_PER_ELEMENT = 3

_LITERAL = 0
_COPY_1 = 1
_COPY_2 = 2


def _read_preamble(src: bytes) -> tuple[int, int]:
    """The declared uncompressed length (a varint32) and the position after it."""
    value = 0
    for i in range(5):
        if i >= len(src):
            raise FormatError("snappy: truncated length preamble")
        byte = src[i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if value > 0xFFFFFFFF:
                raise FormatError("snappy: length preamble does not fit in 32 bits")
            return value, i + 1
    raise FormatError("snappy: length preamble longer than 5 bytes")


def decompress(data: bytes | memoryview, limit: int = DEFAULT_LIMIT) -> bytes:
    """Decompress one raw Snappy block; refuse blocks declaring more than `limit` bytes."""
    src = data if isinstance(data, bytes) else bytes(data)
    size, ip = _read_preamble(src)
    end = len(src)
    if size > limit:
        raise FormatError(f"snappy: declared length {size} exceeds the limit of {limit} bytes")
    if size * _MIN_BYTES_PER_ELEMENT > (end - ip) * _MAX_OUT_PER_ELEMENT:
        raise FormatError(
            f"snappy: declared length {size} is more than {end - ip} compressed bytes can expand to"
        )

    out = bytearray(size)
    op = 0
    while ip < end:
        tag = src[ip]
        ip += 1
        kind = tag & 3
        if kind == _LITERAL:
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                if ip + extra > end:
                    raise FormatError(f"snappy: truncated literal length at byte {ip - 1}")
                length = int.from_bytes(src[ip : ip + extra], "little")
                ip += extra
            length += 1
            if length > end - ip:
                raise FormatError(
                    f"snappy: literal of {length} bytes at byte {ip} runs past the end of the input"
                )
            if length > size - op:
                raise FormatError(f"snappy: output exceeds the declared length {size}")
            out[op : op + length] = src[ip : ip + length]
            ip += length
            op += length
            continue

        if kind == _COPY_1:
            if ip >= end:
                raise FormatError(f"snappy: truncated copy at byte {ip - 1}")
            length = 4 + ((tag >> 2) & 7)
            offset = ((tag >> 5) << 8) | src[ip]
            ip += 1
        else:
            width = 2 if kind == _COPY_2 else 4
            if ip + width > end:
                raise FormatError(f"snappy: truncated copy at byte {ip - 1}")
            length = 1 + (tag >> 2)
            offset = int.from_bytes(src[ip : ip + width], "little")
            ip += width
        if offset == 0:
            raise FormatError(f"snappy: copy with offset 0 at byte {ip}")
        if offset > op:
            raise FormatError(
                f"snappy: copy offset {offset} points before the start of the "
                f"output (at output byte {op})"
            )
        if length > size - op:
            raise FormatError(f"snappy: output exceeds the declared length {size}")
        start = op - offset
        if offset >= length:
            out[op : op + length] = out[start : start + length]
        else:
            # The source overlaps the destination: the last `offset` bytes repeat.
            pattern = out[start:op]
            repeats, rest = divmod(length, offset)
            out[op : op + length] = pattern * repeats + pattern[:rest]
        op += length

    if op != size:
        raise FormatError(f"snappy: output is {op} bytes, the preamble declared {size}")
    return bytes(out)
