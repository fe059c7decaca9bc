"""A file region read in turn through one small reused buffer: no page of the file is mapped,
so nothing stays resident, and the buffer stays in cache for whatever sums the bytes."""

from __future__ import annotations

import os
from collections.abc import Iterator

#: Bytes read per call.
PIECE_BYTES = 2 << 20


def pieces(fd: int, offset: int, nbytes: int, size: int = PIECE_BYTES) -> Iterator[memoryview]:
    """The `nbytes` of the file `fd` from `offset`, as read-only views of one buffer, each
    valid until the next is read; OSError if the file ends first."""
    buffer = bytearray(min(size, max(nbytes, 1)))
    window = memoryview(buffer)
    done = 0
    while done < nbytes:
        got = os.preadv(fd, [window[: min(len(buffer), nbytes - done)]], offset + done)
        if got == 0:
            raise OSError(f"file ended {nbytes - done} bytes early while it was read")
        yield window[:got].toreadonly()
        done += got
