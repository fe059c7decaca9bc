"""How a V2 bundle stores a string tensor, both ways.

The bytes are ``[varint64 length]*n [masked CRC32C of the lengths] [string bytes]*n``.
The tensor's CRC32C (in its ``BundleEntryProto``) covers each length as a fixed-width
little-endian integer (4 bytes, or 8 when it does not fit in 4), not its varint bytes, then
the 4 bytes of the length checksum, then the string bytes.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from weightconv.codecs import crc32c, protowire
from weightconv.errors import FormatError


def _length_word(length: int) -> bytes:
    return struct.pack("<I" if length <= 0xFFFFFFFF else "<Q", length)


def _read_varint(raw: np.ndarray, pos: int, what: str) -> tuple[int, int]:
    try:
        return protowire.read_varint(memoryview(raw.data), pos, raw.size)
    except protowire.WireError:
        raise FormatError(f"{what}: string lengths are truncated or corrupt") from None


def decode_strings(raw: np.ndarray, shape: tuple[int, ...], what: str) -> tuple[np.ndarray, int]:
    """The strings stored in `raw` (uint8) as an object array of bytes of `shape`, and the
    tensor's CRC32C as computed from them (for the caller to compare with the entry's)."""
    count = math.prod(shape)
    if count + 4 > raw.size:  # a length byte per string at least, then the 4-byte checksum
        raise FormatError(
            f"{what}: declares {count:,} strings, its {raw.size:,} stored bytes can hold "
            f"at most {max(raw.size - 4, 0):,}"
        )
    lengths = []
    pos = 0
    crc = 0
    for _ in range(count):
        length, pos = _read_varint(raw, pos, what)
        lengths.append(length)
        crc = crc32c.extend(crc, _length_word(length))
    if pos + 4 > raw.size:
        raise FormatError(f"{what}: string data is truncated")
    stored_bytes = raw[pos : pos + 4].tobytes()
    (stored,) = struct.unpack("<I", stored_bytes)
    if crc32c.unmask(stored) != crc:
        raise FormatError(f"{what}: checksum of the string lengths does not match")
    crc = crc32c.extend(crc, stored_bytes)
    pos += 4
    if pos + sum(lengths) > raw.size:
        raise FormatError(
            f"{what}: string data is truncated ({raw.size - pos} bytes for {sum(lengths)})"
        )
    out = np.empty(count, dtype=object)
    for i, length in enumerate(lengths):
        out[i] = raw[pos : pos + length].tobytes()
        pos += length
    crc = crc32c.extend(crc, raw[pos - sum(lengths) : pos])
    return out.reshape(shape), crc


def encode_strings(values: np.ndarray) -> tuple[bytes, bytes, int]:
    """(the lengths and their checksum, the string bytes, the tensor's CRC32C); str items
    are stored as UTF-8."""
    items = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values.reshape(-1)]
    prefix = bytearray()
    crc = 0
    for item in items:
        prefix += protowire.encode_varint(len(item))
        crc = crc32c.extend(crc, _length_word(len(item)))
    length_checksum = struct.pack("<I", crc32c.mask(crc))
    prefix += length_checksum
    payload = b"".join(items)
    return bytes(prefix), payload, crc32c.extend(crc32c.extend(crc, length_checksum), payload)
