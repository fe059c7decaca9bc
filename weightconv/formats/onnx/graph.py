"""Which layer each initializer of an ONNX graph belongs to, from the node that consumes it.

ONNX keeps Caffe's and PyTorch's layout, so a layer is read as it is stored:

- ``Conv`` (``ConvTranspose``): input W a 4-D kernel OIHW (deconv (in, out/group, kh, kw)),
  B its biases;
- ``Gemm``: B the dense weights, (out, in) with ``transB=1``, (in, out) with ``transB=0``
  (kept with the ``transpose`` flag a Caffe InnerProduct has); C its biases when 1-D and one
  per output. A Gemm with ``transA``, ``alpha`` or ``beta`` other than the plain ones is not
  a dense layer here;
- ``MatMul``: B (2-D, an initializer) dense weights (in, out), without biases;
- ``BatchNormalization``: scale, B, input_mean, input_var as gamma, beta, mean, variance;
- ``PRelu``: slope as alpha.

Nothing is guessed beyond that: an initializer no such node consumes, or that more than one
input consumes, stays a plain tensor of its own, listed in a note.

A dense layer's input is known from the graph when shape inference gives it: a Flatten (or
Reshape) of a 4-D blob of static C,H,W, or a flat blob from another dense layer; otherwise it
is marked possibly spatial, and converting it to the canonical layout asks for
``dense_inputs``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto, shape_inference

from weightconv.errors import UsageError
from weightconv.model import CAFFE, VALUE_ROLE, Kind, Layer, LazyTensor, Tensor

SOURCE_TYPE = "onnx"
#: op_type -> (kind, {input index: role}, the index of the tensor that makes the layer).
OPS: dict[str, tuple[str, dict[int, str], int]] = {
    "Conv": (Kind.CONV, {1: "weights", 2: "biases"}, 1),
    "ConvTranspose": (Kind.DECONV, {1: "weights", 2: "biases"}, 1),
    "Gemm": (Kind.DENSE, {1: "weights", 2: "biases"}, 1),
    "MatMul": (Kind.DENSE, {1: "weights"}, 1),
    "BatchNormalization": (Kind.BATCHNORM, {1: "gamma", 2: "beta", 3: "mean", 4: "variance"}, 1),
    "PRelu": (Kind.PRELU, {1: "alpha"}, 1),
}
#: Ops whose output keeps its (first) input's axes: looked through when tracing a blob back.
_SHAPE_KEEPING = {
    *("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Dropout", "Identity", "Elu", "Selu", "PRelu"),
    *("Add", "Sub", "Mul", "Div", "Clip", "HardSigmoid", "Softplus", "HardSwish"),
}
#: Initializers under this many bytes are those whose values shape inference may read (a
#: Reshape's shape): a model keeps them inline when the rest goes to a data file (ONNX
#: Runtime reads such values only there; ``onnx.save_model``'s ``size_threshold`` is 1 kB).
SMALL_BYTES = 1024
#: Ops whose output is N,C,H,W by the ONNX definition.
_NCHW = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LRN", "BatchNormalization"}


@dataclass
class Graph:
    """What the graph says of its initializers: the layers, and the notes on the rest."""

    layers: list[Layer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def attributes(node: NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.type == AttributeProto.INT:
            out[attr.name] = int(attr.i)
        elif attr.type == AttributeProto.FLOAT:
            out[attr.name] = float(attr.f)
        elif attr.type == AttributeProto.INTS:
            out[attr.name] = [int(i) for i in attr.ints]
        elif attr.type == AttributeProto.STRING:
            out[attr.name] = attr.s.decode("utf-8", "replace")
    return out


def topological(graph: GraphProto) -> list[NodeProto]:
    """The nodes in an order where each comes after the nodes it reads from (the order ONNX
    requires; some converters wrote them reversed), otherwise as listed."""
    nodes = list(graph.node)
    made = {out: index for index, node in enumerate(nodes) for out in node.output if out}
    readers: list[list[int]] = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for index, node in enumerate(nodes):
        for source in {made[name] for name in node.input if name in made} - {index}:
            readers[source].append(index)
            waiting[index] += 1
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)  # the first listed of those ready: stable
        order.append(index)
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) < len(nodes):  # a cycle: not a valid graph; keep what is left as listed
        placed = set(order)
        order.extend(i for i in range(len(nodes)) if i not in placed)
    return [nodes[i] for i in order]


def layers_of(
    graph: GraphProto,
    tensors: Mapping[str, Tensor],
    shapes: Mapping[str, tuple[int | None, ...]],
    *,
    dense_inputs: Mapping[str, tuple[int, ...]] | None,
    where: str,
) -> Graph:
    """The layers of `graph` (in node order, then its plain tensors in initializer order).
    `tensors`: the initializers read; `shapes`: value name -> shape from shape inference."""
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            if name in tensors:
                uses[name] = uses.get(name, 0) + 1
    producers = {out: node for node in graph.node for out in node.output}
    result = Graph()
    taken: set[str] = set()
    shared: list[str] = []
    names: set[str] = set()
    for index, node in enumerate(topological(graph)):
        known = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if known is None:
            continue
        kind, roles, key_input = known
        inputs = list(node.input)
        if len(inputs) <= key_input or inputs[key_input] not in tensors:
            continue
        params = attributes(node)
        if not _plain_op(node.op_type, params, tensors[inputs[key_input]]):
            continue
        found: dict[str, Tensor] = {}
        locations: dict[str, str] = {}
        for position, role in roles.items():
            name = inputs[position] if position < len(inputs) else ""
            if not name or name not in tensors:
                continue
            if uses[name] > 1:
                shared.append(name)
                continue
            if role == "biases" and not _fits_bias(kind, tensors[inputs[key_input]], tensors[name]):
                continue
            found[role] = _per_channel(tensors[name]) if role == "alpha" else tensors[name]
            locations[role] = name
        if not found or roles[key_input] not in found:
            continue
        taken.update(locations.values())
        layer = Layer(
            name=_layer_name(node, locations[roles[key_input]], index, names),
            kind=kind,
            tensors=found,
            params=_params(node.op_type, params),
            source_type=SOURCE_TYPE,
            layout=CAFFE,
            locations=locations,
        )
        if kind == Kind.DENSE:
            layer.params["input_node"] = inputs[0]
        names.add(layer.name)
        result.layers.append(layer)
    _mark_dense_inputs(result.layers, producers, shapes, dict(dense_inputs or {}), where)
    plain = [name for name in tensors if name not in taken]
    for name in plain:
        result.layers.append(
            Layer(
                name=name,
                kind=Kind.OTHER,
                tensors={VALUE_ROLE: tensors[name]},
                source_type=SOURCE_TYPE,
                layout=CAFFE,
            )
        )
    if shared:
        listed = ", ".join(sorted(set(shared))[:8])
        result.notes.append(f"initializers used by more than one input, kept plain: {listed}")
    others = [name for name in plain if name not in shared]
    if others:
        result.notes.append(
            f"{len(others)} initializers no Conv, Gemm, MatMul, BatchNormalization or PRelu "
            f"consumes as a weight, kept as plain tensors: {', '.join(others[:8])}"
            + (" ..." if len(others) > 8 else "")
        )
    return result


def _per_channel(slope: Tensor) -> Tensor:
    """A PRelu slope (C, 1, 1), broadcast over H and W, as the (C,) Caffe and PyTorch keep."""
    shape = tuple(int(n) for n in slope.shape)
    if len(shape) < 2 or sum(n != 1 for n in shape) > 1:
        return slope
    channels = int(np.prod(shape))
    return LazyTensor((channels,), slope.dtype, lambda: np.asarray(slope).reshape(channels))


def _plain_op(op: str, params: dict[str, Any], key: Tensor) -> bool:
    if op in ("Conv", "ConvTranspose"):
        return len(key.shape) == 4
    if op == "Gemm":
        plain = params.get("transA", 0) == 0
        return plain and params.get("alpha", 1.0) == 1.0 and params.get("beta", 1.0) == 1.0
    if op == "MatMul":
        return len(key.shape) == 2
    return True


def _fits_bias(kind: str, key: Tensor, bias: Tensor) -> bool:
    if kind != Kind.DENSE:
        return True
    return len(bias.shape) == 1  # its size is checked with the weights' by the pairing


def _params(op: str, given: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {"onnx_op": op}
    if op in ("Conv", "ConvTranspose"):
        params["group"] = int(given.get("group", 1))
        for key in ("strides", "pads", "dilations"):
            if key in given:
                params[key] = given[key]
    elif (op == "Gemm" and given.get("transB", 0) == 0) or op == "MatMul":
        params["transpose"] = True  # stored (in, out), as a Caffe InnerProduct with transpose
    elif op == "BatchNormalization":
        params["eps"] = float(given.get("epsilon", 1e-5))
    return params


def _layer_name(node: NodeProto, key_name: str, index: int, taken: set[str]) -> str:
    prefix, dot, leaf = key_name.rpartition(".")
    candidates = []
    if dot and prefix and leaf in ("weight", "weights", "kernel", "scale", "slope"):
        candidates.append(prefix)
    if node.name:
        candidates.append(node.name.strip("/").replace("/", "_"))
    candidates.append(f"{node.op_type.lower()}_{index}")
    for name in candidates:
        if name and name not in taken:
            return name
    return f"{node.op_type.lower()}_{index}_{len(taken)}"


def _mark_dense_inputs(
    layers: list[Layer],
    producers: dict[str, NodeProto],
    shapes: Mapping[str, tuple[int | None, ...]],
    given: dict[str, tuple[int, ...]],
    where: str,
) -> None:
    for layer in layers:
        if layer.kind != Kind.DENSE:
            continue
        source = layer.params.pop("input_node")
        weights = layer.tensors["weights"].shape
        inputs = int(weights[0] if layer.params.get("transpose") else weights[1])
        shape = given.pop(layer.name, None)
        if shape is not None:
            if int(np.prod(shape)) != inputs:
                raise UsageError(
                    f"{where}: layer {layer.name!r} has {inputs} inputs, the shape given for "
                    f"it {'x'.join(map(str, shape))} = {int(np.prod(shape))}"
                )
        else:
            shape = _traced(source, producers, shapes)
            if shape is not None and int(np.prod(shape)) != inputs:
                shape = None
        if shape is not None:
            layer.input_shape = shape
            layer.params["follows_spatial"] = len(shape) != 1
        else:
            layer.params["follows_spatial"] = True
            layer.params["input_shape_hint"] = (
                f"give its input's shape as dense_inputs={layer.name}=C,H,W (or =N when flat)"
            )
    if given:
        raise UsageError(
            f"dense_inputs={next(iter(given))}: {where} has no dense layer of that name"
        )


def _traced(
    name: str, producers: dict[str, NodeProto], shapes: Mapping[str, tuple[int | None, ...]]
) -> tuple[int, ...] | None:
    """The (C, H, W) or (N,) a dense layer's input blob has, when the graph says so."""
    node = _origin(name, producers)
    if node is None:  # a graph input
        return _static(shapes.get(name), 2)
    if node.op_type in ("Gemm", "MatMul"):
        return _static(shapes.get(name), 2)
    if node.op_type in ("Flatten", "Reshape") and node.input:
        if node.op_type == "Flatten" and attributes(node).get("axis", 1) != 1:
            return None
        if not _static(shapes.get(node.output[0]), 2):
            return None
        before = node.input[0]
        if _static(shapes.get(before), 2):
            return _static(shapes.get(before), 2)
        blob = _origin(before, producers)
        if blob is not None and blob.op_type in _NCHW:  # not a Transpose to N,H,W,C
            return _static(shapes.get(before), 4)
    return None


def _origin(name: str, producers: dict[str, NodeProto]) -> NodeProto | None:
    """The node that made `name`, looking through ops that keep the axes; None for a graph
    input (or a chain too long to follow)."""
    for _ in range(256):
        node = producers.get(name)
        if node is None or node.op_type not in _SHAPE_KEEPING or not node.input:
            return node
        name = node.input[0]
    return None


def _static(shape: tuple[int | None, ...] | None, rank: int) -> tuple[int, ...] | None:
    if shape is None or len(shape) != rank or any(n is None or n < 1 for n in shape[1:]):
        return None
    return tuple(int(n) for n in shape[1:] if n is not None)


def inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Every value's shape the graph declares or shape inference finds (none if it fails)."""
    try:
        inferred = shape_inference.infer_shapes(_outline(model)).graph
    except Exception:  # a graph inference cannot follow: its shapes stay unknown
        inferred = model.graph
    values = [*inferred.input, *inferred.value_info, *inferred.output]
    return value_shapes(values)


def _outline(model: onnx.ModelProto) -> onnx.ModelProto:
    """What shape inference reads of the model: its nodes in order, and its initializers with
    their values only when small (a Reshape's shape); a large one is marked external, as in a
    model saved with its data beside it, so its bytes are not copied (twice, by inference)."""
    outline = onnx.ModelProto(ir_version=model.ir_version)
    outline.opset_import.extend(model.opset_import)
    outline.functions.extend(model.functions)
    graph = outline.graph
    graph.node.extend(topological(model.graph))  # inference reads in order
    for part in ("input", "output", "value_info", "sparse_initializer"):
        getattr(graph, part).extend(getattr(model.graph, part))
    for initializer in model.graph.initializer:
        # By its values' count too: a large one parsed without its bytes (`wire`) is small.
        if initializer.ByteSize() < SMALL_BYTES and math.prod(initializer.dims) < SMALL_BYTES:
            graph.initializer.append(initializer)
            continue
        bare = graph.initializer.add(
            name=initializer.name, data_type=initializer.data_type, dims=initializer.dims
        )
        bare.data_location = TensorProto.EXTERNAL
    return outline


def value_shapes(values: list[ValueInfoProto]) -> dict[str, tuple[int | None, ...]]:
    """Value name -> its shape (None for a symbolic or unknown dimension)."""
    out: dict[str, tuple[int | None, ...]] = {}
    for value in values:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type" or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        out[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return out
