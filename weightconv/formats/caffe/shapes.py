"""Caffe's shape arithmetic and the data flow between layers.

The shapes matter for weights in one place: an InnerProduct that follows a spatial blob
stores its inputs flattened C, H, W, and moving it to TensorFlow's H, W, C order needs that
blob's C, H and W. They come from the net's input size and Caffe's own output-size
arithmetic (conv rounds down, pooling rounds up and clips), which this module reproduces,
and from the bottom/top links that say which layer feeds which. Where a net carries no
links, `chained_in_file_order` reads it as a chain, and `reads_flat_input` decides whether
an InnerProduct's input is provably flat.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from weightconv.model import Kind

if TYPE_CHECKING:
    from weightconv.formats.caffe.netdef import LayerDef, NetDef

Shape = tuple[int, ...]

#: Layers whose every top has the shape of their first bottom.
SHAPE_PRESERVING = {
    "ReLU",
    "PReLU",
    "ELU",
    "Sigmoid",
    "TanH",
    "AbsVal",
    "BNLL",
    "Power",
    "Exp",
    "Log",
    "Dropout",
    "LRN",
    "BatchNorm",
    "Scale",
    "Bias",
    "MVN",
    "Softmax",
    "Threshold",
    "Clip",
    "Swish",
    "Split",
    "Eltwise",
}

#: Layers whose output keeps the input's spatial layout (so an InnerProduct after them
#: sees a C, H, W blob).
SPATIAL_PRODUCERS = {"Convolution", "Deconvolution", "Pooling", "Padding", "Crop", "Concat"}

#: The blob a chained net without links starts from when it declares no input of its own.
CHAIN_INPUT = "(input)"


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Caffe convolution: floor((size + 2 pad - (dilation (kernel - 1) + 1)) / stride) + 1."""
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil: bool = True) -> int:
    """Caffe pooling: rounds up by default, then drops a last window that starts in the padding."""
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def infer_blob_shapes(net: NetDef, input_shape: Shape | None = None) -> dict[str, Shape]:
    """Shapes (N, C, H, W) or (N, K) of every blob that can be worked out, by name.

    `input_shape` (C, H, W) fills in data layers whose size the definition does not give,
    or, in a net with neither data layers nor declared inputs, the first blob a layer reads
    that no layer makes.
    """
    shapes: dict[str, Shape] = dict(net.inputs)
    if (
        input_shape is not None
        and not shapes
        and not any(layer.kind == Kind.INPUT for layer in net.layers)
    ):
        made = {top for layer in net.layers for top in layer.tops}
        read = (blob for layer in net.layers for blob in layer.bottoms if blob not in made)
        first = next(read, None)
        if first is not None:
            shapes[first] = (1, *input_shape)
    for layer in net.layers:
        if layer.phase == "TRAIN" and any(top in shapes for top in layer.tops):
            continue
        try:
            outputs = _layer_output_shapes(layer, shapes, input_shape)
        except (ArithmeticError, IndexError, KeyError, ValueError):
            outputs = None
        if outputs is None:
            continue
        for top, shape in zip(layer.tops, outputs, strict=False):
            if shape is not None and all(d > 0 for d in shape):
                shapes[top] = shape
    return shapes


def _layer_output_shapes(
    layer: LayerDef, shapes: dict[str, Shape], input_shape: Shape | None
) -> list[Shape | None] | None:
    kind_type = layer.type
    p = layer.params
    if kind_type in ("Input", "DummyData", "MemoryData"):
        declared = [s for s in p.get("shapes", []) if all(d > 0 for d in s)]
        if declared:
            return [declared[min(i, len(declared) - 1)] for i in range(len(layer.tops))]
    if layer.kind == Kind.INPUT:
        if input_shape is not None and layer.tops:
            return [(1, *input_shape)] + [None] * (len(layer.tops) - 1)
        return None
    bottoms = [shapes.get(b) for b in layer.bottoms]
    first = bottoms[0] if bottoms else None
    if first is None:
        return None
    if kind_type == "Convolution":
        n, _, h, w = first
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p["kernel"], p["stride"], p["pad"], p["dilation"]
        return [
            (
                n,
                p["num_output"],
                conv_output_size(h, kh, sh, ph, dh),
                conv_output_size(w, kw, sw, pw, dw),
            )
        ]
    if kind_type == "Deconvolution":
        n, _, h, w = first
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p["kernel"], p["stride"], p["pad"], p["dilation"]
        return [
            (
                n,
                p["num_output"],
                sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph,
                sw * (w - 1) + dw * (kw - 1) + 1 - 2 * pw,
            )
        ]
    if kind_type == "Pooling":
        n, c, h, w = first
        if p["global_pooling"]:
            return [(n, c, 1, 1)]
        (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["pad"]
        return [
            (
                n,
                c,
                pool_output_size(h, kh, sh, ph, p["ceil"]),
                pool_output_size(w, kw, sw, pw, p["ceil"]),
            )
        ]
    if kind_type == "Padding":
        n, c, h, w = first
        return [(n, c, h + 2 * p["pad"], w + 2 * p["pad"])]
    if kind_type == "InnerProduct":
        return [(first[0], p["num_output"])]
    if kind_type in SHAPE_PRESERVING:
        return [first] * len(layer.tops)
    if kind_type == "Flatten":
        axis = p.get("axis", 1)
        end = p.get("end_axis", -1) % len(first)
        return [(*first[:axis], math.prod(first[axis : end + 1]), *first[end + 1 :])]
    if kind_type == "Concat":
        known = [b for b in bottoms if b is not None]
        if len(known) != len(bottoms):
            return None
        axis = p.get("axis", 1) % len(first)
        return [(*first[:axis], sum(b[axis] for b in known), *first[axis + 1 :])]
    if kind_type == "Slice":
        axis = p.get("axis", 1) % len(first)
        points = [0, *p.get("slice_points", []), first[axis]]
        if len(points) == 2:
            step = first[axis] // len(layer.tops)
            points = [i * step for i in range(len(layer.tops) + 1)]
        return [
            (*first[:axis], points[i + 1] - points[i], *first[axis + 1 :])
            for i in range(len(layer.tops))
        ]
    if kind_type == "Reshape":
        return [_reshape(first, p)]
    second = bottoms[1] if len(bottoms) > 1 else None
    if kind_type == "Crop" and second is not None:
        axis = p.get("axis", 2) % len(first)
        return [(*first[:axis], *second[axis:])]
    return None


def _reshape(shape: Shape, p: dict[str, Any]) -> Shape | None:
    if p.get("axis", 0) != 0 or p.get("num_axes", -1) != -1:
        return None
    dims = list(p.get("dims", []))
    out = [shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if out.count(-1) == 1:
        known = math.prod(d for d in out if d != -1)
        out[out.index(-1)] = math.prod(shape) // known
    return tuple(out)


# --- data flow -----------------------------------------------------------------------------


def _maker(net: NetDef, blob: str) -> tuple[LayerDef | None, str]:
    """The layer that makes `blob`, looking through shape-keeping layers, and the blob it
    makes; (None, blob) when no layer of `net` makes it (a net input, or a dangling link)."""
    producers = {
        top: layer for layer in net.layers for top in layer.tops if top not in layer.bottoms
    }
    seen: set[str] = set()
    while blob not in seen:
        seen.add(blob)
        layer = producers.get(blob)
        if layer is None or layer.type not in SHAPE_PRESERVING or not layer.bottoms:
            return layer, blob
        blob = layer.bottoms[0]
    return None, blob


def feeds_from_spatial(net: NetDef, blob: str) -> bool:
    """Whether `blob` is (through shape-keeping layers) the output of a spatial layer or a
    data layer, so that an InnerProduct on it flattens C, H, W."""
    layer, made = _maker(net, blob)
    if layer is None:
        return made in net.inputs
    return layer.type in SPATIAL_PRODUCERS or layer.kind == Kind.INPUT


def has_links(net: NetDef) -> bool:
    """Whether any layer names the blob it reads (files written by some converters and
    generators carry no bottom/top at all)."""
    return any(layer.bottoms for layer in net.layers)


def chained_in_file_order(net: NetDef, input_shape: Shape) -> NetDef:
    """`net` with every layer reading the output of the one before it, for a net that has no
    links: data layers start the chain, else the net's declared input, else a blob of
    `input_shape` (C, H, W). Only worth trusting where the shapes it implies are checked
    against the weights, which a file that leaves out layers (pooling) then fails."""
    inputs = dict(net.inputs)
    current = next(iter(inputs), None)
    layers = []
    for layer in net.layers:
        if layer.kind == Kind.INPUT:
            bottoms, tops = [], layer.tops[:1] or [layer.name]
        else:
            if current is None:
                current = CHAIN_INPUT
                inputs[current] = (1, *input_shape)
            bottoms, tops = [current], [layer.name]
        layers.append(replace(layer, bottoms=bottoms, tops=tops))
        current = tops[0]
    return replace(net, layers=layers, inputs=inputs)


def reads_flat_input(
    net: NetDef, position: int, inputs: int, dense_outputs: Mapping[str, int], in_order: bool
) -> bool:
    """Whether the InnerProduct at `net.layers[position]`, with `inputs` inputs, provably
    reads a flat (N, K) blob: one made (through shape-keeping layers) by another
    InnerProduct. Its bottom link decides when a layer of `net` makes that blob; otherwise,
    when `in_order` (the layers are in the net's order), the layer before it in file order
    does, counting only an InnerProduct with `inputs` outputs (`dense_outputs`, by name).
    Anything else may be spatial: a conv or pool before it, a data blob, an unknown layer."""
    layer = net.layers[position]
    if layer.bottoms:
        maker, blob = _maker(net, layer.bottoms[0])
        if maker is not None:
            return maker.kind == Kind.DENSE
        if blob in net.inputs:
            return False
    if not in_order:
        return False
    for earlier in reversed(net.layers[:position]):
        if earlier.type in SHAPE_PRESERVING:
            continue
        return earlier.kind == Kind.DENSE and dense_outputs.get(earlier.name) == inputs
    return False
