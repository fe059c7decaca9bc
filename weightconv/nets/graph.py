"""A net as a graph of Caffe layers: one description that any engine can run.

A `Graph` is the deploy net of a prototxt (V0, V1 or V2; fields of forks that our schema
lacks skipped with a note, OpenCV's ``permute_param`` read): its layers in order as `Node`s
with Caffe's parameters (defaults filled in), the blobs the caller feeds (``input:`` fields,
Input and other data layers) with their declared NCHW shapes, the output blobs (every blob
no later layer reads), and the shape of every blob, worked out with Caffe's own arithmetic
(`weightconv.nets.shapes`). TRAIN-phase layers are left out. A layer type the engines do not
run is refused (`UsageError`, exit 2) naming the layer and its type, never skipped.

Engines take the graph and weights in weightconv's canonical layout
(`weightconv.nets.graph_weights`): `weightconv.nets.numpy_engine` runs it in NumPy.

Example::

    graph = Graph.from_prototxt("deploy.prototxt")
    graph.inputs             # {'data': (1, 3, 227, 227)}
    graph.outputs            # ('prob',)
    graph.shapes["pool5"]    # (1, 256, 6, 6)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightconv.errors import UsageError
from weightconv.formats.caffe.net import LayerDef, NetDef, net_def_from_message, parse_prototxt
from weightconv.nets.architecture import Architecture
from weightconv.nets.layer_params import layer_params, permute_orders
from weightconv.nets.node import WEIGHTED_TYPES, Node
from weightconv.nets.shapes import Shape, output_shapes

#: Layer types whose tops the caller feeds.
DATA_TYPES = frozenset(
    {"Input", "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData"}
)
#: Layer types the engines run, with Caffe's semantics.
SUPPORTED_TYPES = frozenset(
    {
        "Convolution",
        "Deconvolution",
        "Pooling",
        "InnerProduct",
        "ReLU",
        "PReLU",
        "ELU",
        "Sigmoid",
        "TanH",
        "AbsVal",
        "Power",
        "BatchNorm",
        "Scale",
        "Bias",
        "Eltwise",
        "Concat",
        "Slice",
        "Split",
        "Flatten",
        "Reshape",
        "Permute",
        "Crop",
        "Softmax",
        "Dropout",
        "LRN",
        "Padding",
    }
)


@dataclass
class Graph:
    """The layers of a deploy net in order, its inputs and outputs, and every blob's shape.

    `shapes` holds the final shape of each blob name; `node_shapes` the shapes of each
    node's tops as that node writes them (the same, but kept per node for in-place blobs).
    """

    nodes: tuple[Node, ...]
    inputs: dict[str, Shape]
    outputs: tuple[str, ...]
    shapes: dict[str, Shape]
    node_shapes: dict[str, tuple[Shape, ...]]
    source: str = "prototxt"
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_prototxt(
        cls,
        prototxt: str | os.PathLike[str],
        *,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> Graph:
        """The graph of a deploy prototxt; `input_shapes` (blob -> NCHW) overrides or fills
        in the declared input shapes (a batch size, or data layers without a shape)."""
        path = Path(prototxt)
        message, notes = parse_prototxt(path)
        net = net_def_from_message(message)
        raw: list[Any] = list(message.layer) if net.encoding == "V2" else list(message.layers)
        if net.encoding == "V0":
            raw = [None] * len(net.layers)
        orders = (
            permute_orders(path)
            if net.encoding == "V2" and any(layer.type == "Permute" for layer in net.layers)
            else {}
        )
        definitions = []
        for definition, layer in zip(net.layers, raw, strict=True):
            params = layer_params(definition, layer)
            if definition.type == "Permute":
                params["order"] = orders.get(definition.name)
            definitions.append((definition, params))
        return cls._build(net, definitions, str(path), notes, input_shapes)

    @classmethod
    def from_net_def(
        cls,
        net: NetDef,
        *,
        source: str = "prototxt",
        input_shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> Graph:
        """The graph of a parsed net definition (parameters as `formats.caffe.net` reads
        them, with Caffe's defaults for the rest)."""
        definitions = [(layer, layer_params(layer, None)) for layer in net.layers]
        return cls._build(net, definitions, source, list(net.notes), input_shapes)

    @classmethod
    def from_architecture(
        cls,
        arch: Architecture,
        *,
        in_channels: int = 3,
        num_outputs: Mapping[str, int] | None = None,
    ) -> Graph:
        """The graph of a built-in AlexNet-style chain (BVLC's AlexNet or CaffeNet);
        `num_outputs` gives the outputs of conv and dense steps that do not state them."""
        counts = dict(num_outputs or {})
        h, w = arch.input_size
        layers: list[tuple[LayerDef, dict[str, Any]]] = []
        blob = "data"
        for step in arch.steps:
            if step.op == "relu" or step.op == "dropout":
                kind = "ReLU" if step.op == "relu" else "Dropout"
                layers.append((LayerDef(step.name, kind, [blob], [blob]), {"negative_slope": 0.0}))
                continue
            p: dict[str, Any] = {}
            if step.op == "conv":
                kind = "Convolution"
                p = dict(kernel=step.kernel, stride=step.stride, pad=step.pad)
                p.update(dilation=step.dilation, group=step.group, bias_term=step.bias)
                p["num_output"] = step.num_output or counts.get(step.name, 0)
            elif step.op == "pool":
                kind = "Pooling"
                p = dict(kernel=step.kernel, stride=step.stride, pad=step.pad, ceil=step.ceil)
                p.update(method="max", global_pooling=False)
            elif step.op == "lrn":
                kind = "LRN"
                assert step.lrn is not None
                p = {**step.lrn.as_dict(), "norm_region": "across_channels"}
            elif step.op == "dense":
                kind = "InnerProduct"
                p = dict(
                    num_output=step.num_output or counts.get(step.name, 0), bias_term=step.bias
                )
                p.update(axis=1, transpose=False)
            else:
                kind = "Padding"
                p = {"pad": step.pad[0]}
            layers.append((LayerDef(step.name, kind, [blob], [step.name]), p))
            blob = step.name
        net = NetDef(arch.source, "V2", [d for d, _ in layers], {"data": (1, in_channels, h, w)})
        return cls._build(net, layers, arch.source, [], None)

    @classmethod
    def _build(
        cls,
        net: NetDef,
        definitions: Sequence[tuple[LayerDef, dict[str, Any]]],
        source: str,
        notes: list[str],
        input_shapes: Mapping[str, Sequence[int]] | None,
    ) -> Graph:
        where = Path(source).name if os.sep in source else source
        inputs: dict[str, Shape] = {name: tuple(shape) for name, shape in net.inputs.items()}
        nodes: list[Node] = []
        for definition, params in definitions:
            if definition.phase == "TRAIN":
                continue
            if definition.type in DATA_TYPES:
                declared = list(params.get("shapes") or [])
                for index, top in enumerate(definition.tops):
                    if declared:
                        inputs[top] = tuple(declared[min(index, len(declared) - 1)])
                    else:
                        inputs.setdefault(top, ())
                continue
            if definition.type not in SUPPORTED_TYPES:
                raise UsageError(
                    f"{where}: layer {definition.name!r} has type {definition.type}, which the "
                    f"graph engines do not run (they run {', '.join(sorted(SUPPORTED_TYPES))})"
                )
            nodes.append(
                Node(
                    definition.name,
                    definition.type,
                    tuple(definition.bottoms),
                    tuple(definition.tops),
                    params,
                )
            )
        for name, shape in (input_shapes or {}).items():
            inputs[name] = tuple(int(d) for d in shape)
        _check_links(nodes, inputs, where)
        missing = [name for name, shape in inputs.items() if not shape]
        if missing:
            raise UsageError(
                f"{where}: the input {', '.join(missing)} has no declared shape; give it "
                f"(input_shapes={{'{missing[0]}': (N, C, H, W)}})"
            )
        shapes, node_shapes = _infer(nodes, inputs, where)
        return cls(tuple(nodes), inputs, _outputs(nodes), shapes, node_shapes, source, list(notes))

    # -- facts -------------------------------------------------------------------------------

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise UsageError(f"the graph has no layer {name!r}")

    @property
    def weighted_nodes(self) -> list[Node]:
        """The nodes that read weights, in order."""
        return [node for node in self.nodes if node.weighted]

    def producer(self, blob: str) -> Node | None:
        """The last node that writes `blob` (None for an input)."""
        found = None
        for node in self.nodes:
            if blob in node.tops:
                found = node
        return found

    def blobs(self) -> list[str]:
        """Every blob name: the inputs, then each node's tops in order, once each."""
        names = dict.fromkeys(self.inputs)
        for node in self.nodes:
            names.update(dict.fromkeys(node.tops))
        return list(names)

    def classifier(self) -> tuple[str, str] | None:
        """(logits blob, probability blob) of the last Softmax over a flat (N, K) blob whose
        output is a graph output; None when the net has no such head."""
        for node in reversed(self.nodes):
            if node.type != "Softmax" or node.tops[0] not in self.outputs:
                continue
            shape = self.shapes.get(node.bottoms[0], ())
            if len(shape) >= 2 and all(d == 1 for d in shape[2:]):
                return node.bottoms[0], node.tops[0]
        return None

    def with_batch(self, batch: int) -> Graph:
        """The same graph with every input's first dimension `batch` (shapes re-inferred)."""
        inputs = {name: (batch, *shape[1:]) for name, shape in self.inputs.items()}
        shapes, node_shapes = _infer(list(self.nodes), inputs, self.source)
        return Graph(self.nodes, inputs, self.outputs, shapes, node_shapes, self.source, self.notes)


def _check_links(nodes: Sequence[Node], inputs: Mapping[str, Shape], where: str) -> None:
    made = set(inputs)
    for node in nodes:
        unknown = [blob for blob in node.bottoms if blob not in made]
        if unknown:
            raise UsageError(
                f"{where}: layer {node.name!r} reads {', '.join(unknown)}, which no earlier "
                f"layer writes and the net does not declare as an input"
            )
        if not node.tops:
            raise UsageError(f"{where}: layer {node.name!r} writes no blob")
        made.update(node.tops)


def _infer(
    nodes: Sequence[Node], inputs: Mapping[str, Shape], where: str
) -> tuple[dict[str, Shape], dict[str, tuple[Shape, ...]]]:
    shapes: dict[str, Shape] = dict(inputs)
    node_shapes: dict[str, tuple[Shape, ...]] = {}
    for node in nodes:
        tops = output_shapes(node, [shapes[b] for b in node.bottoms], where)
        for top, shape in zip(node.tops, tops, strict=True):
            shapes[top] = shape
        node_shapes[node.name] = tuple(tops)
    return shapes, node_shapes


def _outputs(nodes: Sequence[Node]) -> tuple[str, ...]:
    """The blobs whose last value no later layer reads, in the order they were written."""
    last_write: dict[str, int] = {}
    read_after: set[str] = set()
    for index, node in enumerate(nodes):
        read_after.update(blob for blob in node.bottoms if last_write.get(blob, index) < index)
        for blob in node.tops:
            last_write[blob] = index
            read_after.discard(blob)
    return tuple(
        blob for blob in sorted(last_write, key=last_write.__getitem__) if blob not in read_after
    )


__all__ = ["DATA_TYPES", "SUPPORTED_TYPES", "WEIGHTED_TYPES", "Graph", "Node"]
