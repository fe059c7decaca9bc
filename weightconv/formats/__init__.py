"""The table of formats: how each is recognised, read and written.

Each format module exposes ``sniff(head, path) -> bool``, ``read(path, **options)``
and, where writing is supported, ``write(weights, path, **options)``. Formats whose
input is not one file (a checkpoint prefix, a folder) also expose
``claims(path) -> bool``, asked before any file is opened, and those with several
output files ``check_output(path, force)``. A new format is a new module and one
entry in `FORMATS`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightconv._util.files import open_input
from weightconv.errors import FormatError, UsageError
from weightconv.model import WeightSet

HEAD_BYTES = 4096
#: ``model.ckpt-1000``: a checkpoint prefix with a global step.
CHECKPOINT_STEP = re.compile(r"\.ckpt-\d+$")


@dataclass(frozen=True)
class Format:
    name: str
    title: str
    suffixes: tuple[str, ...]
    module: str
    can_write: bool
    #: True when the module recognises inputs by location (``claims``), not only by content.
    by_location: bool = False

    def _module(self) -> Any:
        import importlib

        return importlib.import_module(f"{__name__}.{self.module}")

    def sniff(self, head: bytes, path: Path) -> bool:
        return bool(self._module().sniff(head, path))

    def claims(self, path: Path) -> bool:
        return self.by_location and bool(self._module().claims(path))

    def check_output(self, path: str | os.PathLike[str], force: bool) -> None:
        """Raise unless `path` may be written (it or its companions exist and not `force`)."""
        check = getattr(self._module(), "check_output", None)
        if check is not None:
            check(path, force)
        else:
            from weightconv._util.files import check_writable

            check_writable(path, force)

    def read(self, path: str | os.PathLike[str], **options: Any) -> WeightSet:
        return self._module().read(path, **options)

    def write(self, weights: WeightSet, path: str | os.PathLike[str], **options: Any) -> Any:
        if not self.can_write:
            raise UsageError(f"writing {self.title} is not supported")
        return self._module().write(weights, path, **options)


FORMATS: tuple[Format, ...] = (
    Format("npy", "NumPy .npy weight dict", (".npy",), "npy", True),
    Format("caffe-h5", "Caffe HDF5 snapshot", (".caffemodel.h5",), "caffe.hdf5", False),
    Format("caffemodel", "Caffe .caffemodel (V0, V1, V2)", (".caffemodel", ".binaryproto"),
           "caffe.reader", False),
    Format("ckpt", "TensorFlow checkpoint (V2 TensorBundle; V1 read-only)",
           (".ckpt", ".index"), "ckpt.bundle", True, by_location=True),
    Format("keras-h5", "Keras HDF5 weights (.weights.h5, legacy .h5, .keras)",
           (".weights.h5", ".h5", ".hdf5", ".keras"), "keras_h5.core", True),
)

_BY_NAME: dict[str, Format] = {fmt.name: fmt for fmt in FORMATS}


def get(name: str) -> Format:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UsageError(f"unknown format {name!r}; known: {', '.join(_BY_NAME)}") from None


def read_head(path: Path) -> bytes:
    with open_input(path) as handle:
        return handle.read(HEAD_BYTES)


def detect(path: str | os.PathLike[str], name: str | None = None) -> Format:
    """The format of `path`: `name` if given, else by content, else by suffix."""
    if name:
        return get(name)
    target = Path(path)
    for fmt in FORMATS:
        if fmt.claims(target):
            return fmt
    head = read_head(target)
    for fmt in FORMATS:
        if fmt.sniff(head, target):
            return fmt
    lowered = target.name.lower()
    for fmt in FORMATS:
        if any(lowered.endswith(suffix) for suffix in fmt.suffixes):
            return fmt
    if lowered.endswith((".prototxt", ".pbtxt")):
        raise FormatError(f"{target}: a prototxt holds a net definition, not weights; "
                          f"pass it with --prototxt beside the .caffemodel")
    if not head:
        raise FormatError(f"{target}: file is empty")
    raise FormatError(f"{target}: not a recognised weight file "
                      f"(known: {', '.join(f.title for f in FORMATS)})")


def for_output(path: str | os.PathLike[str], name: str | None = None) -> Format:
    """The format to write `path` in: `name` if given, else by suffix."""
    if name:
        return get(name)
    lowered = Path(path).name.lower()
    for fmt in FORMATS:
        if fmt.can_write and any(lowered.endswith(suffix) for suffix in fmt.suffixes):
            return fmt
    if CHECKPOINT_STEP.search(lowered):
        return get("ckpt")
    writable = ", ".join(f"{f.name} ({'/'.join(f.suffixes)})" for f in FORMATS if f.can_write)
    raise UsageError(f"{path}: cannot tell the output format from the name; use --to "
                     f"(writable: {writable})")


