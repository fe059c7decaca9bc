"""The shape of each layer's tops from its bottoms' shapes, with Caffe's arithmetic.

Convolution rounds down; pooling rounds up (or down with ``round_mode: FLOOR``) and drops a
last window that would start in the padding; Deconvolution inverts the convolution's
formula; the shape layers (Flatten, Reshape with 0 and -1, Permute, Crop, Slice, Concat)
follow Caffe's reshape rules, axes counted from the end when negative. A layer that cannot
run on the shapes it is given is refused, naming it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from weightconv.errors import ShapeError, UsageError
from weightconv.formats.caffe.net import conv_output_size, pool_output_size
from weightconv.nets.node import Node

Shape = tuple[int, ...]

#: Layers whose top has the shape of their first bottom.
ELEMENTWISE = frozenset(
    {
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
        "Softmax",
        "Dropout",
        "LRN",
    }
)


def canonical_axis(axis: int, ndim: int, node: Node, what: str = "axis") -> int:
    """`axis` in 0..ndim-1 (negative counts from the end); refused when out of range."""
    if not -ndim <= axis < ndim:
        raise UsageError(f"layer {node.name!r}: {what} {axis} is out of range for {ndim} axes")
    return axis % ndim


def pool_geometry(
    node: Node, shape: Shape
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kernel, stride, pad, output size) of a Pooling node on an NCHW `shape`."""
    p = node.params
    h, w = shape[2], shape[3]
    if p.get("global_pooling"):
        kernel, stride, pad = (h, w), (1, 1), (0, 0)
    else:
        kernel, stride, pad = tuple(p["kernel"]), tuple(p["stride"]), tuple(p["pad"])
    if min(kernel) < 1 or min(stride) < 1:
        raise UsageError(f"layer {node.name!r}: pooling kernel {kernel} / stride {stride}")
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise UsageError(f"layer {node.name!r}: pad {pad} must be smaller than kernel {kernel}")
    ceil = bool(p.get("ceil", True))
    out = (
        pool_output_size(h, kernel[0], stride[0], pad[0], ceil),
        pool_output_size(w, kernel[1], stride[1], pad[1], ceil),
    )
    return kernel, stride, pad, out


def reshape_target(node: Node, shape: Shape) -> Shape:
    """Caffe's Reshape: dims replace axes [axis, axis + num_axes) of the input; 0 copies the
    input's dim at that position, one -1 is inferred from the count."""
    p = node.params
    ndim = len(shape)
    axis = int(p.get("axis", 0))
    start = axis + ndim + 1 if axis < 0 else axis
    num_axes = int(p.get("num_axes", -1))
    end = ndim if num_axes == -1 else start + num_axes
    if not 0 <= start <= end <= ndim:
        raise UsageError(f"layer {node.name!r}: reshape axis {axis} / num_axes {num_axes}")
    dims = [int(d) for d in p.get("dims", [])]
    out: list[int] = []
    for index, d in enumerate(dims):
        if d == 0:
            if start + index >= ndim:
                raise UsageError(f"layer {node.name!r}: dim {index} copies a missing axis")
            out.append(shape[start + index])
        else:
            out.append(d)
    target = [*shape[:start], *out, *shape[end:]]
    if target.count(-1) > 1:
        raise UsageError(f"layer {node.name!r}: reshape infers more than one dim")
    total = math.prod(shape)
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        if known == 0 or total % known:
            raise ShapeError(f"layer {node.name!r}: cannot reshape {shape} to {tuple(dims)}")
        target[target.index(-1)] = total // known
    if math.prod(target) != total:
        raise ShapeError(f"layer {node.name!r}: cannot reshape {shape} to {tuple(target)}")
    return tuple(target)


def permute_order(node: Node, ndim: int) -> tuple[int, ...]:
    """The full axis order of a Permute node: the given axes, then the others in order."""
    order = node.params.get("order")
    if order is None:
        raise UsageError(
            f"layer {node.name!r}: a Permute layer without permute_param.order; refusing to "
            f"guess the order"
        )
    given = [canonical_axis(int(a), ndim, node, "permute order") for a in order]
    if len(set(given)) != len(given):
        raise UsageError(f"layer {node.name!r}: permute order {tuple(order)} repeats an axis")
    return (*given, *(a for a in range(ndim) if a not in given))


def crop_offsets(node: Node, shape: Shape, reference: Shape) -> tuple[int, tuple[int, ...]]:
    """(first cropped axis, offset per cropped axis) of a Crop node."""
    ndim = len(shape)
    axis = canonical_axis(int(node.params.get("axis", 2)), ndim, node)
    offsets = [int(o) for o in node.params.get("offset", [])]
    count = ndim - axis
    if len(offsets) not in (0, 1, count):
        raise UsageError(
            f"layer {node.name!r}: {len(offsets)} crop offsets for {count} cropped axes"
        )
    full = tuple(offsets * count if len(offsets) == 1 else offsets or [0] * count)
    for index, offset in enumerate(full):
        if offset + reference[axis + index] > shape[axis + index]:
            raise ShapeError(
                f"layer {node.name!r}: crop offset {offset} + size {reference[axis + index]} "
                f"exceeds axis {axis + index} of {shape}"
            )
    return axis, full


def slice_bounds(node: Node, shape: Shape) -> tuple[int, list[tuple[int, int]]]:
    """(axis, [(start, stop) per top]) of a Slice node."""
    axis = canonical_axis(int(node.params.get("axis", 1)), len(shape), node)
    size = shape[axis]
    points = [int(v) for v in node.params.get("slice_points", [])]
    tops = len(node.tops)
    if points:
        if len(points) != tops - 1:
            raise UsageError(f"layer {node.name!r}: {len(points)} slice points for {tops} tops")
        edges = [0, *points, size]
    else:
        if size % tops:
            raise ShapeError(f"layer {node.name!r}: axis of {size} does not split in {tops}")
        edges = [i * size // tops for i in range(tops + 1)]
    if any(b <= a for a, b in itertools.pairwise(edges)) or edges[-1] != size:
        raise UsageError(f"layer {node.name!r}: slice points {points} on an axis of {size}")
    return axis, list(itertools.pairwise(edges))


def output_shapes(node: Node, bottoms: Sequence[Shape], where: str = "prototxt") -> list[Shape]:
    """The shapes of `node`'s tops, given its bottoms' shapes."""
    t = node.type
    p = node.params
    first = bottoms[0]
    if t in ELEMENTWISE or t == "Split":
        if t == "LRN" and len(first) != 4:
            raise ShapeError(f"layer {node.name!r}: LRN needs an NCHW blob, got {first}")
        return [first] * len(node.tops)
    if t in ("Convolution", "Deconvolution", "Pooling", "Padding") and len(first) != 4:
        raise ShapeError(f"{where}: layer {node.name!r} ({t}) needs an NCHW blob, got {first}")
    if t in ("Convolution", "Deconvolution"):
        n, c, h, w = first
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p["kernel"], p["stride"], p["pad"], p["dilation"]
        group, out = int(p.get("group") or 1), int(p["num_output"])
        if int(p.get("axis", 1)) != 1:
            raise UsageError(f"layer {node.name!r}: convolution over axis {p['axis']}")
        if out < 1 or c % group or out % group:
            raise ShapeError(
                f"layer {node.name!r}: {c} input and {out} output channels do not split "
                f"into {group} groups"
            )
        if t == "Convolution":
            size = (conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw))
        else:
            size = (
                sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph,
                sw * (w - 1) + dw * (kw - 1) + 1 - 2 * pw,
            )
        if min(size) < 1:
            raise ShapeError(f"layer {node.name!r}: input {first} is too small")
        return [(n, out, *size)]
    if t == "Pooling":
        _, _, _, size = pool_geometry(node, first)
        return [(first[0], first[1], *size)] * len(node.tops)
    if t == "Padding":
        pad = int(p.get("pad", 0))
        return [(first[0], first[1], first[2] + 2 * pad, first[3] + 2 * pad)]
    if t == "InnerProduct":
        axis = canonical_axis(int(p.get("axis", 1)), len(first), node)
        return [(*first[:axis], int(p["num_output"]))]
    if t == "Eltwise":
        if any(b != first for b in bottoms) or len(bottoms) < 2:
            raise ShapeError(f"layer {node.name!r}: Eltwise of shapes {list(bottoms)}")
        return [first]
    if t == "Concat":
        axis = canonical_axis(int(p.get("axis", 1)), len(first), node)
        for b in bottoms:
            if (
                len(b) != len(first)
                or b[:axis] != first[:axis]
                or b[axis + 1 :] != first[axis + 1 :]
            ):
                raise ShapeError(f"layer {node.name!r}: Concat of shapes {list(bottoms)}")
        return [(*first[:axis], sum(b[axis] for b in bottoms), *first[axis + 1 :])]
    if t == "Slice":
        axis, bounds = slice_bounds(node, first)
        return [(*first[:axis], stop - start, *first[axis + 1 :]) for start, stop in bounds]
    if t == "Flatten":
        axis = canonical_axis(int(p.get("axis", 1)), len(first), node)
        end = canonical_axis(int(p.get("end_axis", -1)), len(first), node, "end_axis")
        return [(*first[:axis], math.prod(first[axis : end + 1]), *first[end + 1 :])]
    if t == "Reshape":
        return [reshape_target(node, first)]
    if t == "Permute":
        order = permute_order(node, len(first))
        return [tuple(first[a] for a in order)]
    if t == "Crop":
        if len(bottoms) != 2:
            raise UsageError(f"layer {node.name!r}: Crop takes two bottoms")
        axis, _ = crop_offsets(node, first, bottoms[1])
        return [(*first[:axis], *bottoms[1][axis:])]
    raise UsageError(f"{where}: layer {node.name!r} has type {t}, which has no shape rule")


__all__ = [
    "ELEMENTWISE",
    "Shape",
    "canonical_axis",
    "crop_offsets",
    "output_shapes",
    "permute_order",
    "pool_geometry",
    "reshape_target",
    "slice_bounds",
]
