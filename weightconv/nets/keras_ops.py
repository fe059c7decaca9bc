"""The layers of a Caffe graph as Keras 3 layers on NHWC blobs (`weightconv.nets.keras_engine`
builds the model with them).

`Builder` turns each node into Keras layers with Caffe's numbers: a blob of rank 4 is NHWC
(`NHWC_AXIS` maps Caffe's axes), any other keeps Caffe's layout; shape layers go through NCHW
where Caffe's order matters (Flatten, Reshape, Permute, an InnerProduct on a non-4-D blob).
Each node's last layer is named `layer_names` gives it. Keras is passed in, never imported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from weightconv.errors import UsageError
from weightconv.nets.graph import Graph, Node
from weightconv.nets.graph_weights import GraphWeights
from weightconv.nets.shapes import (
    Shape,
    canonical_axis,
    crop_offsets,
    permute_order,
    slice_bounds,
)

#: NHWC position of each NCHW axis of a 4-D blob.
NHWC_AXIS = (0, 3, 1, 2)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def layer_names(graph: Graph) -> dict[tuple[str, int], str]:
    """The Keras layer that holds each blob: ("", index of the input) for an input, (node
    name, top index) for a node's top; Caffe's names made safe for Keras, each unique."""
    used: set[str] = set()

    def allocate(base: str) -> str:
        safe = _UNSAFE.sub("_", base) or "layer"
        name, count = safe, 1
        while name in used:
            name, count = f"{safe}_{count}", count + 1
        used.add(name)
        return name

    names = {("", i): allocate(blob) for i, blob in enumerate(graph.inputs)}
    for node in graph.nodes:
        for index in range(len(node.tops)):
            base = node.name if len(node.tops) == 1 else f"{node.name}__{index}"
            names[(node.name, index)] = allocate(base)
    return names


def keras_shape(shape: Shape) -> Shape:
    """A blob's shape as the Keras model holds it (NHWC when 4-D)."""
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else tuple(shape)


def to_keras_layout(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)) if array.ndim == 4 else array


def to_caffe_layout(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2)) if array.ndim == 4 else array


class Builder:
    """Builds the Keras layers of one graph, node by node."""

    def __init__(self, keras: Any, graph: Graph, weights: GraphWeights | None) -> None:
        from weightconv.nets.keras_layers import layer

        self.k, self.L, self.custom = keras, keras.layers, layer
        self.graph, self.weights = graph, weights
        self.names = layer_names(graph)

    # -- helpers ------------------------------------------------------------------------------

    def refuse(self, node: Node, why: str) -> UsageError:
        return UsageError(f"layer {node.name!r} ({node.type}): the Keras engine cannot {why}")

    def tensors(self, node: Node) -> dict[str, np.ndarray]:
        if self.weights is None or not node.weighted:
            return {}
        return self.weights.tensors.get(node.name, {})

    def axis(self, node: Node, axis: int, shape: Shape) -> int:
        a = canonical_axis(axis, len(shape), node)
        if a == 0:
            raise self.refuse(node, "work along the batch axis")
        return NHWC_AXIS[a] if len(shape) == 4 else a

    def to_caffe(self, x: Any, shape: Shape, name: str) -> Any:
        return self.L.Permute((3, 1, 2), name=name)(x) if len(shape) == 4 else x

    def to_keras(self, x: Any, shape: Shape, name: str) -> Any:
        return self.L.Permute((2, 3, 1), name=name)(x) if len(shape) == 4 else x

    def weighted(self, layer: Any, x: Any, values: Sequence[np.ndarray]) -> Any:
        y = layer(x)
        if self.weights is not None:
            layer.set_weights([np.asarray(v, dtype=np.float32) for v in values])
        return y

    # -- the graph ----------------------------------------------------------------------------

    def build(self) -> tuple[list[Any], dict[str, list[Any]], dict[str, Any]]:
        """(the inputs, each node's tops, each blob's last tensor)."""
        inputs = []
        env: dict[str, Any] = {}
        shapes: dict[str, Shape] = dict(self.graph.inputs)
        for i, (blob, shape) in enumerate(self.graph.inputs.items()):
            tensor = self.k.Input(keras_shape(shape)[1:], name=self.names[("", i)])
            inputs.append(tensor)
            env[blob] = tensor
        tops: dict[str, list[Any]] = {}
        for node in self.graph.nodes:
            made = self.node(
                node, [env[b] for b in node.bottoms], [shapes[b] for b in node.bottoms]
            )
            for index, (top, tensor) in enumerate(zip(node.tops, made, strict=True)):
                shapes[top] = self.graph.node_shapes[node.name][index]
                expected = keras_shape(shapes[top])[1:]
                got = tuple(int(d) for d in tensor.shape[1:])
                if got != expected:
                    raise UsageError(
                        f"layer {node.name!r} ({node.type}): the Keras graph gives "
                        f"{got} for {top}, Caffe {expected} (a bug: please report it)"
                    )
                env[top] = tensor
            tops[node.name] = made
        return inputs, tops, env

    def node(self, node: Node, bottoms: list[Any], shapes: list[Shape]) -> list[Any]:
        out = self.graph.node_shapes[node.name]
        final = [self.names[(node.name, i)] for i in range(len(node.tops))]
        method = getattr(self, "op_" + node.type.lower(), None)
        if method is None:
            raise self.refuse(node, "run this layer type")
        result: list[Any] = method(node, bottoms, shapes, out, final)
        return result

    # -- layers -------------------------------------------------------------------------------

    def op_convolution(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        p, t = node.params, self.tensors(node)
        (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["pad"]
        dilation = tuple(p["dilation"])
        x, name = b[0], final[0]
        if ph or pw:
            x = self.L.ZeroPadding2D(((ph, ph), (pw, pw)), name=f"{name}__pad")(x)
        subsample = max(sh, sw) > 1 and max(dilation) > 1
        layer = self.L.Conv2D(
            out[0][1],
            (kh, kw),
            strides=(1, 1) if subsample else (sh, sw),
            padding="valid",
            dilation_rate=dilation,
            groups=int(p.get("group") or 1),
            use_bias=bool(p.get("bias_term", True)),
            name=f"{name}__conv" if subsample else name,
        )
        y = self.weighted(layer, x, [t[r] for r in node.roles() if r in t])
        if subsample:
            rows = self.custom("AxisSlice")(1, 0, int(y.shape[1]), sh, name=f"{name}__rows")(y)
            y = self.custom("AxisSlice")(2, 0, int(y.shape[2]), sw, name=name)(rows)
        return [y]

    def op_deconvolution(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        p, t = node.params, self.tensors(node)
        (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["pad"]
        if tuple(p["dilation"]) != (1, 1):
            raise self.refuse(node, "run a dilated Deconvolution exactly")
        group, name = int(p.get("group") or 1), final[0]
        c, outputs = shapes[0][1], out[0][1]
        cg, og = c // group, outputs // group
        use_bias = bool(p.get("bias_term", True))
        oh, ow = out[0][2], out[0][3]
        # Keras's 'valid' transpose makes (in - 1) * stride + kernel; Caffe's pad crops that.
        # With nothing to crop and one group, the Conv2DTranspose is the node's last layer and
        # takes its name, so a Keras file written for this model finds its weights by name.
        full = ((shapes[0][2] - 1) * sh + kh, (shapes[0][3] - 1) * sw + kw)
        whole = group == 1 and (ph, pw) == (0, 0) and full == (oh, ow)
        parts = []
        for g in range(group):
            x = b[0]
            if group > 1:
                x = self.custom("AxisSlice")(3, g * cg, (g + 1) * cg, name=f"{name}__in{g}")(x)
            layer = self.L.Conv2DTranspose(
                og,
                (kh, kw),
                strides=(sh, sw),
                padding="valid",
                use_bias=use_bias,
                name=name if whole else f"{name}__deconv" + (str(g) if group > 1 else ""),
            )
            values = []
            if "weights" in t:
                values.append(t["weights"][..., g * cg : (g + 1) * cg])
            if use_bias and "biases" in t:
                values.append(t["biases"][g * og : (g + 1) * og])
            parts.append(self.weighted(layer, x, values))
        y = parts[0] if group == 1 else self.L.Concatenate(axis=-1, name=f"{name}__groups")(parts)
        if whole:
            return [y]
        crop = ((ph, int(y.shape[1]) - ph - oh), (pw, int(y.shape[2]) - pw - ow))
        return [self.L.Cropping2D(crop, name=name)(y)]

    def op_pooling(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        p = node.params
        method = p.get("method", "max")
        if method not in ("max", "ave"):
            raise self.refuse(node, f"run {str(method).upper()} pooling")
        layer = self.custom("CaffePooling")(
            method,
            tuple(p.get("kernel") or (1, 1)),
            tuple(p.get("stride") or (1, 1)),
            tuple(p.get("pad") or (0, 0)),
            bool(p.get("ceil", True)),
            bool(p.get("global_pooling")),
            name=final[0],
        )
        return [layer(b[0])]

    def op_lrn(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        p = node.params
        layer = self.custom("CaffeLocalResponseNorm")(
            int(p.get("local_size", 5)),
            float(p.get("alpha", 1.0)),
            float(p.get("beta", 0.75)),
            float(p.get("k", 1.0)),
            p.get("norm_region", "across_channels"),
            name=final[0],
        )
        return [layer(b[0])]

    def op_innerproduct(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        p, t, shape = node.params, self.tensors(node), shapes[0]
        axis = canonical_axis(int(p.get("axis", 1)), len(shape), node)
        name = final[0]
        if axis == 0:
            raise self.refuse(node, "flatten the batch axis")
        if len(shape) == 4 and axis == 1:
            x = self.L.Flatten(name=f"{name}__flatten")(b[0])  # H, W, C: the kernel's rows
        else:
            x = self.to_caffe(b[0], shape, f"{name}__nchw")
            if axis != len(shape) - 1:
                flat = (*shape[1:axis], math.prod(shape[axis:]))
                x = self.L.Reshape(flat, name=f"{name}__flatten")(x)
        spatial_out = len(out[0]) == 4
        layer = self.L.Dense(
            int(p["num_output"]),
            use_bias=bool(p.get("bias_term", True)),
            name=f"{name}__dense" if spatial_out else name,
        )
        y = self.weighted(layer, x, [t[r] for r in node.roles() if r in t])
        return [self.to_keras(y, out[0], name) if spatial_out else y]

    def op_relu(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        slope = float(node.params.get("negative_slope", 0.0))
        return [self.L.ReLU(negative_slope=slope, name=final[0])(b[0])]

    def op_prelu(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        shape = keras_shape(shapes[0])
        channel = 3 if len(shape) == 4 else 1
        shared = node.params.get("channel_shared")
        axes = [a for a in range(1, len(shape)) if shared or a != channel]
        alpha_shape = tuple(1 if a in axes else shape[a] for a in range(1, len(shape)))
        layer = self.L.PReLU(shared_axes=axes or None, name=final[0])
        t = self.tensors(node)
        values = [t["alpha"].reshape(alpha_shape)] if "alpha" in t else []
        return [self.weighted(layer, b[0], values)]

    def op_elu(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        return [self.L.ELU(alpha=float(node.params.get("alpha", 1.0)), name=final[0])(b[0])]

    def op_sigmoid(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        return [self.L.Activation("sigmoid", name=final[0])(b[0])]

    def op_tanh(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        return [self.L.Activation("tanh", name=final[0])(b[0])]

    def op_absval(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        return [self.custom("CaffeAbs")(name=final[0])(b[0])]

    def op_power(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        p = node.params
        layer = self.custom("CaffePower")(p["power"], p["scale"], p["shift"], name=final[0])
        return [layer(b[0])]

    def op_batchnorm(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        if node.params.get("use_global_stats") is False:
            raise self.refuse(node, "normalise with the batch's own statistics")
        t = self.tensors(node)
        layer = self.L.BatchNormalization(
            axis=self.axis(node, 1, shapes[0]),
            epsilon=float(node.params.get("eps", 1e-5)),
            center=False,
            scale=False,
            name=final[0],
        )
        return [self.weighted(layer, b[0], [t[r] for r in ("mean", "variance") if r in t])]

    def _affine_shape(self, node: Node, shape: Shape, span: Shape) -> tuple[int, Shape]:
        axis = canonical_axis(int(node.params.get("axis", 1)), len(shape), node)
        full = (1,) * axis + tuple(span) + (1,) * (len(shape) - axis - len(span))
        return axis, full

    def _scale_or_bias(self, node: Node, b: list[Any], shapes: Any, final: Any, op: str) -> Any:
        t, shape, name = self.tensors(node), shapes[0], final[0]
        if len(node.bottoms) > 1:
            y_shape = tuple(shapes[1])
            axis, full = self._affine_shape(node, shape, y_shape)
            if axis != 0 or (op == "multiply" and node.params.get("bias_term")):
                raise self.refuse(
                    node, "broadcast a second bottom from an axis other than 0, or add its bias"
                )
            y = b[1]
            if full != y_shape:
                y = self.to_caffe(y, y_shape, f"{name}__nchw")
                y = self.L.Reshape(full[1:], name=f"{name}__broadcast")(y)
                y = self.to_keras(y, full, f"{name}__nhwc")
            return [self.custom("CaffeBroadcast")(op, name=name)([b[0], y])]
        roles = node.roles()
        axis, full = self._affine_shape(node, shape, _span(node, shape))
        if axis == 0:
            raise self.refuse(node, "hold parameters over the batch axis")
        weight_shape = keras_shape(full)[1:]
        layer = self.custom("CaffeAffine")(
            weight_shape,
            "scale" in roles,
            "offset" in roles or "biases" in roles,
            name=name,
        )
        values = [
            to_keras_layout(t[r].reshape(full)).reshape(weight_shape) for r in roles if r in t
        ]
        return [self.weighted(layer, b[0], values)]

    def op_scale(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        return self._scale_or_bias(node, b, shapes, final, "multiply")

    def op_bias(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        return self._scale_or_bias(node, b, shapes, final, "add")

    def op_eltwise(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        op = node.params.get("operation", "sum")
        coeff = [float(c) for c in node.params.get("coeff", [])]
        name = final[0]
        if op == "sum":
            if coeff and len(coeff) != len(b):
                raise UsageError(
                    f"layer {node.name!r}: {len(coeff)} Eltwise coefficients for {len(b)} bottoms"
                )
            if any(c != 1.0 for c in coeff):
                return [self.custom("CaffeWeightedSum")(coeff, name=name)(b)]
            return [self.L.Add(name=name)(b)]
        if op == "prod":
            return [self.L.Multiply(name=name)(b)]
        return [self.L.Maximum(name=name)(b)]

    def op_softmax(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        axis = self.axis(node, int(node.params.get("axis", 1)), shapes[0])
        return [self.L.Softmax(axis=axis, name=final[0])(b[0])]

    def op_concat(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        axis = self.axis(node, int(node.params.get("axis", 1)), shapes[0])
        return [self.L.Concatenate(axis=axis, name=final[0])(b)]

    def op_slice(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        axis, bounds = slice_bounds(node, shapes[0])
        kaxis = self.axis(node, axis, shapes[0])
        piece = self.custom("AxisSlice")
        return [
            piece(kaxis, start, stop, 1, name=name)(b[0])
            for (start, stop), name in zip(bounds, final, strict=True)
        ]

    def op_split(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        return [self.L.Identity(name=name)(b[0]) for name in final]

    op_dropout = op_split

    def _caffe_reshape(self, node: Node, x: Any, shape: Shape, target: Shape, name: str) -> Any:
        if shape[0] != target[0]:
            raise self.refuse(node, "reshape the batch axis")
        x = self.to_caffe(x, shape, f"{name}__nchw")
        spatial = len(target) == 4
        y = self.L.Reshape(target[1:], name=f"{name}__reshape" if spatial else name)(x)
        return self.to_keras(y, target, name) if spatial else y

    def op_flatten(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        return [self._caffe_reshape(node, b[0], shapes[0], out[0], final[0])]

    op_reshape = op_flatten

    def op_permute(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        order = permute_order(node, len(shapes[0]))
        if order[0] != 0:
            raise self.refuse(node, "move the batch axis")
        name = final[0]
        x = self.to_caffe(b[0], shapes[0], f"{name}__nchw")
        spatial = len(out[0]) == 4
        y = self.L.Permute(order[1:], name=f"{name}__permute" if spatial else name)(x)
        return [self.to_keras(y, out[0], name) if spatial else y]

    def op_crop(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        shape, reference = shapes
        axis, offsets = crop_offsets(node, shape, reference)
        name = final[0]
        cuts = {
            a: (offset, offset + reference[a])
            for a, offset in zip(range(axis, len(shape)), offsets, strict=True)
            if (offset, reference[a]) != (0, shape[a])
        }
        if 0 in cuts:
            raise self.refuse(node, "crop the batch axis")
        x = b[0]
        if len(shape) == 4:
            if 1 in cuts:
                start, stop = cuts.pop(1)
                x = self.custom("AxisSlice")(3, start, stop, 1, name=f"{name}__channels")(x)
            rows, cols = cuts.get(2, (0, shape[2])), cuts.get(3, (0, shape[3]))
            crop = ((rows[0], shape[2] - rows[1]), (cols[0], shape[3] - cols[1]))
            return [self.L.Cropping2D(crop, name=name)(x)]
        for a, (start, stop) in cuts.items():
            x = self.custom("AxisSlice")(a, start, stop, 1, name=f"{name}__axis{a}")(x)
        return [self.L.Identity(name=name)(x)]

    def op_padding(self, node: Node, b: list[Any], shapes: Any, out: Any, final: Any) -> Any:
        pad = int(node.params.get("pad", 0))
        return [self.L.ZeroPadding2D(((pad, pad), (pad, pad)), name=final[0])(b[0])]


def _span(node: Node, shape: Shape) -> Shape:
    axis = canonical_axis(int(node.params.get("axis", 1)), len(shape), node)
    num_axes = int(node.params.get("num_axes", 1))
    return tuple(shape[axis:] if num_axes == -1 else shape[axis : axis + num_axes])


__all__ = [
    "NHWC_AXIS",
    "Builder",
    "keras_shape",
    "layer_names",
    "to_caffe_layout",
    "to_keras_layout",
]
