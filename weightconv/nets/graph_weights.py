"""The weights of a `Graph`'s layers, found in a WeightSet and checked against the graph.

The graph is run on weights in weightconv's canonical layout, what a conversion writes: conv
kernels HWIO (I the input channels of one group), Deconvolution kernels
(kh, kw, out/group, in), dense kernels (in, out) with a spatial input's rows in H, W, C
order, BatchNorm's mean and variance already divided by Caffe's scale factor. A Caffe-layout
WeightSet (a .caffemodel read directly) goes through `weightconv.model.canonical` first, so
the engine sees one layout whatever the file. Layout knowledge stays in the model layer and
the engines; this module only finds tensors by layer name and role, joins group parts
(``conv2_group0``, ``conv2_group1``), matches layers by order when the file names them
otherwise and there are exactly as many, and checks every shape, naming the layer, the
shape found and the shape expected.

Example::

    weights = bind(graph, weightconv.load("converted.npy"))
    weights.tensors["conv1"]["weights"].shape      # (11, 11, 3, 96)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from weightconv.errors import MappingError, ShapeError
from weightconv.model import Layer, WeightSet
from weightconv.model.canonical import canonical_layers
from weightconv.nets.graph import Graph, Node
from weightconv.nets.params import fmt_shape

_GROUP_PART = re.compile(r"^(?P<base>.+)_group(?P<index>\d+)$")
#: Canonical role -> the names files give it (Keras and TensorFlow spell some otherwise).
ALIASES = {
    "weights": ("weights", "kernel"),
    "biases": ("biases", "bias"),
    "alpha": ("alpha",),
    "mean": ("mean", "moving_mean"),
    "variance": ("variance", "moving_variance"),
    "scale": ("scale", "gamma"),
    "offset": ("offset", "beta", "biases", "bias"),
}


@dataclass
class GraphWeights:
    """Each weighted node's tensors by canonical role (float32), and the layers they came
    from. `release(name)` lets a mapped file drop the node's pages once they are used."""

    tensors: dict[str, dict[str, np.ndarray]]
    sources: dict[str, list[Layer]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    channel_order: str | None = None
    releaser: Callable[[Layer], None] | None = None

    def release(self, name: str) -> None:
        """Forget node `name`'s tensors and drop their pages from memory."""
        self.tensors.pop(name, None)
        for layer in self.sources.pop(name, []):
            if self.releaser is not None:
                self.releaser(layer)


def _find(layer: Layer, role: str) -> np.ndarray | None:
    for alias in ALIASES.get(role, (role,)):
        if alias in layer.tensors:
            return np.asarray(layer.tensors[alias], dtype=np.float32)
    return None


def _collect(weights: WeightSet) -> tuple[dict[str, list[Layer]], list[str]]:
    """Every layer with tensors, in canonical layout, by name; group parts listed under
    their base name in group order."""
    found: dict[str, list[Layer]] = {}
    parts: dict[str, dict[int, Layer]] = {}
    order: list[str] = []
    for layer in canonical_layers(weights):
        match = _GROUP_PART.match(layer.name)
        if match:
            base = match.group("base")
            if base not in parts:
                order.append(base)
            parts.setdefault(base, {})[int(match.group("index"))] = layer
        else:
            order.append(layer.name)
            found[layer.name] = [layer]
    for base, pieces in parts.items():
        indices = sorted(pieces)
        if indices != list(range(len(indices))):
            raise MappingError(f"{base}: group parts {indices} are not 0..{len(indices) - 1}")
        found[base] = [pieces[i] for i in indices]
    return found, order


def bind(graph: Graph, weights: WeightSet) -> GraphWeights:
    """The tensors of every weighted node of `graph`, checked against its shapes."""
    found, order = _collect(_with_dense_inputs(graph, weights))
    wanted = [node.name for node in graph.weighted_nodes]
    notes: list[str] = []
    missing = [name for name in wanted if name not in found]
    if not missing:
        chosen = {name: found[name] for name in wanted}
    elif len(order) == len(wanted):
        pairs = list(zip(order, wanted, strict=True))
        notes.append(
            "weights matched to the graph's layers by order: "
            + ", ".join(f"{have} -> {want}" for have, want in pairs if have != want)
        )
        chosen = {want: found[have] for have, want in pairs}
    else:
        raise MappingError(
            f"no weights for {', '.join(missing)} (the graph needs "
            f"{', '.join(wanted)}; the weights have {', '.join(order) or 'none'})"
        )
    tensors = {
        node.name: _node_tensors(graph, node, chosen[node.name]) for node in graph.weighted_nodes
    }
    return GraphWeights(
        tensors, chosen, [*weights.notes, *notes], weights.channel_order, weights.release
    )


def flattened_input(graph: Graph, node: Node) -> tuple[int, ...] | None:
    """The 4-D shape a whole-blob Flatten (axis 1 to the end) made an InnerProduct's input
    from, looking back through layers that work in place on it; None when no such Flatten
    made it. A conversion reorders such a layer's rows C, H, W -> H, W, C, as when it reads
    the 4-D blob itself."""
    blob = node.bottoms[0]
    index = graph.nodes.index(node)
    for earlier in reversed(graph.nodes[:index]):
        if blob not in earlier.tops:
            continue
        if blob in earlier.bottoms:  # in place (ReLU, Dropout, ...): look further back
            continue
        p = earlier.params
        whole = int(p.get("axis", 1)) == 1 and int(p.get("end_axis", -1)) == -1
        if earlier.type == "Flatten" and whole:
            shape = graph.shapes[earlier.bottoms[0]]
            return tuple(shape) if len(shape) == 4 else None
        return None
    return None


def _with_dense_inputs(graph: Graph, weights: WeightSet) -> WeightSet:
    """`weights` with each Caffe-layout dense layer whose file does not record its input's
    C, H, W (a PyTorch or safetensors file of a caffemodel) given it from the graph, whose
    deploy net says what Caffe flattens: its rows can then be put in H, W, C order."""
    dense = {
        n.name: flattened_input(graph, n) or graph.shapes[n.bottoms[0]]
        for n in graph.nodes
        if n.type == "InnerProduct"
    }
    layers, changed = [], False
    for layer in weights.layers:
        shape = dense.get(layer.name)
        if shape is not None and layer.input_shape is None and layer.params.get("follows_spatial"):
            layer = dataclasses.replace(layer, input_shape=tuple(shape[1:]))
            changed = True
        layers.append(layer)
    return dataclasses.replace(weights, layers=layers) if changed else weights


def _node_tensors(graph: Graph, node: Node, layers: Sequence[Layer]) -> dict[str, np.ndarray]:
    source = " + ".join(layer.name for layer in layers)
    out: dict[str, np.ndarray] = {}
    if node.type == "Scale" and len(node.bottoms) > 1:
        # Caffe's only blob is the bias; readers may have named it after the scale
        values = [np.asarray(t, dtype=np.float32) for t in layers[0].tensors.values()]
        if len(values) != 1:
            raise MappingError(f"{node.name}: expected one bias tensor in {source}")
        out["offset"] = values[0]
    else:
        for role in node.roles():
            pieces = [_find(layer, role) for layer in layers]
            if any(piece is None for piece in pieces):
                raise MappingError(
                    f"{node.name}: no {role} in {source} (it has "
                    f"{', '.join(layers[0].tensors) or 'nothing'})"
                )
            arrays = [piece for piece in pieces if piece is not None]
            axis = 3 if role == "weights" and arrays[0].ndim == 4 else 0
            out[role] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=axis)
    _check(graph, node, out)
    return out


def _expect(node: Node, role: str, got: np.ndarray, expected: tuple[int, ...], why: str) -> None:
    if tuple(got.shape) != expected:
        raise ShapeError(
            f"{node.name}: {role} {fmt_shape(got.shape)} do not fit the graph, which expects "
            f"{fmt_shape(expected)} ({why})"
        )


def _check(graph: Graph, node: Node, t: dict[str, np.ndarray]) -> None:
    """Check (and where a file's layout allows two spellings, normalise) the tensors."""
    p = node.params
    bottom = graph.shapes[node.bottoms[0]]
    top = graph.node_shapes[node.name][0]
    if node.type in ("Convolution", "Deconvolution"):
        group = int(p.get("group") or 1)
        kh, kw = p["kernel"]
        c, out = bottom[1], top[1]
        if node.type == "Convolution":
            expected, why = (kh, kw, c // group, out), f"{c} input channels / group {group}"
        else:
            expected, why = (kh, kw, out // group, c), f"{out} output channels / group {group}"
        _expect(node, "weights", t["weights"], expected, f"{kh}x{kw} kernel, {why}")
        if "biases" in t:
            _expect(node, "biases", t["biases"], (out,), f"{out} outputs")
    elif node.type == "InnerProduct":
        axis = int(p.get("axis", 1)) % len(bottom)
        inputs = int(np.prod(bottom[axis:]))
        out = int(p["num_output"])
        kernel = t["weights"]
        if kernel.ndim == 4 and axis == 1 and len(bottom) in (2, 4):
            # slim's fc-as-conv: an (H, W, C, out) kernel is the dense kernel, rows H, W, C
            # ((1, 1, K, out) on a flat input)
            spatial = (bottom[2], bottom[3], bottom[1]) if len(bottom) == 4 else (1, 1, bottom[1])
            as_conv = (*spatial, out)
            _expect(node, "weights", kernel, as_conv, "a fully-connected layer as a conv")
            t["weights"] = kernel = kernel.reshape(inputs, out)
        if len(bottom) == 4 and axis == 1 and bottom[2] * bottom[3] > 1:
            why = (
                f"its input is the {bottom[2]}x{bottom[3]}x{bottom[1]} output of the layer "
                f"before, flattened H, W, C"
            )
        else:
            why = f"its input is {inputs}"
        _expect(node, "weights", kernel, (inputs, out), why)
        if "biases" in t:
            _expect(node, "biases", t["biases"], (out,), f"{out} outputs")
        flattened = flattened_input(graph, node)
        if flattened is not None and axis == 1 and flattened[2] * flattened[3] > 1:
            # after a Flatten the engines see Caffe's C, H, W order; the canonical rows are
            # H, W, C of the blob flattened (as a conversion writes them): put them back
            _, c, h, w = flattened
            rows = kernel.reshape(h, w, c, out).transpose(2, 0, 1, 3)
            t["weights"] = np.ascontiguousarray(rows).reshape(inputs, out)
    elif node.type == "PReLU":
        channels = bottom[1] if len(bottom) > 1 else 1
        slopes = 1 if p.get("channel_shared") else channels
        t["alpha"] = t["alpha"].reshape(-1) if t["alpha"].size == slopes else t["alpha"]
        _expect(node, "alpha", t["alpha"], (slopes,), f"{channels} channels")
    elif node.type == "BatchNorm":
        for role in ("mean", "variance"):
            t[role] = t[role].reshape(-1) if t[role].size == bottom[1] else t[role]
            _expect(node, role, t[role], (bottom[1],), f"{bottom[1]} channels")
    elif node.type in ("Scale", "Bias"):
        span = _affine_span(graph, node)
        for role, array in t.items():
            if array.size == int(np.prod(span)):
                t[role] = array.reshape(span)
            _expect(node, role, t[role], span, f"axes {span} of its input {bottom}")


def _affine_span(graph: Graph, node: Node) -> tuple[int, ...]:
    """The shape a Scale's or Bias's parameter broadcasts as: axes [axis, axis + num_axes)
    of the first bottom, or the second bottom's shape."""
    bottom = graph.shapes[node.bottoms[0]]
    if len(node.bottoms) > 1:
        return tuple(graph.shapes[node.bottoms[1]])
    axis = int(node.params.get("axis", 1)) % max(len(bottom), 1)
    num_axes = int(node.params.get("num_axes", 1))
    end = len(bottom) if num_axes == -1 else axis + num_axes
    return tuple(bottom[axis:end])


__all__ = ["ALIASES", "GraphWeights", "bind", "flattened_input"]
