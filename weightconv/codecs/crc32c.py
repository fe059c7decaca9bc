"""CRC32C (Castagnoli) as LevelDB tables and TensorFlow checkpoints store it.

The checksum itself comes from `google_crc32c`, a C extension (several GB/s with
SSE4.2); TensorFlow and LevelDB store it "masked" (rotated and offset) so that a
CRC of data that itself holds CRCs stays well distributed.

Example::

    stored = mask(value(payload))
    assert unmask(stored) == value(payload)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import google_crc32c
import numpy as np

from weightconv.codecs.file_pieces import pieces

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_POLYNOMIAL = 0x82F63B78  # Castagnoli's, bit-reflected

#: Below this a region is checksummed on one thread.
PARALLEL_BYTES = 32 << 20


def _as_readonly(data: object) -> bytes | np.ndarray:
    if isinstance(data, bytes):
        return data
    array = np.frombuffer(data, dtype=np.uint8)  # type: ignore[call-overload]
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


def value(data: object) -> int:
    """CRC32C of a bytes-like object (bytes, memoryview, mmap slice, contiguous array)."""
    return int(google_crc32c.value(_as_readonly(data)))


def extend(crc: int, data: object) -> int:
    """CRC32C of the concatenation of the bytes `crc` covers and `data`."""
    return int(google_crc32c.extend(crc, _as_readonly(data)))


def _times(matrix: Sequence[int], vector: int) -> int:
    total = 0
    row = 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _squared(matrix: Sequence[int]) -> list[int]:
    return [_times(matrix, matrix[n]) for n in range(32)]


def combine(first: int, second: int, second_length: int) -> int:
    """CRC32C of A + B from CRC32C(A), CRC32C(B) and len(B): `first` is advanced over
    len(B) zero bytes, one GF(2) operator per set bit of the length."""
    bit = 0
    while second_length >> bit:
        if (second_length >> bit) & 1:
            first = _times(_zero_bytes_operator(bit), first)
        bit += 1
    return first ^ second


@functools.cache
def _zero_bytes_operator(bit: int) -> tuple[int, ...]:
    """The operator that advances a CRC over 2**bit zero bytes."""
    if bit == 0:
        operator = [_POLYNOMIAL] + [1 << n for n in range(31)]  # one zero bit
        for _ in range(3):
            operator = _squared(operator)  # two, four, then eight zero bits: one byte
        return tuple(operator)
    return tuple(_squared(list(_zero_bytes_operator(bit - 1))))


def _of_span(fd: int, offset: int, nbytes: int) -> int:
    crc = 0
    for piece in pieces(fd, offset, nbytes):
        crc = int(google_crc32c.extend(crc, np.frombuffer(piece, dtype=np.uint8)))
    return crc


def of_file(fd: int, offset: int, nbytes: int, threads: int = 1) -> int:
    """CRC32C of `nbytes` of the file `fd` from `offset`, read through a small buffer: no page
    of the file is mapped, so nothing stays resident and a kernel copy of the same bytes
    running alongside is not slowed by page faults. With `threads` > 1 a large region is
    split, each part summed on its own thread (the C checksum lets the GIL go), and the
    parts combined."""
    if threads <= 1 or nbytes < PARALLEL_BYTES:
        return _of_span(fd, offset, nbytes)
    from concurrent.futures import ThreadPoolExecutor

    step = -(-nbytes // threads)
    spans = [(offset + start, min(step, nbytes - start)) for start in range(0, nbytes, step)]
    with ThreadPoolExecutor(max_workers=len(spans) - 1) as pool:
        rest = [pool.submit(_of_span, fd, start, size) for start, size in spans[1:]]
        crc = _of_span(fd, *spans[0])
        for (_, size), part in zip(spans[1:], rest, strict=True):
            crc = combine(crc, part.result(), size)
    return crc


def value_parallel(data: np.ndarray, threads: int = 2) -> int:
    """CRC32C of a large in-memory array, its halves summed on two threads and combined."""
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if threads <= 1 or raw.nbytes < PARALLEL_BYTES:
        return value(raw)
    from concurrent.futures import ThreadPoolExecutor

    half = raw.nbytes // 2
    with ThreadPoolExecutor(max_workers=1) as pool:
        second = pool.submit(value, raw[half:])
        crc = value(raw[:half])
        return combine(crc, second.result(), raw.nbytes - half)


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def unmask(masked: int) -> int:
    rotated = (masked - _MASK_DELTA) & _U32
    return ((rotated >> 17) | (rotated << 15)) & _U32


def is_accelerated() -> bool:
    """True when the C implementation is in use (the pure-Python fallback is ~100x slower)."""
    return getattr(google_crc32c, "implementation", "c") == "c"
