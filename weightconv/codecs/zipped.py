"""Zip archives read in place: where a stored member's bytes lie in the archive file, checked
against what the central directory declares, and compressed members inflated within bounds.

A stored (uncompressed) member's bytes follow its local header: 30 bytes, then the name and
an extra field whose lengths the local header gives (they may differ from the central
directory's, as PyTorch's 64-byte alignment padding does). Nothing here knows about weights.

Example::

    with open_archive(path) as archive:
        info = archive.getinfo("archive/data/0")
        start = stored_offset(path, info, path.stat().st_size)
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from pathlib import Path

from weightconv.codecs.file_pieces import pieces
from weightconv.errors import FormatError, UsageError

LOCAL_HEADER = b"PK\x03\x04"
LOCAL_HEADER_SIZE = 30
#: Deflate cannot compress by more than about 1032:1; a member claiming more is a bomb.
MAX_DEFLATE_RATIO = 1100
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error)


def open_archive(path: str | os.PathLike[str]) -> zipfile.ZipFile:
    """The zip at `path`; a missing file is a UsageError, a broken one a FormatError."""
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a weight file") from None
    except (OSError, *_ZIP_ERRORS) as exc:
        raise FormatError(f"{path}: not a readable zip archive ({_one_line(exc)})") from None


def check_sizes(info: zipfile.ZipInfo, archive_size: int, limit: int, where: str) -> None:
    """Refuse a member whose declared sizes the archive cannot hold, or that would inflate past
    `limit` bytes or by more than deflate can compress, before any of it is read."""
    stored = info.compress_type == zipfile.ZIP_STORED
    if info.compress_size > archive_size:
        raise FormatError(
            f"{where}: declares {info.compress_size:,} compressed bytes, the archive has "
            f"{archive_size:,}"
        )
    if info.file_size > limit:
        raise FormatError(
            f"{where}: declares {info.file_size:,} bytes, more than the {limit:,} read here"
        )
    if stored and info.file_size != info.compress_size:
        raise FormatError(
            f"{where}: a stored member declaring {info.file_size:,} bytes and "
            f"{info.compress_size:,} compressed"
        )
    if not stored and info.file_size > max(info.compress_size, 1) * MAX_DEFLATE_RATIO:
        raise FormatError(
            f"{where}: declares {info.file_size:,} bytes from {info.compress_size:,} "
            f"compressed, a ratio deflate cannot reach (a zip bomb?)"
        )


def stored_offset(path: Path, info: zipfile.ZipInfo, archive_size: int) -> int:
    """Where the bytes of the stored, unencrypted member `info` start in the archive file."""
    where = f"{path}:{info.filename}"
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
        raise FormatError(f"{where}: compressed or encrypted, not stored")
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local = raw.read(LOCAL_HEADER_SIZE)
    if len(local) != LOCAL_HEADER_SIZE or local[:4] != LOCAL_HEADER:
        raise FormatError(f"{where}: no local file header at byte {info.header_offset:,}")
    name_length, extra_length = struct.unpack_from("<HH", local, 26)
    start = info.header_offset + LOCAL_HEADER_SIZE + name_length + extra_length
    if start + info.file_size > archive_size:
        raise FormatError(
            f"{where}: declares {info.file_size:,} bytes from byte {start:,}, the archive "
            f"has {archive_size:,}"
        )
    return start


def read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, archive_size: int, limit: int, where: str
) -> bytes:
    """The whole of a (small) member, its sizes checked first and its CRC-32 by zipfile."""
    check_sizes(info, archive_size, limit, where)
    try:
        data = archive.read(info)
    except (OSError, *_ZIP_ERRORS) as exc:
        raise FormatError(f"{where}: cannot be read ({_one_line(exc)})") from None
    if len(data) != info.file_size:
        raise FormatError(f"{where}: holds {len(data):,} bytes, declares {info.file_size:,}")
    return data


def crc32_of_file(fd: int, offset: int, nbytes: int, crc: int = 0) -> int:
    """CRC-32 of `nbytes` of the file `fd` from `offset`, read through a small buffer: none
    of its pages is mapped into this process, and zlib lets the GIL go, so this runs beside
    a kernel copy of the same bytes. `crc` is that of the bytes before them."""
    for piece in pieces(fd, offset, nbytes):
        crc = zlib.crc32(piece, crc)
    return crc


def check_stored_crc(path: Path, start: int, info: zipfile.ZipInfo, where: str) -> None:
    """The CRC-32 of a stored member's bytes, which lie from `start` in the archive file,
    summed from the file (`crc32_of_file`), against the central directory's."""
    try:
        with open(path, "rb") as raw:
            crc = crc32_of_file(raw.fileno(), start, info.file_size)
    except OSError as exc:
        raise FormatError(f"{where}: truncated or unreadable: {exc}") from None
    _compare(crc, info, where)


def check_crc(data: memoryview | bytes, info: zipfile.ZipInfo, where: str) -> None:
    """The CRC-32 of a member's bytes read in place, against the central directory's."""
    _compare(zlib.crc32(data), info, where)


def _compare(crc: int, info: zipfile.ZipInfo, where: str) -> None:
    if crc != info.CRC:
        raise FormatError(
            f"{where}: CRC-32 {crc:08x} of its data, the archive records {info.CRC:08x}: "
            f"the member is corrupt"
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
