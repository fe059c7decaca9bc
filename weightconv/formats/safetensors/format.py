"""safetensors files, read and written through the ``safetensors`` package (the reference
implementation; its NumPy API).

A safetensors file is flat: tensor names, each a dtype, a shape and raw little-endian bytes,
plus ``__metadata__`` (text to text). It does not say how its tensors are laid out unless its
metadata does: ``format: pt`` is PyTorch's layout (conv OIHW, dense (out, in), names
``conv1.weight``: read as `weightconv.formats.torch.names` reads a state dict), ``tf`` (or
``flax``) TensorFlow's (HWIO, (in, out), names ``conv1/weights``: the canonical layout). When
the metadata says neither, the `layout` option must; the file is not guessed. ``__metadata__``
is kept in the WeightSet's provenance (what `inspect` shows as ``detail.metadata``).

Writing records the layout in ``__metadata__["format"]`` (``pt`` or ``tf``). The layout is the
one the weights are in unless `safetensors_layout` says otherwise: Caffe and PyTorch sources
give ``pt`` with no transform, TensorFlow, Keras and ``.npy`` sources ``tf``. The package
writes from whole arrays, so every tensor that needs a transform is held in memory at once.

Example::

    ws = read("model.safetensors")                    # __metadata__ {"format": "pt"}
    write(ws, "out.safetensors", safetensors_layout="tf")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import safetensors as st

from weightconv._util.files import atomic_path, open_input
from weightconv._util.progress import Progress
from weightconv.errors import FormatError, MappingError, UsageError
from weightconv.formats.base import WriteResult
from weightconv.formats.torch.names import layers_from_state_dict, torch_layers
from weightconv.model import (
    CAFFE,
    CANONICAL,
    Kind,
    Layer,
    LazyTensor,
    Provenance,
    Tensor,
    WeightSet,
    split_tensor_name,
)
from weightconv.model.canonical import canonical_layers

#: ``__metadata__["format"]`` -> the layout it means; others say nothing of the layout.
FORMAT_LAYOUTS = {"pt": "torch", "tf": "tf", "flax": "tf"}
_FORMAT_OF = {"torch": "pt", "tf": "tf"}
#: The header's dtype codes -> NumPy dtypes.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "C64": np.dtype(np.complex64),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
#: The package's names for the dtypes it writes.
_WRITE_NAMES = {
    dtype: name
    for name, dtype in {
        "bool": np.dtype(np.bool_),
        "uint8": np.dtype(np.uint8),
        "int8": np.dtype(np.int8),
        "uint16": np.dtype(np.uint16),
        "int16": np.dtype(np.int16),
        "uint32": np.dtype(np.uint32),
        "int32": np.dtype(np.int32),
        "uint64": np.dtype(np.uint64),
        "int64": np.dtype(np.int64),
        "float16": np.dtype(np.float16),
        "bfloat16": np.dtype(ml_dtypes.bfloat16),
        "float32": np.dtype(np.float32),
        "float64": np.dtype(np.float64),
        "complex64": np.dtype(np.complex64),
        "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
        "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    }.items()
}
#: The format's own cap on the header.
MAX_HEADER_BYTES = 100_000_000


def sniff(head: bytes, path: Path) -> bool:
    """An 8-byte header length that fits, then a JSON object."""
    if len(head) < 10:
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length <= MAX_HEADER_BYTES and head[8:10] in (b'{"', b"{}", b"{ ")


def read(
    path: str | os.PathLike[str], *, layout: str | None = None, dense_inputs: Any = None
) -> WeightSet:
    """Read a safetensors file: names, shapes and dtypes now, values when asked for."""
    target = Path(path)
    with open_input(target):
        pass  # a missing file or a folder: one clear line
    try:
        with st.safe_open(target, framework="np") as handle:
            metadata = dict(handle.metadata() or {})
            specs = {}
            for name in handle.offset_keys():
                piece = handle.get_slice(name)
                specs[name] = (tuple(int(n) for n in piece.get_shape()), piece.get_dtype())
    except st.SafetensorError as exc:
        raise FormatError(f"{target}: not a readable safetensors file ({_one_line(exc)})") from None
    except OSError as exc:
        raise FormatError(f"{target}: cannot be read: {exc.strerror or exc}") from None
    chosen, notes = _layout(target, metadata, layout)
    tensors: dict[str, Tensor] = {}
    for name, (shape, code) in specs.items():
        dtype = DTYPES.get(code)
        if dtype is None:
            raise FormatError(
                f"{target}: tensor {name!r} has dtype {code}, which is not read here "
                f"(read: {', '.join(DTYPES)})"
            )
        tensors[name] = LazyTensor(shape, dtype, _loader(target, name, shape, dtype))
    if chosen == "torch":
        layers = layers_from_state_dict(
            tensors, dense_inputs=dense_inputs, where=str(target), in_order=False
        )
    else:
        if dense_inputs:
            raise UsageError(
                f"dense_inputs: {target} is in the tf layout, whose dense rows are in H,W,C "
                f"order already"
            )
        layers = _canonical_layers(tensors, str(target))
    weights = WeightSet(
        layers=layers,
        source=Provenance(
            path=str(target),
            format="safetensors",
            detail={"layout": chosen, "metadata": metadata},
        ),
    )
    for note in notes:
        weights.note(note)
    return weights


def _layout(target: Path, metadata: dict[str, str], given: str | None) -> tuple[str, list[str]]:
    declared = metadata.get("format")
    said = FORMAT_LAYOUTS.get(declared or "")
    if given is not None:
        if said is not None and said != given:
            return given, [
                f"read as the {given} layout as asked, though its __metadata__ says format "
                f"{declared} ({said})"
            ]
        return given, []
    if said is None:
        found = f"format {declared!r}" if declared is not None else "no format"
        raise UsageError(
            f"{target}: its __metadata__ has {found}, so the layout of its tensors is not "
            f"known; give layout=torch (PyTorch: conv OIHW, dense (out, in)) or layout=tf "
            f"(TensorFlow/Keras: conv HWIO, dense (in, out))"
        )
    return said, []


def _loader(target: Path, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
    def load() -> np.ndarray:
        try:
            with st.safe_open(target, framework="np") as handle:
                array = handle.get_tensor(name)
        except (st.SafetensorError, OSError, TypeError, ValueError) as exc:
            raise FormatError(
                f"{target}: tensor {name!r} cannot be read ({_one_line(exc)})"
            ) from None
        if array.dtype != dtype:  # the package gives raw bytes for dtypes NumPy lacks
            array = array.view(dtype)
        if array.shape != shape:
            raise FormatError(f"{target}: tensor {name!r} changed while it was read")
        return array

    return load


def _canonical_layers(tensors: dict[str, Tensor], where: str) -> list[Layer]:
    grouped: dict[str, dict[str, Tensor]] = {}
    for name, tensor in tensors.items():
        layer, role = split_tensor_name(name)
        roles = grouped.setdefault(layer, {})
        if role in roles:
            raise MappingError(f"{where}: two tensors of layer {layer!r} are named {role!r}")
        roles[role] = tensor
    layers = []
    for name, roles in grouped.items():
        kind = Kind.OTHER
        if "weights" in roles and set(roles) <= {"weights", "biases"}:
            kind = {4: Kind.CONV, 2: Kind.DENSE}.get(len(roles["weights"].shape), Kind.OTHER)
        layers.append(
            Layer(name=name, kind=kind, tensors=roles, source_type="safetensors", layout=CANONICAL)
        )
    return layers


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# Writing ---------------------------------------------------------------------------------------


def write(
    weights: WeightSet,
    path: str | os.PathLike[str],
    *,
    safetensors_layout: str | None = None,
    torch_dense_inputs: Any = None,
    force: bool = False,
    progress: Progress | None = None,
) -> WriteResult:
    """Write `weights` with ``safetensors.serialize_file``, the layout recorded in
    ``__metadata__["format"]``; a safetensors source's other metadata is carried over."""
    where = os.fspath(path)
    layout = safetensors_layout or _layout_of(weights, where)
    if layout == "tf" and torch_dense_inputs:
        raise UsageError(
            "torch_dense_inputs applies to the torch layout; this writes the tf layout (give "
            "safetensors_layout=torch)"
        )
    arrays, skipped, layers = _arrays(weights, layout, torch_dense_inputs, where)
    if not arrays:
        raise UsageError(f"{where}: nothing to write: no layer holds numeric tensors")
    metadata: dict[str, str] = {}
    source = weights.source
    if source is not None and source.format == "safetensors":
        metadata.update(source.detail.get("metadata") or {})
    metadata["format"] = _FORMAT_OF[layout]
    specs = {}
    for name, array in arrays.items():
        specs[name] = st.TensorSpec(
            dtype=_WRITE_NAMES[array.dtype.newbyteorder("=")],
            shape=list(array.shape),
            data_ptr=array.ctypes.data,
            data_len=array.nbytes,
        )
    notes: list[str] = []
    with atomic_path(path, force, notes=notes) as temporary:
        try:
            st.serialize_file(specs, temporary, metadata=metadata)
        except st.SafetensorError as exc:
            raise FormatError(
                f"{where}: the safetensors writer refused: {_one_line(exc)}"
            ) from None
        del specs  # the arrays must outlive the specs that point at them
        size = temporary.stat().st_size
    if progress is not None:
        progress.advance(sum(array.nbytes for array in arrays.values()))
    return WriteResult(
        layers=layers,
        tensors=len(arrays),
        parameters=sum(int(array.size) for array in arrays.values()),
        bytes=size,
        files=[where],
        skipped=skipped,
        notes=notes,
        detail={"layout": layout, "metadata": metadata},
    )


def _layout_of(weights: WeightSet, where: str) -> str:
    layouts = {layer.layout for layer in weights.weighted_layers()}
    if layouts == {CAFFE}:
        return "torch"
    if layouts <= {CANONICAL}:
        return "tf"
    raise UsageError(
        f"{where}: the weights hold layers in both the Caffe and the canonical layout; choose "
        f"the file's with safetensors_layout=torch or safetensors_layout=tf"
    )


def _arrays(
    weights: WeightSet, layout: str, dense_inputs: Any, where: str
) -> tuple[dict[str, np.ndarray], list[str], int]:
    """Every tensor as a C-contiguous little-endian array, by the name it is written under;
    the tensors left out; the number of layers."""
    pairs: list[tuple[str, np.ndarray]] = []
    layers = 0
    if layout == "torch":
        for _, _, named in torch_layers(weights, dense_inputs, where):
            pairs.extend(named)
            layers += 1
    else:
        for layer in canonical_layers(weights):
            pairs.extend((layer.tensor_name(r), np.asarray(t)) for r, t in layer.tensors.items())
            layers += 1
    arrays: dict[str, np.ndarray] = {}
    skipped = []
    for name, array in pairs:
        if array.dtype.hasobject or array.dtype.kind in "SU":
            skipped.append(f"{name} (not numbers)")
            continue
        if array.dtype.newbyteorder("=") not in _WRITE_NAMES:
            raise FormatError(
                f"{where}: tensor {name!r} has dtype {array.dtype}, which safetensors does not "
                f"store"
            )
        if name in arrays:
            raise MappingError(f"{where}: two tensors are named {name!r}")
        little = array.dtype.newbyteorder("<")
        arrays[name] = np.asarray(array, dtype=little, order="C")  # 0-d stays 0-d
    return arrays, skipped, layers
