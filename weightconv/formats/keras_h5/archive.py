"""Where a Keras file's HDF5 bytes are, and the HDF5 conventions under both Keras layouts.

A ``.keras`` archive is a zip of ``config.json``, ``metadata.json`` and ``model.weights.h5``.
The weights member is read in place: a stored member (as Keras writes it) through a window on
the zip file, a compressed one through memory. `LinkOrder` reads, from the same bytes, the
order in which a group's links were created, which h5py's sorted listing loses and which is
Keras 3's layer order in a ``.weights.h5`` without a config. Name lists (``layer_names``,
``weight_names``) are attributes that Keras splits into numbered parts when long.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from weightconv._util.hdf5 import check_global_heaps, data_extents, guard, read_attribute
from weightconv.codecs import zipped
from weightconv.errors import FormatError, UsageError
from weightconv.formats.keras_h5.config import (
    ARCHIVE_CONFIG,
    ARCHIVE_WEIGHTS,
    COUNTER,
    HDF5_MAGIC,
    MAX_CONFIG_BYTES,
    ZIP_MAGIC,
    attr_text,
    one_line,
    parse_config,
)

#: Keras splits a name-list attribute whose fixed-width array would exceed this many bytes.
ATTRIBUTE_LIMIT = 64512


#: The largest compressed weights member inflated into memory (Keras stores it uncompressed).
MAX_INFLATED_BYTES = 4 << 30
#: Deflate cannot compress by more than about 1032:1; a member claiming more is a bomb.
MAX_DEFLATE_RATIO = 1100
#: Keras stores model.weights.h5 uncompressed; deflated float weights shrink by a few times
#: at most, and even mostly-zero ones by far less than this.
MAX_WEIGHTS_RATIO = 100


def check_member(info: zipfile.ZipInfo, archive_size: int, limit: int, path: Path) -> None:
    """Refuse a member whose declared sizes the archive cannot hold, or that would inflate
    past `limit` bytes or by more than deflate can compress, before any of it is read."""
    where = f"{path}:{info.filename}"
    if info.compress_size > archive_size:
        raise FormatError(
            f"{where}: declares {info.compress_size:,} compressed bytes, the archive has "
            f"{archive_size:,}"
        )
    if info.file_size > limit:
        raise FormatError(
            f"{where}: declares {info.file_size:,} bytes uncompressed, more than the "
            f"{limit:,} read here"
        )
    stored = info.compress_type == zipfile.ZIP_STORED
    if stored and info.file_size != info.compress_size:
        raise FormatError(
            f"{where}: a stored member declaring {info.file_size:,} bytes uncompressed "
            f"and {info.compress_size:,} compressed"
        )
    if not stored and info.file_size > max(info.compress_size, 1) * MAX_DEFLATE_RATIO:
        raise FormatError(
            f"{where}: declares {info.file_size:,} bytes from {info.compress_size:,} "
            f"compressed, a ratio deflate cannot reach (a zip bomb?)"
        )


def is_keras_archive(path: Path) -> bool:
    """True for a zip holding ``model.weights.h5`` (or a Keras config and metadata)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return ARCHIVE_WEIGHTS in names or {ARCHIVE_CONFIG, "metadata.json"} <= names


class _Window(io.RawIOBase):
    """A read-only file object over `size` bytes of `raw` from `offset`: a stored zip member."""

    def __init__(self, raw: io.BufferedReader, offset: int, size: int) -> None:
        super().__init__()
        self._raw, self._offset, self._size, self._pos = raw, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._size - self._pos))
        if count == 0:
            return 0
        self._raw.seek(self._offset + self._pos)
        got = self._raw.readinto(view[:count]) or 0
        self._pos += got
        return got


#: Files whose global heaps `check_global_heaps` passed: (path, member, size, mtime).
_HEAPS_CHECKED: set[tuple[str, str | None, int, int]] = set()


@dataclass(frozen=True)
class Source:
    """Where the HDF5 bytes are: a file, or a member of a ``.keras`` zip."""

    path: Path
    member: str | None = None
    offset: int = -1  # of a stored member's data in the zip; -1 when compressed
    size: int = 0

    def __str__(self) -> str:
        return f"{self.path}" if self.member is None else f"{self.path}:{self.member}"

    @property
    def hdf5_size(self) -> int:
        """How many bytes the HDF5 file has."""
        return self.size if self.member is not None else self.path.stat().st_size

    def attribute(self, obj: Any, name: str, default: Any = None) -> Any:
        """Attribute `name` of `obj`, checked before it is read (`read_attribute`)."""
        value = read_attribute(obj, name, self, self.hdf5_size)
        return default if value is None else value

    @contextlib.contextmanager
    def raw(self) -> Iterator[Any]:
        """The HDF5 file's bytes as a binary file object."""
        with open(self.path, "rb") as raw:
            if self.member is None:
                yield raw
            elif self.offset >= 0:
                yield _Window(raw, self.offset, self.size)
            else:
                with zipfile.ZipFile(raw) as archive:
                    yield io.BytesIO(archive.read(self.member))

    @contextlib.contextmanager
    def open(self) -> Iterator[h5py.File]:
        with contextlib.ExitStack() as stack:
            try:
                if self.member is None:
                    target: Any = str(self.path)
                elif self.offset >= 0:
                    raw = stack.enter_context(open(self.path, "rb"))
                    target = _Window(raw, self.offset, self.size)
                else:
                    target = stack.enter_context(tempfile.TemporaryFile())
                    with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as member:
                        shutil.copyfileobj(member, target, 1 << 20)  # CRC-32 checked at the end
                    target.seek(0)
                if isinstance(target, str):
                    raw_file: Any = stack.enter_context(open(target, "rb"))
                    size = self.path.stat().st_size
                else:
                    raw_file, size = target, self.size
                with guard(self, "HDF5 superblock"):
                    handle = stack.enter_context(h5py.File(target, "r"))
                stat = self.path.stat()
                key = (str(self.path.resolve()), self.member, stat.st_size, stat.st_mtime_ns)
                if key not in _HEAPS_CHECKED:  # once per file, not per lazy tensor
                    check_global_heaps(raw_file, size, self, data_extents(handle, self))
                    _HEAPS_CHECKED.add(key)
            except FileNotFoundError:
                raise UsageError(f"{self.path}: no such file") from None
            except IsADirectoryError:
                raise UsageError(f"{self.path}: is a directory, not a weight file") from None
            except (
                OSError,
                zipfile.BadZipFile,
                KeyError,
                NotImplementedError,
                EOFError,
                zlib.error,
            ) as exc:
                raise FormatError(f"{self}: not a readable HDF5 file ({one_line(exc)})") from None
            yield handle


def open_source(path: Path) -> tuple[Source, dict[str, Any] | None]:
    """The HDF5 source of `path` and, for a ``.keras`` archive, its parsed config.json."""
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, not a weight file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(ZIP_MAGIC))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read: {exc.strerror}") from None
    if head != ZIP_MAGIC:
        return Source(path), None
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if ARCHIVE_WEIGHTS not in names:
                other = sorted(n for n in names if n.startswith("model.weights"))
                raise FormatError(
                    f"{path}: a Keras archive without {ARCHIVE_WEIGHTS}"
                    + (f" (it holds {', '.join(other)}, which is not HDF5)" if other else "")
                )
            config = None
            archive_size = path.stat().st_size
            if ARCHIVE_CONFIG in names:
                check_member(archive.getinfo(ARCHIVE_CONFIG), archive_size, MAX_CONFIG_BYTES, path)
                config = parse_config(
                    archive.read(ARCHIVE_CONFIG).decode("utf-8", "replace"),
                    f"{path}:{ARCHIVE_CONFIG}",
                )
            info = archive.getinfo(ARCHIVE_WEIGHTS)
            stored = info.compress_type == zipfile.ZIP_STORED
            check_member(info, archive_size, archive_size if stored else MAX_INFLATED_BYTES, path)
            if not stored and info.file_size > max(info.compress_size, 1) * MAX_WEIGHTS_RATIO:
                raise FormatError(
                    f"{path}:{info.filename}: declares {info.file_size:,} bytes from "
                    f"{info.compress_size:,} compressed; weights do not compress "
                    f"{MAX_WEIGHTS_RATIO}:1 (a zip bomb?)"
                )
            offset = -1
            if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
                with open(path, "rb") as raw:
                    raw.seek(info.header_offset)
                    local = raw.read(30)
                if local[:4] == ZIP_MAGIC:
                    name_length = int.from_bytes(local[26:28], "little")
                    extra_length = int.from_bytes(local[28:30], "little")
                    offset = info.header_offset + 30 + name_length + extra_length
                    if offset + info.file_size > archive_size:
                        raise FormatError(
                            f"{path}:{ARCHIVE_WEIGHTS}: declares {info.file_size:,} bytes "
                            f"from byte {offset:,}, the archive has {archive_size:,}"
                        )
                    zipped.check_stored_crc(path, offset, info, f"{path}:{info.filename}")
    except (zipfile.BadZipFile, OSError, NotImplementedError, EOFError, zlib.error) as exc:
        raise FormatError(f"{path}: not a readable zip archive ({one_line(exc)})") from None
    return Source(path, ARCHIVE_WEIGHTS, offset, info.file_size), config


class LinkOrder:
    """The names in an HDF5 group in the order they were created.

    h5py lists names sorted. An old-style group (what h5py makes by default, and so what
    Keras writes) keeps its link names in a local heap, appended as links are made: its
    object header's symbol-table message (type 0x11) gives the heap, whose data segment
    holds the names NUL-terminated, each padded to 8 bytes. Groups of any other kind, or
    anything unexpected, fall back to natural order (``dense``, ``dense_1``, ``dense_2``).
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        try:
            self._base, self._offset_size, self._length_size = self._superblock()
        except (OSError, ValueError):
            self._base = -1

    def _read(self, at: int, size: int) -> bytes:
        self._raw.seek(at)
        data = self._raw.read(size)
        if len(data) != size:
            raise ValueError("short read")
        return data

    def _superblock(self) -> tuple[int, int, int]:
        at = 0
        while self._read(at, 8) != HDF5_MAGIC:
            at = 512 if at == 0 else at * 2
        head = self._read(at, 40)
        version = head[8]
        if version in (0, 1):
            sizes, base_at = head[13:15], 24 if version == 0 else 28
        else:
            sizes, base_at = head[9:11], 12
        base = int.from_bytes(head[base_at : base_at + sizes[0]], "little")
        return base, sizes[0], sizes[1]

    def order(self, group: h5py.Group) -> list[str]:
        names = sorted(group, key=_natural)
        if self._base < 0:
            return names
        try:
            created = self._heap_names(h5py.h5o.get_info(group.id).addr)
        except (OSError, ValueError, IndexError):
            return names
        present = set(names)
        ordered = [name for name in created if name in present]
        return ordered + [name for name in names if name not in set(ordered)]

    def _heap_names(self, address: int) -> list[str]:
        def number(data: bytes) -> int:
            return int.from_bytes(data, "little")

        o, length = self._offset_size, self._length_size
        header = self._read(self._base + address, 16)
        if header[0] != 1:
            raise ValueError("not a version 1 object header")
        messages, blocks = number(header[2:4]), [(address + 16, number(header[8:12]))]
        heap = -1
        while blocks and messages > 0 and heap < 0:
            start, size = blocks.pop(0)
            body, pos = self._read(self._base + start, size), 0
            while pos + 8 <= size and messages > 0:
                kind, length_of = number(body[pos : pos + 2]), number(body[pos + 2 : pos + 4])
                data = body[pos + 8 : pos + 8 + length_of]
                if kind == 0x11:
                    heap = number(data[o : 2 * o])
                    break
                if kind == 0x10:
                    blocks.append((number(data[:o]), number(data[o : o + length])))
                pos += 8 + length_of
                messages -= 1
        if heap < 0:
            raise ValueError("no symbol table message")
        head = self._read(self._base + heap, 8 + 2 * length + o)
        if head[:4] != b"HEAP":
            raise ValueError("no local heap")
        size = number(head[8 : 8 + length])
        free = number(head[8 + length : 8 + 2 * length])
        data = self._read(self._base + number(head[8 + 2 * length : 8 + 2 * length + o]), size)
        end, names, pos = min(free, size), [], 0
        while pos < end:
            stop = data.index(b"\0", pos)
            if stop > pos:
                names.append(data[pos:stop].decode("utf-8"))
            pos = (stop + 8) // 8 * 8
        return names


def _natural(name: str) -> tuple[str, int, str]:
    match = COUNTER.search(name)
    return (name[: match.start()], int(match.group()[1:]), name) if match else (name, 0, name)


def has_name_list(attrs: h5py.AttributeManager, name: str) -> bool:
    """True when `attrs` hold the name list `name`, whole or split."""
    return name in attrs or f"{name}0" in attrs


def read_name_list(obj: Any, name: str, source: Source) -> list[str]:
    """A Keras name-list attribute of `obj`, joined from ``name0``, ``name1``... when split."""
    attrs = obj.attrs
    if name in attrs:
        parts = [source.attribute(obj, name)]
    else:
        parts, index = [], 0
        while f"{name}{index}" in attrs:
            parts.append(source.attribute(obj, f"{name}{index}"))
            index += 1
    return [
        attr_text(item)
        for part in parts
        for item in np.asarray(part).reshape(-1)
        if isinstance(item, str | bytes | np.bytes_ | np.str_)
    ]


def write_name_list(
    attrs: h5py.AttributeManager, name: str, values: Sequence[str], target: Path
) -> None:
    """A list of names as Keras stores it: one attribute, or ``name0``, ``name1``... holding
    consecutive runs when the list as a fixed-width array would pass ATTRIBUTE_LIMIT bytes."""
    encoded = [value.encode("utf-8") for value in values]
    if not encoded:
        attrs[name] = []
        return
    width = max(max(len(e) for e in encoded), 1)
    if width > ATTRIBUTE_LIMIT:
        raise UsageError(
            f"{target}: a name of {width} bytes cannot be stored in a Keras "
            f"HDF5 attribute (limit {ATTRIBUTE_LIMIT})"
        )
    parts = 1
    while -(-len(encoded) // parts) * width > ATTRIBUTE_LIMIT:
        parts += 1
    if parts == 1:
        attrs[name] = encoded
        return
    size, extra = divmod(len(encoded), parts)
    start = 0
    for index in range(parts):
        stop = start + size + (1 if index < extra else 0)
        attrs[f"{name}{index}"] = encoded[start:stop]
        start = stop
