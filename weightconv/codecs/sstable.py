"""LevelDB-format tables ("SSTables"), the container of TensorFlow checkpoint indexes.

A table is ``[data blocks][metaindex block][index block][footer]``. A block is a
run of entries ``varint shared, varint unshared, varint value_length, key suffix,
value`` (keys share a prefix with the previous key except at restart points),
then the restart offsets as little-endian uint32s and their count. Every block is
followed by a 5-byte trailer: a compression byte (0 none, 1 Snappy) and the masked
CRC32C of the block and that byte. The 48-byte footer holds the block handles
(varint offset, varint size) of the metaindex and index blocks and a magic number.
The index block maps, for each data block, a key at least as large as the block's
last key to the block's handle.

`TableReader` checks every block's checksum before using it and walks entries
without copying values out of the memory-mapped file; `TableWriter` writes what
TensorFlow's BundleWriter writes: uncompressed blocks of about 256 KiB, a restart
every 16 keys, an empty metaindex block.

Example::

    with TableReader("model.ckpt.index") as table:
        for key, value in table.items():
            ...
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from weightconv._util.files import open_input
from weightconv.codecs import crc32c, protowire, snappy
from weightconv.errors import FormatError

MAGIC = 0xDB4775248B80FB57
MAGIC_BYTES = struct.pack("<Q", MAGIC)
FOOTER_SIZE = 48
TRAILER_SIZE = 5
NO_COMPRESSION = 0
SNAPPY_COMPRESSION = 1
BLOCK_SIZE = 256 * 1024
RESTART_INTERVAL = 16


@dataclass(frozen=True)
class BlockHandle:
    offset: int
    size: int


def has_table_footer(tail: bytes) -> bool:
    """True when `tail` (the last bytes of a file) ends in the table magic number."""
    return tail.endswith(MAGIC_BYTES)


def _varint(buf: memoryview, pos: int, end: int, what: str) -> tuple[int, int]:
    try:
        return protowire.read_varint(buf, pos, end)
    except protowire.WireError as exc:
        raise FormatError(f"{what}: {exc}") from None


def decode_handle(buf: memoryview, pos: int, end: int, what: str) -> tuple[BlockHandle, int]:
    offset, pos = _varint(buf, pos, end, what)
    size, pos = _varint(buf, pos, end, what)
    return BlockHandle(offset, size), pos


def encode_handle(handle: BlockHandle) -> bytes:
    return protowire.encode_varint(handle.offset) + protowire.encode_varint(handle.size)


def iter_block(block: memoryview, what: str) -> Iterator[tuple[bytes, memoryview]]:
    """Every (key, value) of one decoded block; values are views into `block`."""
    size = len(block)
    if size < 4:
        raise FormatError(f"{what}: block of {size} bytes is too short")
    (num_restarts,) = struct.unpack_from("<I", block, size - 4)
    if num_restarts == 0 or 4 + 4 * num_restarts > size:
        raise FormatError(
            f"{what}: corrupt block (restart count {num_restarts} does not fit in {size} bytes)"
        )
    end = size - 4 - 4 * num_restarts
    pos = 0
    key = b""
    while pos < end:
        shared, pos = _varint(block, pos, end, what)
        unshared, pos = _varint(block, pos, end, what)
        length, pos = _varint(block, pos, end, what)
        if shared > len(key) or pos + unshared + length > end:
            raise FormatError(f"{what}: corrupt entry at byte {pos} of the block")
        key = key[:shared] + bytes(block[pos : pos + unshared])
        pos += unshared
        yield key, block[pos : pos + length]
        pos += length


class TableReader:
    """A table read through a memory map; blocks are checked against their CRC32C."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        label: str | None = None,
        verify_checksums: bool = True,
        mapped: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.label = label or self.path
        self.verify_checksums = verify_checksums
        self._map: mmap.mmap | None = None
        with open_input(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < FOOTER_SIZE:
                raise FormatError(
                    f"{self.label}: {size} bytes is too short for a table "
                    f"(a {FOOTER_SIZE}-byte footer at least)"
                )
            if mapped:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                self.buffer = memoryview(self._map)
            else:
                self.buffer = memoryview(handle.read())
        self.size = size
        footer = self.buffer[size - FOOTER_SIZE :]
        if bytes(footer[-8:]) != MAGIC_BYTES:
            raise FormatError(
                f"{self.label}: not a LevelDB-format table (the last 8 bytes are "
                f"{bytes(footer[-8:]).hex()}, expected {MAGIC_BYTES.hex()})"
            )
        what = f"{self.label}: footer"
        self.metaindex, pos = decode_handle(footer, 0, 40, what)
        self.index, _ = decode_handle(footer, pos, 40, what)

    def close(self) -> None:
        """Unmap the file; while views of it are still alive it stays mapped until they go."""
        if self._map is not None:
            try:
                self.buffer.release()
                self._map.close()
            except BufferError:
                pass
            self._map = None

    def __enter__(self) -> TableReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_block(self, handle: BlockHandle, kind: str = "data") -> memoryview:
        """The contents of a block, checksum-verified and decompressed."""
        what = f"{self.label}: {kind} block at offset {handle.offset} ({handle.size} bytes)"
        end = handle.offset + handle.size
        if end + TRAILER_SIZE > self.size - FOOTER_SIZE:
            raise FormatError(f"{what}: extends past the end of the file ({self.size} bytes)")
        contents = self.buffer[handle.offset : end]
        compression = self.buffer[end]
        if self.verify_checksums:
            (stored,) = struct.unpack_from("<I", self.buffer, end + 1)
            actual = crc32c.extend(crc32c.value(contents), bytes([compression]))
            if crc32c.unmask(stored) != actual:
                raise FormatError(
                    f"{what}: block checksum mismatch (stored "
                    f"{crc32c.unmask(stored):#010x}, computed {actual:#010x}); "
                    f"the file is corrupt"
                )
        if compression == NO_COMPRESSION:
            return contents
        if compression == SNAPPY_COMPRESSION:
            try:
                return memoryview(snappy.decompress(contents))
            except FormatError as exc:
                raise FormatError(f"{what}: {exc}") from None
        raise FormatError(f"{what}: unknown compression type {compression}")

    def data_blocks(self) -> Iterator[BlockHandle]:
        index = self.read_block(self.index, "index")
        what = f"{self.label}: index block"
        for _, value in iter_block(index, what):
            handle, _ = decode_handle(value, 0, len(value), what)
            yield handle

    def get(self, key: bytes) -> memoryview | None:
        """The value stored under `key`, reading only the one data block that may hold it."""
        index = self.read_block(self.index, "index")
        what = f"{self.label}: index block"
        for separator, value in iter_block(index, what):
            if separator >= key:
                handle, _ = decode_handle(value, 0, len(value), what)
                block_what = f"{self.label}: data block at offset {handle.offset}"
                for found, stored in iter_block(self.read_block(handle), block_what):
                    if found == key:
                        return stored
                    if found > key:
                        return None
                return None
        return None

    def items(self) -> Iterator[tuple[bytes, memoryview]]:
        """Every (key, value) in key order; values are views valid until `close`."""
        previous: bytes | None = None
        for handle in self.data_blocks():
            what = f"{self.label}: data block at offset {handle.offset}"
            for key, value in iter_block(self.read_block(handle), what):
                if previous is not None and key <= previous:
                    raise FormatError(f"{what}: keys out of order ({previous!r} then {key!r})")
                previous = key
                yield key, value


# Writing ---------------------------------------------------------------------------------


def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    """A short key k with start <= k < limit (LevelDB's bytewise FindShortestSeparator)."""
    common = 0
    for a, b in zip(start, limit, strict=False):
        if a != b:
            break
        common += 1
    if common < min(len(start), len(limit)):
        byte = start[common]
        if byte < 0xFF and byte + 1 < limit[common]:
            return start[:common] + bytes([byte + 1])
    return start


def _short_successor(key: bytes) -> bytes:
    """A short key k >= key (LevelDB's bytewise FindShortSuccessor)."""
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes([byte + 1])
    return key


class _BlockBuilder:
    def __init__(self, restart_interval: int) -> None:
        self.restart_interval = restart_interval
        self.reset()

    def reset(self) -> None:
        self.buffer = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b""
        self.entries = 0

    def add(self, key: bytes, value: bytes | memoryview) -> None:
        shared = 0
        if self.counter < self.restart_interval:
            limit = min(len(self.last_key), len(key))
            while shared < limit and self.last_key[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buffer))
            self.counter = 0
        self.buffer += protowire.encode_varint(shared)
        self.buffer += protowire.encode_varint(len(key) - shared)
        self.buffer += protowire.encode_varint(len(value))
        self.buffer += key[shared:]
        self.buffer += value
        self.last_key = key
        self.counter += 1
        self.entries += 1

    def estimated_size(self) -> int:
        return len(self.buffer) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        tail = struct.pack(f"<{len(self.restarts)}I", *self.restarts)
        return bytes(self.buffer) + tail + struct.pack("<I", len(self.restarts))


class TableWriter:
    """Write a table to an open binary file; keys must be added in increasing order.

    Example::

        with open(path, "wb") as f:
            table = TableWriter(f)
            table.add(b"", header)
            table.finish()
    """

    def __init__(self, handle: BinaryIO, *, block_size: int = BLOCK_SIZE) -> None:
        self.handle = handle
        self.block_size = block_size
        self.offset = 0
        self.data = _BlockBuilder(RESTART_INTERVAL)
        self.index = _BlockBuilder(1)
        self.last_key: bytes | None = None
        self.pending: BlockHandle | None = None

    def add(self, key: bytes, value: bytes | memoryview) -> None:
        if self.last_key is not None and key <= self.last_key:
            raise ValueError(f"table keys must increase: {self.last_key!r} then {key!r}")
        if self.pending is not None:
            self.index.add(
                _shortest_separator(self.last_key or b"", key), encode_handle(self.pending)
            )
            self.pending = None
        self.data.add(key, value)
        self.last_key = key
        if self.data.estimated_size() >= self.block_size:
            self._flush()

    def _flush(self) -> None:
        if self.data.entries == 0:
            return
        self.pending = self._write_block(self.data.finish())
        self.data.reset()

    def _write_block(self, contents: bytes) -> BlockHandle:
        handle = BlockHandle(self.offset, len(contents))
        crc = crc32c.mask(crc32c.extend(crc32c.value(contents), bytes([NO_COMPRESSION])))
        self.handle.write(contents)
        self.handle.write(struct.pack("<BI", NO_COMPRESSION, crc))
        self.offset += len(contents) + TRAILER_SIZE
        return handle

    def finish(self) -> int:
        """Write the remaining blocks and the footer; return the table's size in bytes."""
        self._flush()
        if self.pending is not None:
            self.index.add(_short_successor(self.last_key or b""), encode_handle(self.pending))
            self.pending = None
        metaindex = self._write_block(_BlockBuilder(RESTART_INTERVAL).finish())
        index = self._write_block(self.index.finish())
        footer = encode_handle(metaindex) + encode_handle(index)
        self.handle.write(footer.ljust(40, b"\0") + MAGIC_BYTES)
        self.offset += FOOTER_SIZE
        return self.offset
