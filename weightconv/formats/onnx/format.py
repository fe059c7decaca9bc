"""ONNX models read for their weights and written into a given model, through the ``onnx``
package (the reference schema).

Reading loads the model without its external data (``onnx.load(path,
load_external_data=False)``), reads each initializer (`tensors`: raw, typed or external, the
external ones memory-mapped) and gives each the role the node consuming it says (`graph`).

Writing needs the model to write into (``model=template.onnx``): the graph is kept as it is
and the initializers that hold weights are replaced, each by name and shape, our layers paired
with the template's in order (`weightconv.formats.torch.template`): a weight the template has
and ours lack, or a shape that does not fit, is refused naming both. The other initializers
(shape constants and such) are kept. The output passes ``onnx.checker.check_model``.

Example::

    ws = read("mnist.onnx")                       # conv OIHW, Gemm weights as stored
    write(ws, "out.onnx", model="template.onnx")  # the template's graph, our weights
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, checker, shape_inference

from weightconv._util.files import atomic_output, open_input
from weightconv._util.progress import Progress
from weightconv.errors import FormatError, UsageError
from weightconv.formats.base import WriteResult
from weightconv.formats.onnx.graph import layers_of, topological, value_shapes
from weightconv.formats.onnx.tensors import TYPED_FIELDS, ExternalFiles, dtype_name, tensor_of
from weightconv.formats.torch.names import torch_key, torch_layers
from weightconv.formats.torch.template import WEIGHT_KINDS, Pair, Slot, check_dtype, pair
from weightconv.model import VALUE_ROLE, Kind, LazyTensor, Provenance, SetAside, WeightSet
from weightconv.model.caffe_layout import steps

#: ModelProto's field tags (number << 3 | wire type) that may follow ir_version.
_MODEL_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}
#: protobuf's limit on one serialized message.
MAX_BYTES = (2 << 30) - 1


def sniff(head: bytes, path: Path) -> bool:
    """A ModelProto: ir_version (field 1, a small varint) first, then one of its fields."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in _MODEL_TAGS


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The model without its external data; one clear line when it is not an ONNX model."""
    target = Path(path)
    with open_input(target) as handle:
        if not handle.read(1):
            raise FormatError(f"{target}: file is empty")
    try:
        model = onnx.load(os.fspath(target), load_external_data=False)
    except Exception as exc:  # DecodeError, or what a damaged message makes onnx raise
        raise FormatError(f"{target}: not a readable ONNX model ({_one_line(exc)})") from None
    if model.ir_version < 1 or not model.HasField("graph"):
        raise FormatError(
            f"{target}: not an ONNX model (ir_version {model.ir_version}, "
            f"{'a' if model.HasField('graph') else 'no'} graph)"
        )
    return model


def read(path: str | os.PathLike[str], *, dense_inputs: Any = None) -> WeightSet:
    """Read the initializers of an ONNX model as layers in Caffe's (PyTorch's) layout."""
    target = Path(path)
    model = load_model(target)
    weights, _ = _weights_of(model, target, dense_inputs)
    return weights


def _weights_of(
    model: onnx.ModelProto, target: Path, dense_inputs: Any
) -> tuple[WeightSet, ExternalFiles]:
    files = ExternalFiles(target)
    tensors: dict[str, LazyTensor] = {}
    set_aside = []
    for initializer in model.graph.initializer:
        if initializer.name in tensors or not initializer.name:
            raise FormatError(
                f"{target}: two initializers are named {initializer.name!r}"
                if initializer.name
                else f"{target}: an initializer without a name"
            )
        tensor = tensor_of(initializer, files)
        if isinstance(tensor, str):
            dims = tuple(int(n) for n in initializer.dims)
            set_aside.append(
                SetAside(initializer.name, dims, dtype_name(initializer.data_type), 0, tensor)
            )
            continue
        tensors[initializer.name] = tensor
    if not tensors and not set_aside:
        raise FormatError(
            f"{target}: the model holds no initializers (its weights may be Constant nodes, "
            f"which are not read here)"
        )
    graph = layers_of(
        model.graph, tensors, _shapes(model), dense_inputs=dense_inputs, where=str(target)
    )
    weights = WeightSet(
        layers=graph.layers,
        source=Provenance(path=str(target), format="onnx", detail=_detail(model)),
        set_aside=set_aside,
    )
    for note in graph.notes:
        weights.note(note)
    if set_aside:
        weights.note(
            f"initializers not read: {', '.join(f'{s.name} ({s.reason})' for s in set_aside[:6])}"
        )
    if len(model.graph.sparse_initializer):
        weights.note(f"{len(model.graph.sparse_initializer)} sparse initializers not read")
    return weights, files


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Every value's shape the graph declares or shape inference finds (none if it fails)."""
    graph = model.graph
    ordered = topological(graph)
    if [id(n) for n in ordered] != [id(n) for n in graph.node]:  # inference reads in order
        model = onnx.ModelProto.FromString(model.SerializeToString())
        del model.graph.node[:]
        model.graph.node.extend(ordered)
    try:
        inferred = shape_inference.infer_shapes(model).graph
    except Exception:  # a graph inference cannot follow: its shapes stay unknown
        inferred = graph
    values = [*inferred.input, *inferred.value_info, *inferred.output]
    return value_shapes(values)


def _detail(model: onnx.ModelProto) -> dict[str, Any]:
    return {
        "ir_version": int(model.ir_version),
        "opsets": {entry.domain or "ai.onnx": int(entry.version) for entry in model.opset_import},
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p),
        "graph": model.graph.name,
        "nodes": len(model.graph.node),
    }


def template_slots(weights: WeightSet) -> list[Slot]:
    """The weight slots of an ONNX model read by `read`: the initializers of its layers."""
    slots = []
    for layer in weights.weighted_layers():
        if layer.kind not in WEIGHT_KINDS or VALUE_ROLE in layer.tensors:
            continue
        for role, tensor in layer.tensors.items():
            transposed = (
                role == "weights" and layer.kind == Kind.DENSE and layer.params.get("transpose")
            )
            slots.append(
                Slot(
                    name=layer.location(role),
                    layer=layer.name,
                    role=role,
                    shape=tuple(int(n) for n in tensor.shape),
                    dtype=str(tensor.dtype),
                    transposed=bool(transposed),
                )
            )
    return slots


def read_template(path: str | os.PathLike[str]) -> list[Slot]:
    """The weight slots of the ONNX model at `path`."""
    target = Path(path)
    weights, _ = _weights_of(load_model(target), target, None)
    return template_slots(weights)


# Writing ---------------------------------------------------------------------------------------


def write(
    weights: WeightSet,
    path: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    torch_dense_inputs: Mapping[str, tuple[int, ...]] | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> WriteResult:
    """Write `weights` into a copy of the ONNX model `model`: its graph, our initializers."""
    where = os.fspath(path)
    if model is None:
        raise UsageError(
            f"{where}: writing ONNX needs the model to put the weights in: give "
            f"model=TEMPLATE.onnx (its graph is kept, its weight initializers replaced)"
        )
    template = Path(model)
    proto = load_model(template)
    read_back, _ = _weights_of(proto, template, None)
    slots = template_slots(read_back)
    pairs = pair(
        weights, slots, dense_inputs=torch_dense_inputs, where=where, template=str(template)
    )
    by_layer = {layer.name: layer for layer in weights.weighted_layers()}
    slot_of = {torch_key(by_layer[p.layer], p.role): p.slot for p in pairs if p.layer}
    dense = _dense_inputs(pairs, read_back, torch_dense_inputs, where)
    initializers = {init.name: init for init in proto.graph.initializer}
    filled: set[str] = set()
    transforms: dict[str, list[str]] = {}
    parameters = 0
    for layer, shape, named in torch_layers(weights, dense, where):
        for step in steps(layer, shape):
            transforms.setdefault(step, []).append(layer.name)
        for key, array in named:
            slot = slot_of[key]
            check_dtype(array, slot, where)
            initializer = initializers[slot.name]
            if slot.transposed:
                array = array.T
            elif slot.role == "alpha":  # the (C,) read from a (C, 1, 1) slope goes back so
                array = array.reshape(tuple(initializer.dims))
            _fill(initializer, array)
            filled.add(slot.name)
            parameters += int(array.size)
            if progress is not None:
                progress.advance(int(array.nbytes))
    kept = _inline_external(proto, read_back, filled)
    if proto.ByteSize() > MAX_BYTES:
        raise FormatError(
            f"{where}: the model would be {proto.ByteSize():,} bytes, over protobuf's 2 GB; "
            f"external data is not written here"
        )
    try:
        checker.check_model(proto)
    except Exception as exc:
        raise FormatError(
            f"{where}: the written model fails onnx.checker.check_model: {_one_line(exc)}"
        ) from None
    data = proto.SerializeToString()
    notes: list[str] = [f"graph from {template}: {len(filled)} initializers replaced"]
    if kept:
        notes.append(f"initializers kept from the template: {', '.join(kept[:8])}")
    with atomic_output(path, force, notes=notes) as handle:
        handle.write(data)
    return WriteResult(
        layers=len({p.layer for p in pairs}),
        tensors=len(filled),
        parameters=parameters,
        bytes=len(data),
        files=[where],
        notes=notes,
        detail={
            "template": str(template),
            "transforms": [{"step": s, "layers": ls} for s, ls in transforms.items()],
        },
    )


def _dense_inputs(
    pairs: list[Pair], template: WeightSet, given: Mapping[str, tuple[int, ...]] | None, where: str
) -> dict[str, tuple[int, ...]]:
    """The C,H,W each of our dense layers reads: given, or what the template's graph says its
    paired layer reads; the two must agree."""
    found: dict[str, tuple[int, ...]] = {}
    for p in pairs:
        theirs = template[p.slot.layer]
        if p.role == "weights" and theirs.kind == Kind.DENSE and theirs.input_shape:
            found[p.layer] = tuple(theirs.input_shape)
    for name, shape in (given or {}).items():
        if name in found and found[name] != tuple(shape):
            raise UsageError(
                f"torch_dense_inputs={name}={','.join(map(str, shape))}: the template's graph "
                f"feeds its paired layer a {'x'.join(map(str, found[name]))} input"
            )
        found[name] = tuple(shape)
    return found


def _fill(initializer: TensorProto, array: np.ndarray) -> None:
    """Our values in place of the initializer's: raw little-endian bytes, inline."""
    if tuple(initializer.dims) != tuple(array.shape):  # the pairing checked it; be sure
        raise FormatError(f"initializer {initializer.name!r}: shape {list(array.shape)} differs")
    for name in TYPED_FIELDS:
        initializer.ClearField(name)
    initializer.ClearField("external_data")
    initializer.data_location = TensorProto.DEFAULT
    little = array.dtype.newbyteorder("<")
    initializer.raw_data = np.ascontiguousarray(array, dtype=little).tobytes()


def _inline_external(proto: onnx.ModelProto, read_back: WeightSet, filled: set[str]) -> list[str]:
    """Copy the template's kept initializers that live in external files into the model."""
    values = {
        layer.location(role): tensor
        for layer in read_back.layers
        for role, tensor in layer.tensors.items()
    }
    kept = []
    for initializer in proto.graph.initializer:
        if initializer.name in filled:
            continue
        kept.append(initializer.name)
        if initializer.data_location == TensorProto.EXTERNAL:
            if initializer.name not in values:
                raise FormatError(
                    f"initializer {initializer.name!r} of the template is external and of a "
                    f"dtype not read here; it cannot be copied"
                )
            _fill(initializer, np.asarray(values[initializer.name]))
    return kept


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
