"""Keeping resident memory near one copy of the model: drop mapped file pages once used."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
from collections.abc import Callable

import numpy as np


def release_pages(array: np.ndarray) -> None:
    """Tell the kernel this process no longer needs the pages under `array`, when `array` is
    a contiguous view of a read-only memory-mapped file. Values are unaffected: touching
    the array again reads the pages back from the file. Anything else is left alone."""
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    mapping = base.obj if isinstance(base, memoryview) else base
    if not isinstance(mapping, mmap.mmap) or array.flags.writeable:
        return
    if not (array.flags.c_contiguous or array.T.flags.c_contiguous) or array.nbytes == 0:
        return
    origin = np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
    offset = array.ctypes.data - origin
    start = offset - offset % mmap.PAGESIZE
    end = offset + array.nbytes
    end -= end % mmap.PAGESIZE
    if end > start:
        mapping.madvise(mmap.MADV_DONTNEED, start, end - start)


#: Linux 5.14+: fault in a whole mapped range, writable, in one call.
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def populate_for_writing(mapping: mmap.mmap) -> None:
    """Create the pages of a fresh shared file mapping up front, in one sequential pass (two,
    one per core, for a large mapping).

    A converter that fills the mapping in cache-friendly tiles touches its pages out of
    order; letting each touch fault in its own page costs about three times the copy on the
    virtual machines we measured. Where the kernel lacks MADV_POPULATE_WRITE this does
    nothing and the pages fault in as before.
    """
    size = len(mapping)
    half = (size // 2) - (size // 2) % mmap.PAGESIZE
    madvise = _libc_madvise()
    if size >= _TWO_THREADS_BYTES and madvise is not None:
        from concurrent.futures import ThreadPoolExecutor

        base = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
        with ThreadPoolExecutor(max_workers=1) as pool:
            second = pool.submit(madvise, base + half, size - half, MADV_POPULATE_WRITE)
            first = madvise(base, half, MADV_POPULATE_WRITE)  # ctypes lets the GIL go
            if first == 0 and second.result() == 0:
                return
    with contextlib.suppress(OSError, ValueError, OverflowError):
        mapping.madvise(MADV_POPULATE_WRITE)


#: Below this one thread populates faster than two start.
_TWO_THREADS_BYTES = 64 << 20


@functools.cache
def _libc_madvise() -> Callable[[int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function
