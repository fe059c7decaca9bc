"""CRC32C (Castagnoli) as LevelDB tables and TensorFlow checkpoints store it.

The checksum itself comes from `google_crc32c`, a C extension (several GB/s with
SSE4.2); TensorFlow and LevelDB store it "masked" (rotated and offset) so that a
CRC of data that itself holds CRCs stays well distributed.

Example::

    stored = mask(value(payload))
    assert unmask(stored) == value(payload)
"""

from __future__ import annotations

import google_crc32c
import numpy as np

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


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


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def unmask(masked: int) -> int:
    rotated = (masked - _MASK_DELTA) & _U32
    return ((rotated >> 17) | (rotated << 15)) & _U32


def is_accelerated() -> bool:
    """True when the C implementation is in use (the pure-Python fallback is ~100x slower)."""
    return getattr(google_crc32c, "implementation", "c") == "c"
