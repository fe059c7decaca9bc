"""A pickle's large byte strings read in place from a memory map, not copied into memory.

Unpickling a weight dict copies every tensor's bytes into a new bytes object, so loading a
553 MB ``.npy`` costs 553 MB. `MappedPickle` first walks the opcodes (their lengths only:
nothing is executed or decoded) and then serves the unpickler a stream in which each byte
string of at least `MIN_BYTES` is replaced by a short token; `views` maps every token to a
read-only view of the mapped bytes, which the restricted unpickler turns into arrays with
``np.frombuffer``. Byte strings inside a protocol-4 frame are left alone (the frame's length
covers them); pickle writes large ones outside frames anyway. Anything the walk does not
recognise makes `scan` return None, and the caller unpickles the file as usual.

Example::

    mapped = MappedPickle.scan(mapping, start)
    if mapped is not None:
        obj = safe_pickle.load(mapped, name=path, views=mapped.views)
"""

from __future__ import annotations

import mmap
import os
import pickletools
import struct
from typing import Any

from weightconv.errors import FormatError

MIN_BYTES = 64 * 1024
_OPS: dict[str, Any] = pickletools.code2op  # type: ignore[attr-defined]
_BINBYTES, _BINBYTES8, _BINSTRING, _BYTEARRAY8 = b"B", b"\x8e", b"T", b"\x96"
_SHORT_BINBYTES, _SHORT_BINSTRING, _FRAME, _STOP = b"C", b"U", b"\x95", b"."
_LENGTHS = {
    _BINBYTES: ("<I", 4),
    _BINBYTES8: ("<Q", 8),
    _BINSTRING: ("<i", 4),
    _BYTEARRAY8: ("<Q", 8),
}  # protocol 5 writes an array's buffer in-band as this


class MappedPickle:
    """A read-only file object over a pickle in `buffer`, large payloads swapped for tokens."""

    def __init__(
        self, buffer: Any, segments: list[tuple[int, int] | bytes], views: dict[bytes, memoryview]
    ) -> None:
        self._buffer = memoryview(buffer)
        self._segments = segments
        self.views = views
        self._index = 0
        self._offset = 0  # within the current segment

    @classmethod
    def scan(cls, buffer: Any, start: int) -> MappedPickle | None:
        """Walk the opcodes of the pickle at `start`; None when the walk cannot finish."""
        data = memoryview(buffer)
        size = len(data)
        nonce = os.urandom(8).hex().encode()
        segments: list[tuple[int, int] | bytes] = []
        views: dict[bytes, memoryview] = {}
        pos = kept = start
        frame_end = -1
        while pos < size:
            code = bytes(data[pos : pos + 1])
            op = _OPS.get(code.decode("latin1"))
            if op is None:
                return None
            arg_start = pos + 1
            if code in _LENGTHS and pos >= frame_end:
                fmt, width = _LENGTHS[code]
                if arg_start + width > size:
                    return None
                (length,) = struct.unpack_from(fmt, data, arg_start)
                payload = arg_start + width
                if length < 0 or payload + length > size:
                    return None
                if length >= MIN_BYTES:
                    token = b"\0weightconv-view:" + nonce + b":%d" % len(views)
                    views[token] = data[payload : payload + length]
                    segments.append((kept, pos))
                    short = _SHORT_BINSTRING if code == _BINSTRING else _SHORT_BINBYTES
                    segments.append(short + bytes([len(token)]) + token)
                    pos = kept = payload + length
                    continue
            end = _argument_end(op, data, arg_start, size)
            if end is None:
                return None
            if code == _FRAME:
                (frame_length,) = struct.unpack_from("<Q", data, arg_start)
                frame_end = end + frame_length
            pos = end
            if code == _STOP:
                segments.append((kept, pos))
                return cls(buffer, segments, views)
        return None

    # the file-object interface the unpickler uses ----------------------------------------

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while (n < 0 or len(out) < n) and self._index < len(self._segments):
            piece = self._piece()
            want = (
                len(piece) - self._offset if n < 0 else min(n - len(out), len(piece) - self._offset)
            )
            out += piece[self._offset : self._offset + want]
            self._advance(want)
        return bytes(out)

    def readinto(self, target: Any) -> int:
        data = self.read(len(memoryview(target)))
        memoryview(target)[: len(data)] = data
        return len(data)

    def readline(self) -> bytes:
        out = bytearray()
        while self._index < len(self._segments):
            piece = self._piece()
            end = bytes(piece[self._offset : self._offset + (1 << 16)]).find(b"\n")
            take = min(len(piece) - self._offset, 1 << 16) if end < 0 else end + 1
            out += piece[self._offset : self._offset + take]
            self._advance(take)
            if end >= 0:
                break
        return bytes(out)

    def _piece(self) -> memoryview | bytes:
        segment = self._segments[self._index]
        if isinstance(segment, bytes):
            return segment
        return self._buffer[segment[0] : segment[1]]

    def _advance(self, count: int) -> None:
        self._offset += count
        if self._offset >= len(self._piece()):
            self._index += 1
            self._offset = 0


def _argument_end(op: Any, data: memoryview, pos: int, size: int) -> int | None:
    """Where the argument of opcode `op` starting at `pos` ends, by its declared encoding."""
    arg = op.arg
    if arg is None:
        return pos
    n = arg.n
    if n >= 0:
        return pos + n if pos + n <= size else None
    if n == pickletools.UP_TO_NEWLINE:
        lines = 2 if arg.name == "stringnl_noescape_pair" else 1
        for _ in range(lines):
            newline = bytes(data[pos : min(size, pos + (1 << 16))]).find(b"\n")
            if newline < 0:
                return None
            pos += newline + 1
        return pos
    widths = {
        pickletools.TAKEN_FROM_ARGUMENT1: ("<B", 1),
        pickletools.TAKEN_FROM_ARGUMENT4: ("<i", 4),
        pickletools.TAKEN_FROM_ARGUMENT4U: ("<I", 4),
        pickletools.TAKEN_FROM_ARGUMENT8U: ("<Q", 8),
    }
    if n not in widths:
        return None
    fmt, width = widths[n]
    if pos + width > size:
        return None
    (length,) = struct.unpack_from(fmt, data, pos)
    end = pos + width + length
    return end if length >= 0 and end <= size else None


_PUT, _LONG_BINPUT = b"p", b"r"
_WIDTHS = {
    pickletools.TAKEN_FROM_ARGUMENT1: ("<B", 1),
    pickletools.TAKEN_FROM_ARGUMENT4: ("<i", 4),
    pickletools.TAKEN_FROM_ARGUMENT4U: ("<I", 4),
    pickletools.TAKEN_FROM_ARGUMENT8U: ("<Q", 8),
}


def length_problem(buffer: Any, start: int) -> str | None:
    """What in the pickle at `start` declares more than the file holds, or None.

    The unpickler allocates what an opcode declares before it reads: a byte string's
    length, a frame's, a memo index (the memo grows to it). Each is checked against the
    bytes that remain (a memo index against the bytes read so far: every memoized object
    took one opcode at least). `buffer` is bytes or a memory map; no view of it is kept.
    The walk stops, with None, at STOP or at anything it does not know (the unpickler
    reports those).
    """
    size = len(buffer)
    pos = start
    while pos < size:
        code = bytes(buffer[pos : pos + 1])
        op = _OPS.get(code.decode("latin1"))
        if op is None or code == _STOP:
            return None
        arg_pos = pos + 1
        arg = op.arg
        if arg is None:
            pos = arg_pos
            continue
        n = arg.n
        if n >= 0:
            end = arg_pos + n
            if end > size:
                return None  # truncated: the unpickler says so
            if code in (_FRAME, _LONG_BINPUT):
                fmt = "<Q" if code == _FRAME else "<I"
                (value,) = struct.unpack_from(fmt, buffer, arg_pos)
                if code == _FRAME and value > size - end:
                    return (
                        f"a frame at byte {pos} declares {value:,} bytes, "
                        f"{size - end:,} remain in the file"
                    )
                if code == _LONG_BINPUT and value > pos:
                    return f"memo index {value:,} at byte {pos} is past the {pos:,} bytes before it"
            pos = end
        elif n == pickletools.UP_TO_NEWLINE:
            lines = 2 if arg.name == "stringnl_noescape_pair" else 1
            end = arg_pos
            for _ in range(lines):
                newline = buffer.find(b"\n", end, min(size, end + (1 << 16)))
                if newline < 0:
                    return None
                end = newline + 1
            if code == _PUT:
                text = bytes(buffer[arg_pos : end - 1]).strip()
                if text.isdigit() and (len(text) > 20 or int(text) > pos):
                    return (
                        f"memo index {text[:24].decode()} at byte {pos} is past the bytes before it"
                    )
            pos = end
        elif n in _WIDTHS:
            fmt, width = _WIDTHS[n]
            if arg_pos + width > size:
                return None
            (length,) = struct.unpack_from(fmt, buffer, arg_pos)
            payload = arg_pos + width
            if length < 0 or length > size - payload:
                return (
                    f"{op.name} at byte {pos} declares {length:,} bytes, "
                    f"{size - payload:,} remain in the file"
                )
            pos = payload + length
        else:
            return None
    return None


def check_lengths(handle: Any, name: str) -> None:
    """Refuse the pickle at the file's current position when an opcode declares more than
    the file holds (`length_problem`), before an unpickler allocates it."""
    start = handle.tell()
    if os.fstat(handle.fileno()).st_size <= start:
        return
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
        problem = length_problem(mapping, start)
    if problem is not None:
        raise FormatError(f"{name}: truncated or corrupt pickle after the .npy header: {problem}")
