"""Keeping resident memory near one copy of the model: drop mapped file pages once used."""

from __future__ import annotations

import mmap

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
