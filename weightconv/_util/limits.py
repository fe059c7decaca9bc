"""Declared sizes checked with exact integer arithmetic before anything is allocated or read.

A file declares shapes and lengths; a corrupt or hostile one declares 10^6 x 10^6 floats,
or dimensions whose product wraps around in int64 (``[2**62, 4]`` is 0 there). Products
here are Python ints (`math.prod`), so they never wrap, and every check says what was
declared and what is there.

Example::

    nbytes = declared_bytes(shape, 4, "model.ckpt: tensor 'w'")
    check_fits(nbytes, file_size, "model.ckpt: tensor 'w'")
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from weightconv.errors import FormatError


def describe_shape(shape: Iterable[int]) -> str:
    dims = list(shape)
    return "x".join(str(n) for n in dims) if dims else "()"


#: NumPy's limit on the number of dimensions of an array.
MAX_RANK = 64


def element_count(shape: Iterable[int], what: str) -> int:
    """The exact number of elements of `shape`; FormatError for a negative dimension or
    more than `MAX_RANK` of them."""
    dims = [int(n) for n in shape]
    if len(dims) > MAX_RANK:
        raise FormatError(
            f"{what}: declares {len(dims)} dimensions; an array has {MAX_RANK} at most"
        )
    if any(n < 0 for n in dims):
        raise FormatError(f"{what}: declares shape {describe_shape(dims)} (a negative dimension)")
    return math.prod(dims)


def declared_bytes(shape: Iterable[int], itemsize: int, what: str) -> int:
    """Exact bytes of `shape` at `itemsize` bytes per element, as a Python int."""
    return element_count(shape, what) * itemsize


def check_fits(declared: int, available: int, what: str, unit: str = "bytes") -> None:
    """Refuse when `declared` exceeds what the file actually holds."""
    if declared > available:
        raise FormatError(f"{what}: declares {declared:,} {unit}, the file has {available:,}")
