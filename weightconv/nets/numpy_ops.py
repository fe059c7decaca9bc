"""Caffe's layers in NumPy, float32 throughout as Caffe computes, on NCHW blobs.

Each op takes the node, its bottoms and its tensors in canonical layout and returns its
tops. The layout is undone here, once per node, into what the arithmetic wants: an HWIO
kernel becomes Caffe's (group, out/group, in/group * kh * kw) matrix for an im2col + BLAS
matmul; a (kh, kw, out/group, in) Deconvolution kernel becomes Caffe's (in, out/group, kh,
kw); a dense kernel's H, W, C rows are met by flattening a spatial bottom in H, W, C order.
A wrong layout in a converted file therefore gives wrong numbers, never a quiet fix.

Semantics are Caffe's: symmetric (per-axis) padding, dilation, groups; pooling windows
clipped to the input plus padding (AVE divides by that clipped window, padding counted);
LRN's alpha / local_size (ACROSS_CHANNELS) and alpha / local_size^2 over a zero-padded
square with shift 1 (WITHIN_CHANNEL, as Caffe's square -> AVE pool -> power layers do).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from weightconv.errors import UsageError
from weightconv.nets.graph import Node
from weightconv.nets.shapes import (
    canonical_axis,
    crop_offsets,
    permute_order,
    pool_geometry,
    reshape_target,
    slice_bounds,
)

F32 = np.float32
Tensors = dict[str, np.ndarray]
Op = Callable[[Node, Sequence[np.ndarray], Tensors], list[np.ndarray]]


def _pad(x: np.ndarray, ph: int, pw: int, value: float = 0.0) -> np.ndarray:
    if not (ph or pw):
        return x
    n, c, h, w = x.shape
    out = np.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=F32)
    out[:, :, ph : ph + h, pw : pw + w] = x
    return out


def _windows(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out: tuple[int, int],
) -> np.ndarray:
    """A (N, C, kh, kw, out_h, out_w) view of the windows of a padded NCHW `x`."""
    n, c, _, _ = x.shape
    sn, sc, sh, sw = x.strides
    (kh, kw), (st_h, st_w), (dh, dw), (oh, ow) = kernel, stride, dilation, out
    return as_strided(
        x,
        shape=(n, c, kh, kw, oh, ow),
        strides=(sn, sc, sh * dh, sw * dw, sh * st_h, sw * st_w),
        writeable=False,
    )


def convolution(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    p = node.params
    x = bottoms[0]
    n, _c, h, w = x.shape
    group = int(p.get("group") or 1)
    kernel = t["weights"]  # (kh, kw, c/group, out)
    kh, kw, per_group, out = kernel.shape
    (sh, sw), (ph, pw), (dh, dw) = p["stride"], p["pad"], p["dilation"]
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    # Caffe's weight matrix per group: (out/group, c/group * kh * kw), columns c, kh, kw
    matrix = np.ascontiguousarray(
        kernel.transpose(3, 2, 0, 1).reshape(group, out // group, per_group * kh * kw)
    )
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        columns = x.reshape(n, group, per_group, h * w)
    else:
        view = _windows(_pad(x, ph, pw), (kh, kw), (sh, sw), (dh, dw), (oh, ow))
        columns = view.reshape(n, group, per_group * kh * kw, oh * ow)
    y = np.matmul(matrix, columns).reshape(n, out, oh, ow)
    if "biases" in t:
        y += t["biases"].reshape(1, out, 1, 1)
    return [y]


def deconvolution(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    """Caffe's Deconvolution: the transpose of its convolution (col = W^T x, then col2im)."""
    p = node.params
    x = bottoms[0]
    n, c, h, w = x.shape
    group = int(p.get("group") or 1)
    kernel = t["weights"]  # (kh, kw, out/group, c)
    kh, kw, per_group_out, _ = kernel.shape
    out = per_group_out * group
    (sh, sw), (ph, pw), (dh, dw) = p["stride"], p["pad"], p["dilation"]
    oh = sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph
    ow = sw * (w - 1) + dw * (kw - 1) + 1 - 2 * pw
    # Caffe's blob (c, out/group, kh, kw), as (group, c/group, out/group * kh * kw)
    blob = kernel.transpose(3, 2, 0, 1).reshape(group, c // group, per_group_out * kh * kw)
    columns = np.matmul(
        np.ascontiguousarray(blob.transpose(0, 2, 1)), x.reshape(n, group, c // group, h * w)
    ).reshape(n, out, kh, kw, h, w)
    full = np.zeros((n, out, oh + 2 * ph, ow + 2 * pw), dtype=F32)
    for i in range(kh):
        for j in range(kw):
            top, left = i * dh, j * dw
            full[:, :, top : top + sh * (h - 1) + 1 : sh, left : left + sw * (w - 1) + 1 : sw] += (
                columns[:, :, i, j]
            )
    y = np.ascontiguousarray(full[:, :, ph : ph + oh, pw : pw + ow])
    if "biases" in t:
        y += t["biases"].reshape(1, out, 1, 1)
    return [y]


def pooling(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    x = bottoms[0]
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = pool_geometry(node, x.shape)
    method = node.params.get("method", "max")
    if method not in ("max", "ave"):
        raise UsageError(f"layer {node.name!r}: {method.upper()} pooling is not supported")
    # room for every window: the padding, and past it as far as a ceil-rounded window reaches
    full_h = max(h + 2 * ph, (oh - 1) * sh + kh)
    full_w = max(w + 2 * pw, (ow - 1) * sw + kw)
    fill = -np.inf if method == "max" else 0.0
    padded = np.full((n, c, full_h, full_w), fill, dtype=F32)
    padded[:, :, ph : ph + h, pw : pw + w] = x
    total: np.ndarray | None = None
    for i in range(kh):
        for j in range(kw):
            window = padded[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            if total is None:
                total = window.copy()
            elif method == "max":
                np.maximum(total, window, out=total)
            else:
                total += window
    assert total is not None
    if method == "max":
        return [total]

    def divisors(size: int, count: int, k: int, s: int, pad: int) -> np.ndarray:
        starts = np.arange(count) * s - pad
        return (np.minimum(starts + k, size + pad) - starts).astype(F32)

    area = np.outer(divisors(h, oh, kh, sh, ph), divisors(w, ow, kw, sw, pw))
    return [total / area]


def lrn(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    p = node.params
    x = bottoms[0]
    size = int(p.get("local_size", 5))
    alpha, beta = F32(p.get("alpha", 1.0)), F32(p.get("beta", 0.75))
    if size % 2 == 0:
        raise UsageError(f"layer {node.name!r}: LRN local_size {size} is even")
    squares = x * x
    pre = (size - 1) // 2
    if p.get("norm_region", "across_channels") == "across_channels":
        c = x.shape[1]
        padded = np.zeros((x.shape[0], c + size - 1, *x.shape[2:]), dtype=F32)
        padded[:, pre : pre + c] = squares
        total = np.zeros_like(x)
        for i in range(size):
            total += padded[:, i : i + c]
        scale = F32(p.get("k", 1.0)) + (alpha / F32(size)) * total
    else:
        padded = _pad(squares, pre, pre)
        h, w = x.shape[2:]
        total = np.zeros_like(x)
        for i in range(size):
            for j in range(size):
                total += padded[:, :, i : i + h, j : j + w]
        scale = F32(1.0) + alpha * (total / F32(size * size))
    return [x * np.power(scale, -beta)]


def inner_product(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    p = node.params
    x = bottoms[0]
    axis = canonical_axis(int(p.get("axis", 1)), x.ndim, node)
    if x.ndim == 4 and axis == 1 and x.shape[2] * x.shape[3] > 1:
        x = x.transpose(0, 2, 3, 1)  # the canonical kernel's rows are H, W, C
    lead = x.shape[:axis]
    flat = np.ascontiguousarray(x).reshape(int(np.prod(lead)), -1)
    y = flat @ t["weights"]
    if "biases" in t:
        y += t["biases"]
    return [y.reshape(*lead, y.shape[-1])]


def _per_channel(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    return values.reshape(1, -1, *([1] * (x.ndim - 2))) if values.size > 1 else values.reshape(())


def batch_norm(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    x = bottoms[0]
    eps = F32(node.params.get("eps", 1e-5))
    if node.params.get("use_global_stats") is False:
        axes = (0, *range(2, x.ndim))
        mean = x.mean(axis=axes, dtype=F32)
        variance = ((x - _per_channel(x, mean)) ** 2).mean(axis=axes, dtype=F32)
    else:
        mean, variance = t["mean"], t["variance"]
    shape = (1, -1, *([1] * (x.ndim - 2)))
    return [(x - mean.reshape(shape)) / np.sqrt(variance.reshape(shape) + eps)]


def _affine(node: Node, x: np.ndarray, value: np.ndarray) -> np.ndarray:
    """`value` shaped to broadcast against `x` from the node's axis."""
    axis = canonical_axis(int(node.params.get("axis", 1)), x.ndim, node) if x.ndim else 0
    if value.ndim == 0:
        return value
    trailing = x.ndim - axis - value.ndim
    return value.reshape((1,) * axis + value.shape + (1,) * trailing)


def scale(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    x = bottoms[0]
    factor = bottoms[1] if len(bottoms) > 1 else t["scale"]
    y = x * _affine(node, x, factor)
    if "offset" in t:
        y += _affine(node, x, t["offset"])
    return [y]


def bias(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    x = bottoms[0]
    value = bottoms[1] if len(bottoms) > 1 else t["biases"]
    return [x + _affine(node, x, value)]


def eltwise(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    op = node.params.get("operation", "sum")
    coeff = list(node.params.get("coeff", []))
    if op == "sum":
        if coeff and len(coeff) != len(bottoms):
            raise UsageError(
                f"layer {node.name!r}: {len(coeff)} Eltwise coefficients for {len(bottoms)} bottoms"
            )
        weights = coeff or [1.0] * len(bottoms)
        y = np.zeros_like(bottoms[0])
        for weight, b in zip(weights, bottoms, strict=True):
            y += F32(weight) * b
        return [y]
    if op == "prod":
        y = bottoms[0].copy()
        for b in bottoms[1:]:
            y *= b
        return [y]
    y = bottoms[0].copy()
    for b in bottoms[1:]:
        np.maximum(y, b, out=y)
    return [y]


def softmax(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    x = bottoms[0]
    axis = canonical_axis(int(node.params.get("axis", 1)), x.ndim, node)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


def _elementwise(f: Callable[[Node, np.ndarray, Tensors], np.ndarray]) -> Op:
    def op(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
        return [np.asarray(f(node, bottoms[0], t), dtype=F32)] * len(node.tops)

    return op


def _relu(node: Node, x: np.ndarray, t: Tensors) -> np.ndarray:
    slope = F32(node.params.get("negative_slope", 0.0))
    return np.maximum(x, 0) + slope * np.minimum(x, 0) if slope else np.maximum(x, 0)


def _prelu(node: Node, x: np.ndarray, t: Tensors) -> np.ndarray:
    return np.maximum(x, 0) + _per_channel(x, t["alpha"]) * np.minimum(x, 0)


def _elu(node: Node, x: np.ndarray, t: Tensors) -> np.ndarray:
    alpha = F32(node.params.get("alpha", 1.0))
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _power(node: Node, x: np.ndarray, t: Tensors) -> np.ndarray:
    p = node.params
    power, factor, shift = F32(p["power"]), F32(p["scale"]), F32(p["shift"])
    base = factor * x + shift
    return base if power == 1 else np.power(base, power)


def _sigmoid(node: Node, x: np.ndarray, t: Tensors) -> np.ndarray:
    return F32(0.5) * np.tanh(F32(0.5) * x) + F32(0.5)


def _copy(node: Node, x: np.ndarray, t: Tensors) -> np.ndarray:
    return x


def concat(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    axis = canonical_axis(int(node.params.get("axis", 1)), bottoms[0].ndim, node)
    return [np.concatenate(bottoms, axis=axis)]


def slice_(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    x = bottoms[0]
    axis, bounds = slice_bounds(node, x.shape)
    index: list[Any] = [slice(None)] * x.ndim
    tops = []
    for start, stop in bounds:
        index[axis] = slice(start, stop)
        tops.append(np.ascontiguousarray(x[tuple(index)]))
    return tops


def flatten(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    x = bottoms[0]
    axis = canonical_axis(int(node.params.get("axis", 1)), x.ndim, node)
    end = canonical_axis(int(node.params.get("end_axis", -1)), x.ndim, node, "end_axis")
    return [x.reshape(*x.shape[:axis], -1, *x.shape[end + 1 :])]


def reshape(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    return [bottoms[0].reshape(reshape_target(node, bottoms[0].shape))]


def permute(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    x = bottoms[0]
    return [np.ascontiguousarray(x.transpose(permute_order(node, x.ndim)))]


def crop(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    x, reference = bottoms
    axis, offsets = crop_offsets(node, x.shape, reference.shape)
    index = [slice(None)] * axis + [
        slice(offset, offset + size)
        for offset, size in zip(offsets, reference.shape[axis:], strict=True)
    ]
    return [np.ascontiguousarray(x[tuple(index)])]


def padding(node: Node, bottoms: Sequence[np.ndarray], t: Tensors) -> list[np.ndarray]:
    pad = int(node.params.get("pad", 0))
    return [_pad(bottoms[0], pad, pad)]


OPS: dict[str, Op] = {
    "Convolution": convolution,
    "Deconvolution": deconvolution,
    "Pooling": pooling,
    "LRN": lrn,
    "InnerProduct": inner_product,
    "BatchNorm": batch_norm,
    "Scale": scale,
    "Bias": bias,
    "Eltwise": eltwise,
    "Softmax": softmax,
    "ReLU": _elementwise(_relu),
    "PReLU": _elementwise(_prelu),
    "ELU": _elementwise(_elu),
    "Sigmoid": _elementwise(_sigmoid),
    "TanH": _elementwise(lambda node, x, t: np.tanh(x)),
    "AbsVal": _elementwise(lambda node, x, t: np.abs(x)),
    "Power": _elementwise(_power),
    "Dropout": _elementwise(_copy),
    "Split": _elementwise(_copy),
    "Concat": concat,
    "Slice": slice_,
    "Flatten": flatten,
    "Reshape": reshape,
    "Permute": permute,
    "Crop": crop,
    "Padding": padding,
}

__all__ = ["OPS"]
