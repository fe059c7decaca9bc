"""Tensors as regions of files: an input's tensors copied file to file by the kernel, an
output's tensors made in place in the mapped output file.

A reader maps its input with `map_input`; a tensor that is a contiguous view of that
mapping can then be copied to an output file with `copy_region` (``copy_file_range``: the
bytes go page cache to page cache, never through this process's memory). A writer that
must reorder a tensor fills it straight into its output with `output_region`.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import IO, TypeVar

import numpy as np

from weightconv._util.alongside import beside
from weightconv._util.files import reserve
from weightconv._util.memory import populate_for_writing, release_pages

T = TypeVar("T")

#: Bytes per copy_file_range call: progress advances between them.
COPY_CHUNK_BYTES = 64 << 20
#: Regions copied from this size on are placed in their output by `copy_gap`.
PLACE_FROM_BYTES = 4 << 20
#: The output block whose first page such a region starts in.
COPY_BLOCK_BYTES = 64 << 10

# id(mapping) -> a descriptor of the mapped file, kept open as long as the mapping lives.
_SOURCES: dict[int, int] = {}


def map_input(handle: IO[bytes]) -> mmap.mmap:
    """A read-only mapping of the whole of `handle`'s file (ValueError for an empty file,
    as mmap gives), remembered so that `copy_region` can copy views of it file to file."""
    mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    descriptor = os.dup(handle.fileno())
    _SOURCES[id(mapping)] = descriptor
    weakref.finalize(mapping, _forget, id(mapping), descriptor)
    return mapping


def _forget(key: int, descriptor: int) -> None:
    if _SOURCES.get(key) == descriptor:
        del _SOURCES[key]
    os.close(descriptor)


def _mapping_of(array: np.ndarray) -> mmap.mmap | None:
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    mapping = base.obj if isinstance(base, memoryview) else base
    return mapping if isinstance(mapping, mmap.mmap) else None


def file_region(array: np.ndarray) -> tuple[int, int] | None:
    """(descriptor, offset) of `array`'s bytes in the file `map_input` mapped, when `array`
    is a C-contiguous view of such a mapping; else None."""
    mapping = _mapping_of(array)
    if mapping is None or mapping.closed or not array.flags.c_contiguous or array.nbytes == 0:
        return None
    descriptor = _SOURCES.get(id(mapping))
    if descriptor is None:
        return None
    origin = np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
    return descriptor, array.ctypes.data - origin


def read_into(array: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = array`` for a C-contiguous `out` of its shape and dtype; read from the
    input file with pread when `array` is a region of a mapped input, so that none of its
    pages is mapped into this process (a touched page maps its neighbours with it)."""
    region = file_region(array)
    if region is None or not out.flags.c_contiguous:
        out[...] = array
        return
    source, offset = region
    view = out.reshape(-1).view(np.uint8).data
    done = 0
    while done < len(view):
        count = os.preadv(source, [view[done:]], offset + done)
        if count == 0:  # the input ended early: it was truncated after it was read
            raise OSError(f"input file ended {len(view) - done} bytes early while reading")
        done += count


def copy_gap(source_offset: int, position: int, nbytes: int) -> int:
    """The bytes an output leaves free at `position` before a region of `nbytes` it copies
    from `source_offset` of its input: none for a region under `PLACE_FROM_BYTES`; else as
    many as put the region at its input's offset within a page, in the first page of a
    64 KiB block of the output. Measured on ext4 (Linux 6.18), the kernel copies a 392 MiB
    region so placed in 0.11-0.13 s; at the same offset within a page that does not start
    a 16-page block, in 0.16-0.19 s; a whole file of 553 MB, from offset 0, in 0.16 s."""
    if nbytes < PLACE_FROM_BYTES:
        return 0
    return (source_offset % mmap.PAGESIZE - position) % COPY_BLOCK_BYTES


def copy_region(
    array: np.ndarray,
    fd: int,
    offset: int,
    advance: Callable[[int], None] | None = None,
) -> bool:
    """Copy `array`'s bytes from its mapped input file into `fd` at `offset`, in the kernel.
    False (nothing written) when `array` is not a region of a mapped input or the kernel
    cannot copy between these two files; the caller then writes the bytes itself."""
    region = file_region(array)
    if region is None:
        return False
    source, start = region
    done = 0
    while done < array.nbytes:
        count = min(COPY_CHUNK_BYTES, array.nbytes - done)
        try:
            copied = os.copy_file_range(source, fd, count, start + done, offset + done)
        except OSError:
            if done:
                raise
            return False  # EXDEV, ENOSYS, EINVAL...: no kernel copy between these files
        if copied == 0:  # the input ended early: it was truncated after it was read
            raise OSError(f"input file ended {array.nbytes - done} bytes early while copying")
        done += copied
        if advance is not None:
            advance(copied)
    release_pages(array)  # the reader may have touched them (to check a CRC)
    return True


def copy_while(
    array: np.ndarray,
    fd: int,
    offset: int,
    alongside: Callable[[], T],
    advance: Callable[[int], None] | None = None,
) -> tuple[bool, T]:
    """`copy_region` on a second thread while `alongside()` runs on this one (the copy needs
    no GIL): (copied, what `alongside` returned). If `alongside` raises, that is raised once
    the copy has ended; the caller's output is then to be discarded."""
    return beside(lambda: copy_region(array, fd, offset, advance), alongside)


def copy_to_handle(
    array: np.ndarray,
    handle: IO[bytes],
    advance: Callable[[int], None] | None = None,
    alongside: Callable[[], object] | None = None,
) -> bool:
    """`copy_region` at the current position of a file object, which it moves past the
    bytes copied; `alongside` as in `copy_while`, run also when no copy can be made."""
    if file_region(array) is None:
        if alongside is not None:
            alongside()
        return False
    handle.flush()
    position = handle.tell()
    if alongside is not None:
        copied, _ = copy_while(array, handle.fileno(), position, alongside, advance)
    else:
        copied = copy_region(array, handle.fileno(), position, advance)
    if not copied:
        return False
    handle.seek(position + array.nbytes)
    return True


@contextlib.contextmanager
def output_region(fd: int, offset: int, nbytes: int) -> Iterator[np.ndarray]:
    """The bytes [offset, offset + nbytes) of the file `fd`, as a writable uint8 array to
    fill in place: the space allocated first (a full disk is an OSError here, never a
    SIGBUS while filling), the pages created in one pass, the mapping closed on exit.
    The caller must hold no view of the array past the block (a function of its own is the
    simple way): a mapping with live views cannot close, and stays resident until they go."""
    reserve(fd, offset, nbytes)
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    mapping = mmap.mmap(fd, offset + nbytes - base, offset=base)
    populate_for_writing(mapping)
    view = np.frombuffer(mapping, dtype=np.uint8, count=nbytes, offset=offset - base)
    try:
        yield view
    except BaseException as exc:
        # The failed frames still hold views of the mapping, which then could not close.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        del view
        with contextlib.suppress(BufferError):  # a view still alive: closed when collected
            mapping.close()


@contextlib.contextmanager
def region_at_handle(handle: IO[bytes], nbytes: int) -> Iterator[np.ndarray]:
    """`output_region` at the current position of a file object, which it moves past the
    region on a clean exit."""
    handle.flush()
    position = handle.tell()
    with output_region(handle.fileno(), position, nbytes) as view:
        yield view
    handle.seek(position + nbytes)
