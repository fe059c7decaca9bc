"""The tensors of a safetensors file, viewed straight from the mapped file.

The package's NumPy side copies every tensor it gives (``get_tensor`` reads the bytes into a new
buffer: the largest tensor twice over while a writer reorders it, and never a view a writer can
copy in the kernel), and it asks NumPy for a dtype named after the header's code, which fails
for float8 (``F8_E4M3``, ``F8_E5M2``: ``AttributeError``). The bytes are where the header puts
them (the layout is in `weightconv.formats.safetensors.write`): after the 8-byte length and the
header, at the tensor's ``data_offsets``. They are viewed there, the file memory-mapped
(`map_input`, so a writer can copy a view file to file in the kernel), not read whole.

The package has checked the header when the file was read. It is parsed again here when the
file is first mapped, and each tensor's entry must still be what was read then (dtype, shape,
size, within the file), so a file changed since is refused, never misread.

Example::

    mapped = MappedFile(Path("m.safetensors"))
    mapped.view("w", "F8_E4M3", (4, 3), np.dtype(ml_dtypes.float8_e4m3fn))
"""

from __future__ import annotations

import json
import math
import mmap
from pathlib import Path
from typing import Any

import numpy as np

from weightconv._util.files import open_input
from weightconv._util.regions import map_input
from weightconv.errors import FormatError


class MappedFile:
    """One safetensors file, mapped and its header parsed when a tensor is first asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mapping: mmap.mmap | None = None
        self._entries: dict[str, Any] = {}
        self._data_start = 0

    def view(
        self, name: str, code: str, shape: tuple[int, ...], dtype: np.dtype[Any]
    ) -> np.ndarray:
        """Tensor `name` (read as `code`, `shape`) as a read-only view of the mapped file."""
        mapping = self._map()
        nbytes = math.prod(shape) * dtype.itemsize
        entry = self._entries.get(name)
        span = _span(entry, code, shape)
        if span is None or span[1] - span[0] != nbytes or self._data_start + span[1] > len(mapping):
            raise FormatError(f"{self.path}: tensor {name!r} changed while it was read")
        if nbytes == 0:
            return np.empty(shape, dtype)
        start = self._data_start + span[0]
        return np.frombuffer(mapping, dtype, math.prod(shape), start).reshape(shape)

    def _map(self) -> mmap.mmap:
        if self._mapping is not None:
            return self._mapping
        with open_input(self.path) as handle:
            try:
                mapping = map_input(handle)
            except (OSError, ValueError) as exc:
                raise FormatError(f"{self.path}: cannot be mapped ({exc})") from None
        length = int.from_bytes(mapping[:8], "little")
        try:
            header = json.loads(mapping[8 : 8 + length])
        except (ValueError, UnicodeDecodeError):
            header = None
        if not isinstance(header, dict) or len(mapping) < 8 + length:
            raise FormatError(f"{self.path}: its header changed while it was read")
        self._entries = header
        self._data_start = 8 + length
        self._mapping = mapping
        return mapping


def _span(entry: Any, code: str, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The entry's [begin, end) in the data, if it still says `code` and `shape`."""
    if not isinstance(entry, dict) or entry.get("dtype") != code:
        return None
    if entry.get("shape") != list(shape):
        return None
    offsets = entry.get("data_offsets")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(n) is int for n in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        return None
    return offsets[0], offsets[1]
