"""Weight files as plain dicts and as lazy handles, the way safetensors users expect them.

`open` gives a handle that lists a file's tensors by the names the file gives them and reads
one only when asked for it (a checkpoint reads that tensor's region, a caffemodel that blob,
an HDF5 file that dataset); `load_dict` and `save_dict` go between files and plain
``{name: array}`` dicts. Tensors come as the file stores them: no layout is changed.

    >>> import numpy as np, tempfile, os, weightconv
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "model.ckpt")
    >>> result = weightconv.save_dict({"dense/kernel": np.ones((3, 2), np.float32)}, path)
    >>> with weightconv.open(path) as f:
    ...     f.keys(), f.shape("dense/kernel"), str(f.dtype("dense/kernel"))
    (['dense/kernel'], (3, 2), 'float32')
    >>> weightconv.load_dict(path)["dense/kernel"].sum()
    np.float32(6.0)
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import numpy as np

from weightconv import formats
from weightconv.errors import MappingError, UsageError
from weightconv.formats.base import WriteResult
from weightconv.model import CAFFE, CANONICAL, VALUE_ROLE, Layer, Tensor, WeightSet
from weightconv.pipeline import load, save


class WeightFile:
    """An open weight file: its tensors by name, each read when `get_tensor` asks for it.

    Arrays are read-only views of the mapped file where the format allows (``.npy``,
    caffemodel blobs, checkpoint tensors, contiguous HDF5 datasets), so asking costs the
    tensor's pages and nothing more.
    """

    def __init__(self, path: str | os.PathLike[str], weights: WeightSet) -> None:
        self.path = os.fspath(path)
        self.weights: WeightSet | None = weights
        self._tensors: dict[str, Tensor] = {}
        for layer, role, tensor in weights.tensors():
            self._tensors[layer.location(role)] = tensor

    def keys(self) -> list[str]:
        """Every tensor's name, in the file's order."""
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in self._tensor(name).shape)

    def dtype(self, name: str) -> np.dtype[Any]:
        return np.dtype(self._tensor(name).dtype)

    def get_tensor(self, name: str) -> np.ndarray:
        """The tensor's values (checked against the file's checksum where it has one)."""
        return np.asarray(self._tensor(name))

    def close(self) -> None:
        """Forget the file; arrays already returned stay valid."""
        self._tensors = {}
        self.weights = None

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __enter__(self) -> WeightFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WeightFile({self.path!r}, {len(self._tensors)} tensors)"

    def _tensor(self, name: str) -> Tensor:
        if self.weights is None:
            raise UsageError(f"{self.path}: the file is closed")
        tensor = self._tensors.get(name)
        if tensor is None:
            close = difflib.get_close_matches(name, self._tensors, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise MappingError(f"{self.path}: no tensor named {name!r}{hint}")
        return tensor


def open(path: str | os.PathLike[str], *, format: str | None = None, **options: Any) -> WeightFile:
    """Open any supported weight file lazily; reader options as for `weightconv.load`."""
    return WeightFile(path, load(path, format=format, **options))


def load_dict(
    path: str | os.PathLike[str], *, format: str | None = None, **options: Any
) -> dict[str, np.ndarray]:
    """Every tensor of the file as ``{name: array}``, names as the file has them."""
    with open(path, format=format, **options) as handle:
        return {name: handle.get_tensor(name) for name in handle}


def save_dict(
    tensors: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    force: bool = False,
    **options: Any,
) -> WriteResult:
    """Write ``{name: array}`` to any writable format, each tensor under its own name and as
    given (a PyTorch state dict's arrays are written in its layout, untouched; a format that
    needs more than names, such as a Keras file without its model, says so)."""
    target = formats.for_output(path, format)
    layout = CAFFE if target.torch_layout else CANONICAL
    layers = []
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise UsageError(f"{path}: tensor names must be non-empty strings, not {name!r}")
        layers.append(Layer(name=name, tensors={VALUE_ROLE: np.asarray(value)}, layout=layout))
    if not layers:
        raise UsageError(f"{path}: nothing to write (an empty dict)")
    return save(WeightSet(layers=layers), path, format=format, force=force, **options)
