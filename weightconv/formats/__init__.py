"""The registry: one `Format` row per format, the one place a format is plugged in.

A row names the format, its suffixes and default output suffix, the token of its short verbs
(``caffe`` in ``caffe2npy``), the module that reads and writes it (see `weightconv.formats.base`
for what that module provides) and its read and write option classes, from which the library
checks what a caller passes and the CLI builds its flags. A new format is its module and one
row, added to `FORMATS` or, from outside the package, with `register`.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from weightconv._util.files import check_writable, open_input
from weightconv._util.progress import Progress
from weightconv.errors import FormatError, UsageError
from weightconv.formats.base import NoOptions, Options, WriteResult
from weightconv.formats.caffe import CaffeReadOptions
from weightconv.formats.ckpt import CkptReadOptions, CkptWriteOptions
from weightconv.formats.keras_h5 import KerasWriteOptions
from weightconv.formats.npy import NpyReadOptions, NpyWriteOptions
from weightconv.formats.npz import NpzWriteOptions
from weightconv.formats.onnx import OnnxReadOptions, OnnxWriteOptions
from weightconv.formats.safetensors import SafetensorsReadOptions, SafetensorsWriteOptions
from weightconv.formats.torch import TorchReadOptions, TorchWriteOptions
from weightconv.model import WeightSet

HEAD_BYTES = 4096
#: ``model.ckpt-1000``: a checkpoint prefix with a global step.
CHECKPOINT_STEP = re.compile(r"\.ckpt-\d+$")


@dataclass(frozen=True)
class Format:
    """One row of the registry."""

    name: str
    title: str
    suffixes: tuple[str, ...]
    #: The module that reads (and writes) the format, by its full import path.
    module: str
    #: The token of the short verbs: ``npy`` in ``caffe2npy`` and ``npy2ckpt``.
    verb: str
    read_options: type[Options] = NoOptions
    #: None when the format is read only.
    write_options: type[Options] | None = None
    #: The suffix of an output named after its input; None: the first of `suffixes`.
    output_suffix: str | None = None
    #: True when the module recognises inputs by location (``claims``), not only by content.
    by_location: bool = False
    #: The suffixes the writer writes, when fewer than those read; None: `suffixes`.
    write_suffixes: tuple[str, ...] | None = None
    #: True when the writer keeps PyTorch's layout (Caffe's: conv OIHW, dense (out, in)), so
    #: that plain arrays given for it are already in that layout.
    torch_layout: bool = False

    @property
    def can_write(self) -> bool:
        return self.write_options is not None

    @property
    def writable_suffixes(self) -> tuple[str, ...]:
        """The suffixes an output of this format may have (none when read only)."""
        if not self.can_write:
            return ()
        return self.suffixes if self.write_suffixes is None else self.write_suffixes

    def implementation(self) -> ModuleType:
        return importlib.import_module(self.module)

    def sniff(self, head: bytes, path: Path) -> bool:
        return bool(self.implementation().sniff(head, path))

    def claims(self, path: Path) -> bool:
        return self.by_location and bool(self.implementation().claims(path))

    def reader_options(self, given: Any = None) -> Options:
        """The reader's options from a mapping (or an instance); unknown names are refused."""
        return self.read_options.build(given, where=f"the {self.name} reader")

    def writer_options(self, given: Any = None) -> Options:
        """The writer's options from a mapping (or an instance); unknown names are refused."""
        if self.write_options is None:
            raise UsageError(
                f"writing {self.title} is not supported (writable: "
                f"{', '.join(f.name for f in FORMATS if f.can_write)})"
            )
        return self.write_options.build(given, where=f"the {self.name} writer")

    def default_suffix(self, options: Options | None = None) -> str:
        """The suffix of an output named after its input, e.g. ``.weights.h5``."""
        return getattr(options, "output_suffix", None) or self.output_suffix or self.suffixes[0]

    def check_output(self, path: str | os.PathLike[str], force: bool) -> None:
        """Raise unless `path` may be written (it or its companions exist and not `force`)."""
        check = getattr(self.implementation(), "check_output", None)
        if check is not None:
            check(path, force)
        else:
            check_writable(path, force)

    def read(self, path: str | os.PathLike[str], options: Any = None) -> WeightSet:
        opts = self.reader_options(options)
        return self.implementation().read(path, **_fields(opts))

    def write(
        self,
        weights: WeightSet,
        path: str | os.PathLike[str],
        options: Any = None,
        *,
        force: bool = False,
        progress: Progress | None = None,
    ) -> WriteResult:
        opts = self.writer_options(options)
        return self.implementation().write(
            weights, path, force=force, progress=progress, **_fields(opts)
        )

    def signature_problems(self) -> list[str]:
        """Where the module's read/write keywords and the declared options differ."""
        import inspect  # only tests and registration ask; it is slow to import

        problems = []
        module = self.implementation()
        pairs: list[tuple[str, type[Options], set[str]]] = [("read", self.read_options, set())]
        if self.write_options is not None:
            pairs.append(("write", self.write_options, {"force", "progress"}))
        for function, options, extra in pairs:
            params = inspect.signature(getattr(module, function)).parameters
            if any(p.kind is p.VAR_KEYWORD for p in params.values()):
                problems.append(f"{self.module}.{function} takes **kwargs")
            keywords = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
            if keywords != set(options.names()) | extra:
                problems.append(
                    f"{self.module}.{function} takes {sorted(keywords)}, the row "
                    f"declares {sorted(set(options.names()) | extra)}"
                )
        return problems


def _fields(options: Options) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.names()}


FORMATS: list[Format] = [
    Format(
        "npy",
        "NumPy .npy weight dict",
        (".npy",),
        "weightconv.formats.npy",
        "npy",
        NpyReadOptions,
        NpyWriteOptions,
    ),
    Format(
        "caffe-h5",
        "Caffe HDF5 snapshot",
        (".caffemodel.h5",),
        "weightconv.formats.caffe.hdf5",
        "caffe",
        CaffeReadOptions,
    ),
    Format(
        "caffemodel",
        "Caffe .caffemodel (V0, V1, V2)",
        (".caffemodel", ".binaryproto"),
        "weightconv.formats.caffe.reader",
        "caffe",
        CaffeReadOptions,
    ),
    Format(
        "ckpt",
        "TensorFlow checkpoint (V2 TensorBundle; V1 read-only)",
        (".ckpt", ".index"),
        "weightconv.formats.ckpt.format",
        "ckpt",
        CkptReadOptions,
        CkptWriteOptions,
        by_location=True,
    ),
    Format(
        "keras-h5",
        "Keras HDF5 weights (.weights.h5, legacy .h5, .keras)",
        (".weights.h5", ".h5", ".hdf5", ".keras"),
        "weightconv.formats.keras_h5.format",
        "h5",
        NoOptions,
        KerasWriteOptions,
        output_suffix=".weights.h5",
        write_suffixes=(".weights.h5", ".h5", ".hdf5"),
    ),
    Format(
        "pt",
        "PyTorch state dict (.pt, .pth, .bin: zip and legacy formats)",
        (".pt", ".pth", ".bin"),
        "weightconv.formats.torch.format",
        "pt",
        TorchReadOptions,
        TorchWriteOptions,
        torch_layout=True,
    ),
    Format(
        "safetensors",
        "safetensors (layout from __metadata__ format pt/tf, or given)",
        (".safetensors",),
        "weightconv.formats.safetensors.format",
        "safetensors",
        SafetensorsReadOptions,
        SafetensorsWriteOptions,
    ),
    Format(
        "npz",
        "NumPy .npz archive of named arrays (np.savez)",
        (".npz",),
        "weightconv.formats.npz.format",
        "npz",
        NoOptions,
        NpzWriteOptions,
    ),
    Format(
        "onnx",
        "ONNX model initializers (written only into a given model, the template)",
        (".onnx",),
        "weightconv.formats.onnx.format",
        "onnx",
        OnnxReadOptions,
        OnnxWriteOptions,
        torch_layout=True,
    ),
]


def register(row: Format) -> None:
    """Add a format (a module of the `weightconv.formats.base` protocol and its row)."""
    if any(f.name == row.name for f in FORMATS):
        raise UsageError(f"a format named {row.name!r} is registered already")
    FORMATS.append(row)


def unregister(name: str) -> None:
    FORMATS[:] = [f for f in FORMATS if f.name != name]


def verbs() -> dict[str, tuple[tuple[str, ...], str]]:
    """Short verb -> (the formats it reads, the format it writes): ``caffe2npy``, ..."""
    tokens: dict[str, list[str]] = {}
    for fmt in FORMATS:
        tokens.setdefault(fmt.verb, []).append(fmt.name)
    table: dict[str, tuple[tuple[str, ...], str]] = {}
    for target in FORMATS:
        if not target.can_write:
            continue
        for token, sources in tokens.items():
            if token != target.verb:
                table[f"{token}2{target.verb}"] = (tuple(sources), target.name)
    return table


def get(name: str) -> Format:
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise UsageError(f"unknown format {name!r}; known: {', '.join(f.name for f in FORMATS)}")


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
        raise FormatError(
            f"{target}: a prototxt holds a net definition, not weights; "
            f"give it as prototxt= beside the .caffemodel"
        )
    if not head:
        raise FormatError(f"{target}: file is empty")
    raise FormatError(
        f"{target}: not a recognised weight file (known: {', '.join(f.title for f in FORMATS)})"
    )


def for_output(path: str | os.PathLike[str], name: str | None = None) -> Format:
    """The format to write `path` in: `name` if given, else by suffix."""
    if name:
        return get(name)
    lowered = Path(path).name.lower()
    for fmt in FORMATS:
        if any(lowered.endswith(suffix) for suffix in fmt.writable_suffixes):
            return fmt
    if CHECKPOINT_STEP.search(lowered):
        return get("ckpt")
    writable = ", ".join(
        f"{f.name} ({'/'.join(f.writable_suffixes)})" for f in FORMATS if f.can_write
    )
    for fmt in FORMATS:
        read_only = [s for s in fmt.suffixes if fmt.can_write and lowered.endswith(s)]
        if read_only:
            raise UsageError(
                f"{path}: {read_only[0]} files are read but not written here; {fmt.name} "
                f"writes {', '.join(fmt.writable_suffixes)}"
            )
    raise UsageError(
        f"{path}: cannot tell the output format from the name; give dst_format= "
        f"(writable: {writable})"
    )
