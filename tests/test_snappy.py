"""The pure-Python raw Snappy decompressor.

Oracles: cramjam's Snappy compressor (the reference C++ library's format, written by
another implementation) for round trips, and streams assembled element by element from
the raw format's description for the cases a compressor may never emit.
"""

from __future__ import annotations

import contextlib
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightconv.codecs.snappy import decompress
from weightconv.errors import FormatError

cramjam = pytest.importorskip(
    "cramjam", reason="cramjam (test extra) is the Snappy oracle; pip install cramjam"
)


def oracle_compress(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


def mixed(size: int, seed: int = 0) -> bytes:
    """Random runs, repeated phrases and single-byte runs: exercises every element kind."""
    rng = random.Random(seed)
    phrases = [rng.randbytes(rng.randint(1, 40)) for _ in range(8)]
    out = bytearray()
    while len(out) < size:
        pick = rng.random()
        if pick < 0.3:
            out += rng.randbytes(rng.randint(1, 300))
        elif pick < 0.7:
            out += rng.choice(phrases) * rng.randint(1, 20)
        else:
            out += bytes([rng.randrange(256)]) * rng.randint(1, 2000)
    return bytes(out[:size])


# --- hand-assembled streams -----------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def literal(data: bytes) -> bytes:
    n = len(data) - 1
    if n < 60:
        return bytes([n << 2]) + data
    width = (n.bit_length() + 7) // 8
    return bytes([(59 + width) << 2]) + n.to_bytes(width, "little") + data


def copy1(length: int, offset: int) -> bytes:
    assert 4 <= length <= 11 and offset < 2048
    return bytes([1 | (length - 4) << 2 | (offset >> 8) << 5, offset & 0xFF])


def copy2(length: int, offset: int) -> bytes:
    return bytes([2 | (length - 1) << 2]) + offset.to_bytes(2, "little")


def copy4(length: int, offset: int) -> bytes:
    return bytes([3 | (length - 1) << 2]) + offset.to_bytes(4, "little")


def test_empty_block():
    assert decompress(b"\x00") == b""
    assert decompress(oracle_compress(b"")) == b""


def test_single_literal():
    assert decompress(b"\x05\x10hello") == b"hello"


@pytest.mark.parametrize("size", [59, 60, 61, 256, 257, 65536, 65537])
def test_long_literal_lengths(size):
    data = random.Random(size).randbytes(size)
    assert decompress(varint(size) + literal(data)) == data


def test_four_byte_literal_length():
    data = b"x" * 70000
    stream = varint(len(data)) + bytes([63 << 2]) + (len(data) - 1).to_bytes(4, "little") + data
    assert decompress(stream) == data


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        (copy1(4, 3), b"abcabca"),  # plain copy
        (copy1(11, 1), b"abc" + b"c" * 11),  # offset 1: a run of one byte
        (copy1(10, 2), b"abc" + b"bc" * 5),  # offset 2 < length: the pattern repeats
        (copy2(64, 3), b"abc" * 22 + b"a"),  # longest 2-byte-offset copy
        (copy4(7, 3), b"abc" + b"abcabca"),
    ],
)
def test_copies(element, expected):
    assert decompress(varint(len(expected)) + literal(b"abc") + element) == expected


def test_copy_with_large_offsets():
    head = random.Random(1).randbytes(70000)
    stream = (
        varint(len(head) + 20) + literal(head) + copy1(10, 2000) + copy2(5, 60000) + copy4(5, 69999)
    )
    # Output positions 70000, 70010 and 70015 minus the offsets: 68000, 10010 and 16.
    expected = head + head[68000:68010] + head[10010:10015] + head[16:21]
    assert decompress(stream) == expected


def test_memoryview_input():
    data = mixed(5000)
    assert decompress(memoryview(oracle_compress(data))) == data


# --- round trips against the oracle ---------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 59, 60, 61, 64, 255, 256, 65535, 65536, 65537, 200_000])
def test_round_trip_random(size):
    data = random.Random(size).randbytes(size)
    assert decompress(oracle_compress(data)) == data


@pytest.mark.parametrize("size", [1, 4, 60, 61, 65535, 65536, 65537, 300_000])
def test_round_trip_mixed(size):
    data = mixed(size, seed=size)
    assert decompress(oracle_compress(data)) == data


@pytest.mark.parametrize("unit", [b"a", b"ab", b"abc", b"0123456789", bytes(range(256))])
def test_round_trip_repetitive(unit):
    data = unit * (150_000 // len(unit))
    compressed = oracle_compress(data)
    assert len(compressed) < len(data) // 10
    assert decompress(compressed) == data


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000))
def test_round_trip_hypothesis(data):
    assert decompress(oracle_compress(data)) == data


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=30), st.integers(1, 200)), max_size=20))
def test_round_trip_hypothesis_runs(runs):
    data = b"".join(chunk * count for chunk, count in runs)
    assert decompress(oracle_compress(data)) == data


# --- hostile input --------------------------------------------------------------------------


def test_every_proper_prefix_is_refused():
    stream = oracle_compress(mixed(3000, seed=7))
    for end in range(len(stream)):
        with pytest.raises(FormatError, match=r"^snappy: "):
            decompress(stream[:end])
    assert decompress(stream) == mixed(3000, seed=7)


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"", "truncated length preamble"),
        (b"\x80\x80", "truncated length preamble"),
        (b"\xff\xff\xff\xff\xff\x01", "longer than 5 bytes"),
        (b"\xff\xff\xff\xff\x7f", "does not fit in 32 bits"),
        (b"\x04" + copy1(4, 1), "points before the start"),
        (b"\x08" + literal(b"ab") + copy1(6, 3), "points before the start"),
        (b"\x08" + literal(b"ab") + copy2(6, 0), "offset 0"),
        (b"\x08" + literal(b"ab") + copy4(6, 0), "offset 0"),
        (b"\x05" + literal(b"ab") + b"\x01", "truncated copy"),
        (b"\x05" + literal(b"ab") + b"\x02\x01", "truncated copy"),
        (b"\x05" + literal(b"ab") + b"\x03\x01\x00\x00", "truncated copy"),
        (b"\x05" + bytes([61 << 2]) + b"\x00", "truncated literal length"),
        (b"\x05\x10hell", "runs past the end"),
        (b"\x04\x10hello", "exceeds the declared length"),
        (b"\x06\x10hello", "output is 5 bytes, the preamble declared 6"),
        (b"\x05" + literal(b"ab") + copy1(4, 2), "exceeds the declared length"),
        (b"\x00\x00a", "exceeds the declared length"),
    ],
)
def test_malformed(stream, message):
    with pytest.raises(FormatError, match="snappy: .*" + message):
        decompress(stream)


def test_preamble_mismatch_on_oracle_stream():
    data = mixed(1000, seed=3)
    stream = oracle_compress(data)
    body = stream[len(varint(len(data))) :]
    with pytest.raises(FormatError, match="exceeds the declared length"):
        decompress(varint(len(data) - 1) + body)
    with pytest.raises(FormatError, match="the preamble declared"):
        decompress(varint(len(data) + 1) + body)


def test_huge_preamble_is_refused_without_allocating():
    started = time.perf_counter()
    with pytest.raises(FormatError, match="more than 3 compressed bytes can expand to"):
        decompress(varint(1 << 30) + copy2(64, 1))
    with pytest.raises(FormatError, match="exceeds the limit"):
        decompress(varint(1 << 31 | 1) + b"\x00" * (1 << 10))
    assert time.perf_counter() - started < 0.5


def test_limit_argument():
    data = b"z" * 100_000
    stream = oracle_compress(data)
    assert decompress(stream, limit=100_000) == data
    with pytest.raises(FormatError, match="declared length 100000 exceeds the limit of 99999"):
        decompress(stream, limit=99_999)


def test_maximal_expansion_is_accepted():
    # 64 output bytes per 3-byte copy is the densest a stream can be.
    stream = varint(1 + 64 * 1000) + literal(b"q") + copy2(64, 1) * 1000
    assert decompress(stream) == b"q" * (1 + 64 * 1000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_raises_only_format_error(stream):
    try:
        result = decompress(stream)
    except FormatError as exc:
        assert str(exc).startswith("snappy: ")
    else:
        assert isinstance(result, bytes)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=2000), st.data())
def test_corrupted_oracle_stream_raises_only_format_error(data, draw):
    stream = bytearray(oracle_compress(data))
    index = draw.draw(st.integers(0, len(stream) - 1))
    stream[index] ^= draw.draw(st.integers(1, 255))
    with contextlib.suppress(FormatError):
        decompress(bytes(stream))
