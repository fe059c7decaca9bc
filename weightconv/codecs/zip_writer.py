"""A zip archive of stored (uncompressed) members written straight to a file: each member's
local header, its bytes at an aligned offset, then the central directory.

The layout is PKWARE's APPNOTE: a 30-byte local header, the name, an extra field (the ZIP64
sizes when a member reaches 4 GiB, then padding that puts the data on a multiple of the
alignment, under PyTorch's id ``FB``), the data; at the end one central directory entry per
member, the ZIP64 end records when an offset, a size or the count overflows, and the end of
central directory record. A member's CRC-32 is written into its local header once known, so
the bytes may come from anywhere: a `write`, the kernel copying a file region into place
(`array_member`), or a converter filling the mapped output (`filled_member`).

Example::

    archive = StoredZipWriter(handle)
    archive.add("archive/version", b"3\\n")
    start = archive.begin("archive/data/0", nbytes)   # the data goes at `start`
    ...                                               # written or copied there
    archive.end(crc)
    archive.finish()
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from weightconv._util.files import chunks
from weightconv._util.memory import release_pages
from weightconv._util.regions import copy_gap, copy_while, file_region, region_at_handle
from weightconv.codecs.zipped import crc32_of_file

#: Sizes, offsets and counts from these on are given in the ZIP64 fields.
ZIP64_FROM = 0xFFFFFFFF
ZIP64_COUNT_FROM = 0xFFFF
#: What a 4- or 2-byte field holds when its value is in the ZIP64 fields.
_FULL32, _FULL16 = 0xFFFFFFFF, 0xFFFF
#: DOS date of 1980-01-01 (the earliest a zip can say); time 00:00:00.
_DOS_DATE, _DOS_TIME = (0 << 9) | (1 << 5) | 1, 0
_PADDING_ID = 0x4246  # "FB": PyTorch's alignment padding
_ZIP64_ID = 0x0001
_LOCAL, _CENTRAL = 0x04034B50, 0x02014B50
#: Most bytes an extra field holds.
_EXTRA_LIMIT = 0xFFFF
#: Bytes per write when a member's array is streamed.
CHUNK_BYTES = 16 << 20
_END, _END64, _LOCATOR64 = 0x06054B50, 0x06064B50, 0x07064B50


@dataclass
class _Member:
    name: bytes
    offset: int  # of its local header
    data: int  # of its bytes
    size: int
    crc: int = 0


class StoredZipWriter:
    """Stored members written to `handle` (a seekable binary file at the archive's start)."""

    def __init__(self, handle: IO[bytes], alignment: int = 64) -> None:
        self.handle = handle
        self.alignment = alignment
        self.members: list[_Member] = []
        self._open: _Member | None = None

    def begin(self, name: str, nbytes: int, gap: Callable[[int], int] | None = None) -> int:
        """Write member `name`'s local header; the offset in the file where its `nbytes` of
        data go, aligned. The caller puts them there and calls `end` with their CRC-32.
        `gap`, given where the data would start, says how many more bytes to leave before
        them (a multiple of the alignment; left out when the extra field cannot hold it)."""
        if self._open is not None:
            raise ValueError(f"zip member {self._open.name!r} is not ended")
        encoded = name.encode("utf-8")
        offset = self.handle.tell()
        zip64 = nbytes >= ZIP64_FROM
        sizes = struct.pack("<HHQQ", _ZIP64_ID, 16, nbytes, nbytes) if zip64 else b""
        fixed = 30 + len(encoded) + len(sizes) + 4
        pad = -(offset + fixed) % self.alignment
        more = gap(offset + fixed + pad) if gap is not None else 0
        if more % self.alignment == 0 and len(sizes) + 4 + pad + more <= _EXTRA_LIMIT:
            pad += more
        extra = sizes + struct.pack("<HH", _PADDING_ID, pad) + b"Z" * pad
        stated = _FULL32 if zip64 else nbytes
        self.handle.write(
            struct.pack(
                "<IHHHHHIIIHH",
                _LOCAL,
                45 if zip64 else 20,
                0x800 if not encoded.isascii() else 0,
                0,
                _DOS_TIME,
                _DOS_DATE,
                0,  # CRC-32, written by `end`
                stated,
                stated,
                len(encoded),
                len(extra),
            )
            + encoded
            + extra
        )
        self._open = _Member(encoded, offset, offset + fixed + pad, nbytes)
        return self._open.data

    def end(self, crc: int) -> None:
        """The open member's data is in place: record its CRC-32 in its local header and move
        past the data."""
        member = self._open
        if member is None:
            raise ValueError("no zip member is open")
        member.crc = crc & 0xFFFFFFFF
        self.handle.flush()
        os.pwrite(self.handle.fileno(), struct.pack("<I", member.crc), member.offset + 14)
        self.handle.seek(member.data + member.size)
        self.members.append(member)
        self._open = None

    def add(self, name: str, data: bytes) -> None:
        """A small member written whole."""
        self.begin(name, len(data))
        self.handle.write(data)
        self.end(zlib.crc32(data))

    def finish(self) -> None:
        """The central directory and the end records."""
        if self._open is not None:
            raise ValueError(f"zip member {self._open.name!r} is not ended")
        start = self.handle.tell()
        for member in self.members:
            self.handle.write(_central_entry(member))
        size = self.handle.tell() - start
        count = len(self.members)
        zip64 = count >= ZIP64_COUNT_FROM or start >= ZIP64_FROM or size >= ZIP64_FROM
        if zip64:
            end64 = self.handle.tell()
            self.handle.write(
                struct.pack("<IQHHIIQQQQ", _END64, 44, 45, 45, 0, 0, count, count, size, start)
                + struct.pack("<IIQI", _LOCATOR64, 0, end64, 1)
            )
        self.handle.write(
            struct.pack(
                "<IHHHHIIH",
                _END,
                0,
                0,
                _FULL16 if zip64 else count,
                _FULL16 if zip64 else count,
                _FULL32 if zip64 else size,
                _FULL32 if zip64 else start,
                0,
            )
        )


def array_member(
    archive: StoredZipWriter,
    name: str,
    array: np.ndarray,
    *,
    head: bytes = b"",
    check: Callable[[], None] | None = None,
    advance: Callable[[int], None] | None = None,
) -> None:
    """Member `name`: `head`, then `array`'s bytes in C order, little-endian. A view of a
    mapped input is copied by the kernel, placed where it copies fastest, while its CRC-32
    is summed from the same file; any other array is written in chunks. `check`, which
    raises if the input's bytes are not what it recorded, runs alongside the copy, or
    before anything is written."""
    handle = archive.handle
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    region = file_region(array) if array.dtype == dtype else None
    place = None
    if region is not None:
        source = region[1]

        def place(position: int) -> int:
            return copy_gap(source, position + len(head), array.nbytes)

    archive.begin(name, len(head) + array.nbytes, place)
    handle.write(head)
    crc = zlib.crc32(head)
    if region is not None:

        def alongside() -> int:
            if check is not None:
                check()
            return crc32_of_file(*region, array.nbytes, crc)

        handle.flush()
        copied, summed = copy_while(array, handle.fileno(), handle.tell(), alongside, advance)
        if copied:
            archive.end(summed)
            return
        check = None  # it ran alongside
    if check is not None:
        check()
    for chunk in chunks(array, CHUNK_BYTES):
        data = np.ascontiguousarray(chunk, dtype=dtype).reshape(-1).view(np.uint8)
        handle.write(data.data)
        crc = zlib.crc32(data.data, crc)
        if advance is not None:
            advance(data.nbytes)
        del data  # before the next chunk is made, so only one is alive
        release_pages(chunk)  # a mapped input's pages, once written, need not stay resident
    archive.end(crc)


def filled_member(
    archive: StoredZipWriter,
    name: str,
    shape: Sequence[int],
    dtype: np.dtype[Any],
    fill: Callable[[np.ndarray], None],
    *,
    head: bytes = b"",
) -> None:
    """Member `name`: `head`, then an array of `shape` and `dtype` that `fill` makes right in
    the mapped output file (no intermediate array, no copy through write())."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    archive.begin(name, len(head) + nbytes)
    archive.handle.write(head)
    crc = zlib.crc32(head)
    if nbytes:
        with region_at_handle(archive.handle, nbytes) as region:
            fill(region.view(dtype).reshape(shape))
            crc = zlib.crc32(region.data, crc)
            del region  # no view may outlive the block, or the mapping cannot close
    archive.end(crc)


def _central_entry(member: _Member) -> bytes:
    big_size = member.size >= ZIP64_FROM
    big_offset = member.offset >= ZIP64_FROM
    fields = ([member.size, member.size] if big_size else []) + (
        [member.offset] if big_offset else []
    )
    zip64 = bool(fields)
    extra = struct.pack(f"<HH{len(fields)}Q", _ZIP64_ID, 8 * len(fields), *fields) if zip64 else b""
    return (
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            _CENTRAL,
            (3 << 8) | (45 if zip64 else 20),  # made on Unix
            45 if zip64 else 20,
            0x800 if not member.name.isascii() else 0,
            0,
            _DOS_TIME,
            _DOS_DATE,
            member.crc,
            _FULL32 if big_size else member.size,
            _FULL32 if big_size else member.size,
            len(member.name),
            len(extra),
            0,
            0,
            0,
            0,
            _FULL32 if big_offset else member.offset,
        )
        + member.name
        + extra
    )
