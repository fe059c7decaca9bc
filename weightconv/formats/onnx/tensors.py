"""The values of ONNX initializers (``TensorProto``): ``raw_data`` (little-endian bytes), the
typed fields (``float_data``, ``int32_data``, ``int64_data``, ...) and external data files.

An external tensor names a ``location`` relative to the model's folder, an ``offset`` and a
``length``; its file is memory-mapped and the tensor is a view of it. A location that leaves
the folder (an absolute path, ``..``, a link out), a missing file or one too short for the
tensor is refused, naming the initializer and the file.

`refuse_other_external` and `external_files` tell a writer where a template's external data
is, so that none is left behind.

Typed fields follow ``onnx.proto``: 16-bit and 8-bit floats are kept as their bit patterns in
``int32_data``, as are the small integers and booleans; complex numbers as (real, imaginary)
pairs of ``float_data`` or ``double_data``.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto

from weightconv._util.files import open_input
from weightconv._util.regions import map_input
from weightconv.errors import FormatError
from weightconv.model import LazyTensor

#: data_type -> (NumPy dtype, the typed field that holds it, the bits it is kept as there).
DTYPES: dict[int, tuple[np.dtype[Any], str, np.dtype[Any] | None]] = {
    TensorProto.FLOAT: (np.dtype(np.float32), "float_data", None),
    TensorProto.DOUBLE: (np.dtype(np.float64), "double_data", None),
    TensorProto.FLOAT16: (np.dtype(np.float16), "int32_data", np.dtype(np.uint16)),
    TensorProto.BFLOAT16: (np.dtype(ml_dtypes.bfloat16), "int32_data", np.dtype(np.uint16)),
    TensorProto.FLOAT8E4M3FN: (np.dtype(ml_dtypes.float8_e4m3fn), "int32_data", np.dtype("u1")),
    TensorProto.FLOAT8E5M2: (np.dtype(ml_dtypes.float8_e5m2), "int32_data", np.dtype("u1")),
    TensorProto.INT8: (np.dtype(np.int8), "int32_data", None),
    TensorProto.UINT8: (np.dtype(np.uint8), "int32_data", None),
    TensorProto.INT16: (np.dtype(np.int16), "int32_data", None),
    TensorProto.UINT16: (np.dtype(np.uint16), "int32_data", None),
    TensorProto.INT32: (np.dtype(np.int32), "int32_data", None),
    TensorProto.BOOL: (np.dtype(np.bool_), "int32_data", None),
    TensorProto.INT64: (np.dtype(np.int64), "int64_data", None),
    TensorProto.UINT32: (np.dtype(np.uint32), "uint64_data", None),
    TensorProto.UINT64: (np.dtype(np.uint64), "uint64_data", None),
    TensorProto.COMPLEX64: (np.dtype(np.complex64), "float_data", None),
    TensorProto.COMPLEX128: (np.dtype(np.complex128), "double_data", None),
}
TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
_NAMES = {value: name for name, value in TensorProto.DataType.items()}


def dtype_name(code: int) -> str:
    return _NAMES.get(code, f"data_type {code}")


class ExternalFiles:
    """The model's folder and the external data files mapped so far, one mapping per file."""

    def __init__(self, model: Path) -> None:
        self.model = model
        self.folder = model.resolve().parent
        self._maps: dict[Path, mmap.mmap] = {}

    def place(self, name: str, entries: dict[str, str], nbytes: int) -> tuple[Path, int]:
        """The checked (file, offset) of an external tensor of `nbytes`."""
        where = f"{self.model}: initializer {name!r}"
        location = entries.get("location")
        if not location:
            raise FormatError(f"{where}: external data without a location")
        relative = Path(location)
        target = (self.folder / relative).resolve()
        if relative.is_absolute() or not target.is_relative_to(self.folder):
            raise FormatError(
                f"{where}: external data location {location!r} is outside the model's folder "
                f"{self.folder}; refused"
            )
        offset = _number(entries, "offset", 0, where)
        length = _number(entries, "length", nbytes, where)
        if length != nbytes:
            raise FormatError(
                f"{where}: external data length {length:,} bytes, the shape and dtype need "
                f"{nbytes:,}"
            )
        if not target.is_file():
            raise FormatError(f"{where}: external data file {location!r} is missing ({target})")
        size = target.stat().st_size
        if offset + nbytes > size:
            raise FormatError(
                f"{where}: external data {location!r} holds {size:,} bytes, the tensor needs "
                f"{nbytes:,} from offset {offset:,}"
            )
        return target, offset

    def mapping(self, target: Path) -> mmap.mmap:
        if target not in self._maps:
            with open_input(target) as handle:
                self._maps[target] = map_input(handle)
        return self._maps[target]


def _number(entries: dict[str, str], key: str, default: int, where: str) -> int:
    text = entries.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise FormatError(f"{where}: external data {key} {text!r} is not a byte count")
    return value


def tensor_of(
    tensor: TensorProto, files: ExternalFiles, raw: tuple[int, int] | None = None
) -> LazyTensor | str:
    """The initializer as a LazyTensor, checked now and read when asked for; or, for one this
    module does not read (strings, 4-bit types), why not. `raw`, for an initializer parsed
    without its ``raw_data`` (`weightconv.formats.onnx.wire`), is where that lies in the
    model's file: the tensor is a view of the mapped model."""
    name = tensor.name
    where = f"{files.model}: initializer {name!r}"
    known = DTYPES.get(tensor.data_type)
    if known is None:
        return f"its dtype {dtype_name(tensor.data_type)} is not read here"
    dtype, typed, bits = known
    shape = tuple(int(n) for n in tensor.dims)
    if any(n < 0 for n in shape):
        raise FormatError(f"{where}: negative dimension in {list(shape)}")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    little = dtype.newbyteorder("<")
    load: Callable[[], np.ndarray]
    if tensor.data_location == TensorProto.EXTERNAL:
        entries = {entry.key: entry.value for entry in tensor.external_data}
        target, offset = files.place(name, entries, nbytes)

        def load() -> np.ndarray:
            buffer = files.mapping(target)
            return np.frombuffer(buffer, little, count, offset).reshape(shape)

    elif raw is not None:
        offset, size = raw
        if size != nbytes:
            raise FormatError(
                f"{where}: raw_data holds {size:,} bytes, its shape {list(shape)} of "
                f"{dtype} needs {nbytes:,}"
            )

        def load() -> np.ndarray:
            buffer = files.mapping(files.model)
            return np.frombuffer(buffer, little, count, offset).reshape(shape)

    elif tensor.HasField("raw_data"):
        size = len(tensor.raw_data)  # each access copies: the values are taken when asked for
        if size != nbytes:
            raise FormatError(
                f"{where}: raw_data holds {size:,} bytes, its shape {list(shape)} of "
                f"{dtype} needs {nbytes:,}"
            )

        def load() -> np.ndarray:
            return np.frombuffer(tensor.raw_data, little, count).reshape(shape)

    else:
        values = getattr(tensor, typed)
        per = 2 if dtype.kind == "c" else 1
        if len(values) != count * per:
            raise FormatError(
                f"{where}: {typed} holds {len(values):,} values, its shape {list(shape)} needs "
                f"{count * per:,}"
            )

        def load() -> np.ndarray:
            return _typed(values, dtype, bits, where).reshape(shape)

    return LazyTensor(shape, dtype, load)


def _typed(values: Any, dtype: np.dtype[Any], bits: np.dtype[Any] | None, where: str) -> np.ndarray:
    if dtype.kind == "c":
        part = np.float32 if dtype == np.complex64 else np.float64
        return np.asarray(values, dtype=part).view(dtype)
    if dtype.kind == "f" and bits is None:
        return np.asarray(values, dtype=dtype)
    wide = np.asarray(values, dtype=np.uint64 if dtype.kind == "u" else np.int64)
    target = bits if bits is not None else dtype
    if target.kind == "b":
        return wide != 0
    info = np.iinfo(target)
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        raise FormatError(f"{where}: a typed value does not fit {target} ({dtype})")
    narrow = wide.astype(target)
    return narrow.view(dtype) if bits is not None else narrow


def refuse_other_external(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse a model (a template) whose external data is not all in its graph's initializers
    (a node attribute's, a subgraph's or a sparse initializer's): a writer does not copy it."""
    for tensor in _other_tensors(proto):
        if tensor.data_location == TensorProto.EXTERNAL:
            raise FormatError(
                f"{path}: tensor {tensor.name or '(unnamed)'!r} keeps its data in an "
                f"external file and is not an initializer of the graph; it is not copied here"
            )


def _other_tensors(proto: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every tensor of the model but its graph's initializers."""
    yield from _graph_tensors(proto.graph, top=True)
    for function in proto.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: onnx.GraphProto, top: bool = False) -> Iterator[TensorProto]:
    if not top:
        yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[TensorProto]:
    for node in nodes:
        for attribute in node.attribute:
            yield attribute.t
            yield from attribute.tensors
            for sparse in (attribute.sparse_tensor, *attribute.sparse_tensors):
                yield from (sparse.values, sparse.indices)
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for graph in [*subgraphs, *attribute.graphs]:
                yield from _graph_tensors(graph)


def external_files(proto: onnx.ModelProto, path: Path) -> set[Path]:
    """The files the initializers of the model at `path` keep their data in."""
    folder = path.resolve().parent
    return {
        (folder / entry.value).resolve()
        for initializer in proto.graph.initializer
        if initializer.data_location == TensorProto.EXTERNAL
        for entry in initializer.external_data
        if entry.key == "location"
    }
