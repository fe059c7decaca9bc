"""TensorFlow's OrderedCode: order-preserving byte encodings, as used in tensor-slice keys.

Checkpoints key each saved slice of a tensor (every partition of a partitioned
variable in a V2 bundle's ``.index``; every slice in a V1 checkpoint) as

    NumIncreasing(0) String(name) NumIncreasing(rank) {SignedNumIncreasing(start)
    SignedNumIncreasing(length)} * rank

where a length of -1 means the slice spans the whole dimension. Comparing encodings
bytewise orders them as the values they encode.

Like TensorFlow's release builds, the decoders accept non-minimal encodings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from weightconv.errors import FormatError

#: The length recorded for a dimension the slice covers completely.
FULL_EXTENT = -1

_UINT64_MAX = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_MAX_SIGNED_LENGTH = 10
_MAX_RANK = (1 << 31) - 1

_SPECIAL = re.compile(rb"[\x00\xff]")
_ESCAPED = {b"\x00": b"\x00\xff", b"\xff": b"\xff\x00"}
_TERMINATOR = b"\x00\x01"


# --- unsigned ------------------------------------------------------------------------------


def encode_num_increasing(v: int) -> bytes:
    """Encode an unsigned 64-bit integer: a byte count, then the big-endian bytes."""
    if not 0 <= v <= _UINT64_MAX:
        raise ValueError(f"NumIncreasing takes an unsigned 64-bit integer, not {v}")
    n = (v.bit_length() + 7) // 8
    return bytes((n,)) + v.to_bytes(n, "big")


def decode_num_increasing(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a NumIncreasing at `pos`; return (value, position after it)."""
    if pos >= len(data):
        raise FormatError(f"ordered code: truncated unsigned number at byte {pos}")
    n = data[pos]
    if n > 8:
        raise FormatError(f"ordered code: unsigned number of {n} bytes at byte {pos} (at most 8)")
    end = pos + 1 + n
    if end > len(data):
        raise FormatError(f"ordered code: truncated unsigned number at byte {pos}")
    return int.from_bytes(data[pos + 1 : end], "big"), end


# --- strings -------------------------------------------------------------------------------


def encode_string(s: bytes) -> bytes:
    """Escape 0x00 and 0xFF, then append the 0x00 0x01 terminator."""
    return _SPECIAL.sub(lambda m: _ESCAPED[m.group()], s) + _TERMINATOR


def decode_string(data: bytes, pos: int) -> tuple[bytes, int]:
    """Decode an escaped, terminated string at `pos`; return (bytes, position after it)."""
    parts = []
    i = pos
    while True:
        match = _SPECIAL.search(data, i)
        if match is None or match.start() + 1 >= len(data):
            raise FormatError(f"ordered code: unterminated string at byte {pos}")
        j = match.start()
        parts.append(data[i:j])
        pair = data[j : j + 2]
        if pair == _TERMINATOR:
            return b"".join(parts), j + 2
        if pair == b"\x00\xff":
            parts.append(b"\x00")
        elif pair == b"\xff\x00":
            parts.append(b"\xff")
        else:
            raise FormatError(f"ordered code: invalid escape {pair.hex()} in string at byte {j}")
        i = j + 2


# --- signed --------------------------------------------------------------------------------
#
# An n-byte encoding holds v's two's complement in 8n bits with the top n bits inverted:
# n copies of the sign-inverted bit, a delimiter bit equal to the sign bit, then the
# value. n is the smallest length whose remaining 7n - 1 bits hold v (1 byte covers
# [-64, 64), n bytes [-2^(7n-1), 2^(7n-1))); int64 extremes need 10 bytes.


def _header(n: int) -> int:
    return ((1 << n) - 1) << (7 * n)


def encode_signed_num_increasing(v: int) -> bytes:
    """Encode a signed 64-bit integer in TensorFlow's order-preserving signed format."""
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise ValueError(f"SignedNumIncreasing takes a signed 64-bit integer, not {v}")
    magnitude = ~v if v < 0 else v
    n = magnitude.bit_length() // 7 + 1
    return ((v & ((1 << (8 * n)) - 1)) ^ _header(n)).to_bytes(n, "big")


def _leading_ones(byte: int) -> int:
    return 8 - (byte ^ 0xFF).bit_length()


def decode_signed_num_increasing(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a SignedNumIncreasing at `pos`; return (value, position after it)."""
    if pos >= len(data):
        raise FormatError(f"ordered code: truncated signed number at byte {pos}")
    flip = 0xFF if data[pos] < 0x80 else 0
    n = _leading_ones(data[pos] ^ flip)
    if n == 8:
        if pos + 1 >= len(data):
            raise FormatError(f"ordered code: truncated signed number at byte {pos}")
        n += _leading_ones(data[pos + 1] ^ flip)
        if n > _MAX_SIGNED_LENGTH:
            raise FormatError(
                f"ordered code: signed number at byte {pos} claims more than "
                f"{_MAX_SIGNED_LENGTH} bytes"
            )
    end = pos + n
    if end > len(data):
        raise FormatError(f"ordered code: truncated signed number at byte {pos}")
    raw = int.from_bytes(data[pos:end], "big")
    if flip:
        raw ^= (1 << (8 * n)) - 1
    magnitude = raw ^ _header(n)
    if magnitude > _INT64_MAX:
        raise FormatError(f"ordered code: signed number at byte {pos} overflows 64 bits")
    return (~magnitude if flip else magnitude), end


# --- tensor-slice keys ---------------------------------------------------------------------


def encode_slice_key(name: str, extents: Sequence[tuple[int, int]]) -> bytes:
    """The key TensorFlow stores a slice of tensor `name` under.

    Each extent is (start, length); (0, -1) means the whole dimension.
    """
    parts = [
        encode_num_increasing(0),
        encode_string(name.encode("utf-8")),
        encode_num_increasing(len(extents)),
    ]
    for start, length in extents:
        if length < FULL_EXTENT or start < 0 or (length == FULL_EXTENT and start != 0):
            raise ValueError(f"invalid slice extent ({start}, {length}) for {name!r}")
        parts.append(encode_signed_num_increasing(start))
        parts.append(encode_signed_num_increasing(length))
    return b"".join(parts)


def is_slice_key(key: bytes) -> bool:
    """Whether `key` looks like a tensor-slice key (tensor names never start with NUL)."""
    return key[:1] == b"\x00"


def decode_slice_key(key: bytes) -> tuple[str, list[tuple[int, int]]]:
    """Split a tensor-slice key into the tensor name and its (start, length) extents.

    Full extents come back as (0, -1). A rank of 0 (a scalar's slice) gives no extents.
    """
    key = bytes(key)
    lead, pos = decode_num_increasing(key, 0)
    if lead != 0:
        raise FormatError(f"slice key starts with {lead}, not 0: {key.hex()}")
    raw_name, pos = decode_string(key, pos)
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"slice key's tensor name is not UTF-8: {raw_name!r}") from None
    rank, pos = decode_num_increasing(key, pos)
    if rank > _MAX_RANK:
        raise FormatError(f"slice key for {name!r} has rank {rank}")
    extents = []
    for dim in range(rank):
        start, pos = decode_signed_num_increasing(key, pos)
        length, pos = decode_signed_num_increasing(key, pos)
        if length == FULL_EXTENT:
            extents.append((0, FULL_EXTENT))
        elif length < 0 or start < 0:
            raise FormatError(
                f"slice key for {name!r} has invalid extent ({start}, {length}) in dimension {dim}"
            )
        else:
            extents.append((start, length))
    if pos != len(key):
        raise FormatError(f"slice key for {name!r} has {len(key) - pos} trailing bytes")
    return name, extents
