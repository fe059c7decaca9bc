"""safetensors files: the header read through the ``safetensors`` package (the reference
implementation), each tensor a read-only view of the mapped file where that header puts it
(`weightconv.formats.safetensors.mapped`: no copy, so a writer can copy it file to file in the
kernel, and float8, which the package's NumPy API cannot give, is read too); written a tensor
at a time (`weightconv.formats.safetensors.write`), byte for byte what
``safetensors.numpy.save_file`` writes for the same tensors and metadata.

A safetensors file is flat: tensor names, each a dtype, a shape and raw little-endian bytes,
plus ``__metadata__`` (text to text). It does not say how its tensors are laid out unless its
metadata does: ``format: pt`` is PyTorch's layout (conv OIHW, dense (out, in), names
``conv1.weight``: read as `weightconv.formats.torch.names` reads a state dict), ``tf`` (or
``flax``) TensorFlow's (HWIO, (in, out), names ``conv1/weights``: the canonical layout). When
the metadata says neither, the `layout` option must; the file is not guessed. ``__metadata__``
is kept in the WeightSet's provenance (what `inspect` shows as ``detail.metadata``).

Writing records the layout in ``__metadata__["format"]`` (``pt`` or ``tf``). The layout is the
one the weights are in unless `safetensors_layout` says otherwise: Caffe and PyTorch sources
give ``pt`` with no transform, TensorFlow, Keras and ``.npy`` sources ``tf``. Every tensor's
shape and dtype is known before any value is made, so the header is written first; then the
layers are put in the file's layout one at a time and each tensor goes straight to its place,
so memory stays near one layer.

Example::

    ws = read("model.safetensors")                    # __metadata__ {"format": "pt"}
    write(ws, "out.safetensors", safetensors_layout="tf")
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors as st

from weightconv._util.files import open_input
from weightconv._util.progress import Progress
from weightconv.errors import FormatError, MappingError, UsageError
from weightconv.formats.base import WriteResult
from weightconv.formats.safetensors.mapped import MappedFile
from weightconv.formats.safetensors.write import DTYPES, MAX_HEADER_BYTES, write_file
from weightconv.formats.torch.names import layers_from_state_dict, torch_key, torch_layers
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
from weightconv.model.caffe_layout import steps as caffe_layout_steps
from weightconv.model.canonical import canonical_layers, canonical_shapes, canonicalization_steps

__all__ = ["DTYPES", "FORMAT_LAYOUTS", "read", "sniff", "write"]

#: ``__metadata__["format"]`` -> the layout it means; others say nothing of the layout.
FORMAT_LAYOUTS = {"pt": "torch", "tf": "tf", "flax": "tf"}
_FORMAT_OF = {"torch": "pt", "tf": "tf"}
#: Kinds whose ``weights`` differ between the torch and the canonical layout.
_KERNEL_KINDS = (Kind.CONV, Kind.DECONV, Kind.DENSE)


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
    mapped = MappedFile(target)
    for name, (shape, code) in specs.items():
        dtype = DTYPES.get(code)
        if dtype is None:
            raise FormatError(
                f"{target}: tensor {name!r} has dtype {code}, which is not read here "
                f"(read: {', '.join(DTYPES)})"
            )
        load = functools.partial(mapped.view, name, code, shape, dtype)
        tensors[name] = LazyTensor(shape, dtype, load)
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
    """Write `weights` as a safetensors file, the layout recorded in ``__metadata__["format"]``
    (a safetensors source's other metadata is carried over); the bytes are those
    ``safetensors.numpy.save_file`` writes for the same tensors.

    Example::

        result = write(weightconv.load("m.caffemodel"), "m.safetensors")   # format pt
        result.detail["transforms"]                                        # [] for Caffe
    """
    where = os.fspath(path)
    layout = safetensors_layout or _layout_of(weights, where)
    if layout == "tf" and torch_dense_inputs:
        raise UsageError(
            "torch_dense_inputs applies to the torch layout; this writes the tf layout (give "
            "safetensors_layout=torch)"
        )
    plan = _plan(weights, layout, where)
    if not plan.specs:
        raise UsageError(f"{where}: nothing to write: no layer holds numeric tensors")
    metadata: dict[str, str] = {}
    source = weights.source
    if source is not None and source.format == "safetensors":
        metadata.update(source.detail.get("metadata") or {})
    metadata["format"] = _FORMAT_OF[layout]
    notes: list[str] = []
    walk = _walk(weights, plan, torch_dense_inputs, where)
    size = write_file(path, plan.specs, walk, metadata, force=force, notes=notes, progress=progress)
    return WriteResult(
        layers=plan.layers,
        tensors=len(plan.specs),
        parameters=sum(math.prod(shape) for shape, _ in plan.specs.values()),
        bytes=size,
        files=[where],
        skipped=plan.skipped,
        notes=notes,
        detail={
            "layout": layout,
            "metadata": metadata,
            "transforms": [{"step": s, "layers": ls} for s, ls in plan.transforms.items()],
        },
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


@dataclass
class _Plan:
    """What a write will do, worked out without converting anything."""

    layout: str
    #: Each tensor to write, by the name it is written under: its shape and dtype in `layout`.
    specs: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    layers: int = 0
    #: Step -> the layers it is applied to (the torch layout's are known only as they come).
    transforms: dict[str, list[str]] = field(default_factory=dict)

    def applied(self, step: str, layer: str) -> None:
        self.transforms.setdefault(step, []).append(layer)


def _plan(weights: WeightSet, layout: str, where: str) -> _Plan:
    plan = _Plan(layout)
    for layer in weights.layers:
        if not layer.tensors:
            continue
        plan.layers += 1
        if layout == "torch":
            named = [(torch_key(layer, r), s) for r, s in _torch_shapes(layer).items()]
        else:
            named = [(layer.tensor_name(r), s) for r, s in canonical_shapes(layer).items()]
            for step in canonicalization_steps(layer):
                plan.applied(step, layer.name)
        for name, (shape, dtype) in named:
            if dtype.hasobject or dtype.kind in "SU":
                plan.skipped.append(f"{name} (not numbers)")
                continue
            if name in plan.specs:
                raise MappingError(f"{where}: two tensors are named {name!r}")
            plan.specs[name] = (shape, dtype)
    return plan


def _torch_shapes(layer: Layer) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Shape and dtype of each tensor `to_caffe_layout` gives `layer`, without converting
    (where it would refuse the layer, it does so when the layer comes to be written)."""
    shapes = {
        role: (tuple(int(n) for n in t.shape), np.dtype(t.dtype))
        for role, t in layer.tensors.items()
    }
    kernel = shapes.get("weights")
    if layer.layout == CAFFE:
        if layer.kind == Kind.BATCHNORM and "scale_factor" in shapes:
            del shapes["scale_factor"]  # divided into the moments
        elif layer.kind == Kind.DENSE and layer.params.get("transpose") and kernel:
            shapes["weights"] = (kernel[0][::-1], kernel[1])
    elif layer.kind in _KERNEL_KINDS and kernel:
        shape, dtype = kernel
        if len(shape) == 4:  # HWIO -> OIHW
            shapes["weights"] = ((shape[3], shape[2], shape[0], shape[1]), dtype)
        elif len(shape) == 2:  # (in, out) -> (out, in)
            shapes["weights"] = ((shape[1], shape[0]), dtype)
    return shapes


def _walk(
    weights: WeightSet, plan: _Plan, dense_inputs: Any, where: str
) -> Iterator[tuple[str, Tensor]]:
    """Each tensor of the plan, its layer converted when its turn comes; no converted layer is
    kept here past its turn."""
    if plan.layout == "torch":
        for layer, shape, pairs in torch_layers(weights, dense_inputs, where):
            for step in caffe_layout_steps(layer, shape):
                plan.applied(step, layer.name)
            yield from ((name, array) for name, array in pairs if name in plan.specs)
            del pairs
        return
    for converted in canonical_layers(weights):
        yield from _named(converted, plan)
        del converted


def _named(layer: Layer, plan: _Plan) -> Iterator[tuple[str, Tensor]]:
    for role, tensor in layer.tensors.items():
        name = layer.tensor_name(role)
        if name in plan.specs:
            yield name, tensor
