"""Pure array transforms between Caffe and TensorFlow/Keras layouts.

Every function takes arrays and returns arrays (views where NumPy allows); none
reads or writes files.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .errors import ShapeError
from .weights import CAFFE, CANONICAL, Kind, Layer


def conv_oihw_to_hwio(kernel: np.ndarray) -> np.ndarray:
    """Caffe (out, in/group, kh, kw) -> TensorFlow (kh, kw, in/group, out); a view."""
    _expect_ndim(kernel, 4, "conv kernel")
    return kernel.transpose(2, 3, 1, 0)


def conv_hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """TensorFlow (kh, kw, in/group, out) -> Caffe (out, in/group, kh, kw); a view."""
    _expect_ndim(kernel, 4, "conv kernel")
    return kernel.transpose(3, 2, 0, 1)


def deconv_caffe_to_tf(kernel: np.ndarray) -> np.ndarray:
    """Caffe Deconvolution (in, out/group, kh, kw) -> conv2d_transpose (kh, kw, out/group, in)."""
    _expect_ndim(kernel, 4, "deconvolution kernel")
    return kernel.transpose(2, 3, 1, 0)


def dense_out_in_to_in_out(weights: np.ndarray) -> np.ndarray:
    """(out, in) -> (in, out); a view."""
    _expect_ndim(weights, 2, "dense weights")
    return weights.T


def flatten_chw_to_hwc(weights: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    """Reorder the rows of an (in, out) dense kernel from C, H, W to H, W, C flattening.

    ``weights`` is (C*H*W, out) with rows in Caffe's C, H, W order; the result has
    the same shape with rows in the H, W, C order a TensorFlow Flatten produces.
    """
    c, h, w = chw
    _expect_ndim(weights, 2, "dense weights")
    if weights.shape[0] != c * h * w:
        raise ShapeError(
            f"dense weights have {weights.shape[0]} inputs but the input blob is "
            f"{c}x{h}x{w} = {c * h * w}"
        )
    out = weights.shape[1]
    return weights.reshape(c, h, w, out).transpose(1, 2, 0, 3).reshape(c * h * w, out)


def flatten_hwc_to_chw(weights: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    """Inverse of `flatten_chw_to_hwc`."""
    c, h, w = chw
    _expect_ndim(weights, 2, "dense weights")
    if weights.shape[0] != c * h * w:
        raise ShapeError(
            f"dense weights have {weights.shape[0]} inputs but the input blob is "
            f"{c}x{h}x{w} = {c * h * w}"
        )
    out = weights.shape[1]
    return weights.reshape(h, w, c, out).transpose(2, 0, 1, 3).reshape(c * h * w, out)


def to_canonical(layer: Layer) -> Layer:
    """Return `layer` with its tensors in the canonical layout (a new Layer; input untouched)."""
    if layer.layout == CANONICAL:
        return layer
    if layer.layout != CAFFE:
        raise ShapeError(f"layer {layer.name!r}: unknown layout {layer.layout!r}")
    tensors = dict(layer.tensors)
    if layer.kind == Kind.CONV and "weights" in tensors:
        tensors["weights"] = conv_oihw_to_hwio(tensors["weights"])
    elif layer.kind == Kind.DECONV and "weights" in tensors:
        tensors["weights"] = deconv_caffe_to_tf(tensors["weights"])
    elif layer.kind == Kind.DENSE and "weights" in tensors:
        tensors["weights"] = _caffe_dense_to_canonical(layer, tensors["weights"])
    elif layer.kind == Kind.BATCHNORM and "scale_factor" in tensors:
        tensors = batchnorm_caffe_to_moments(tensors)
    return replace(layer, tensors=tensors, layout=CANONICAL)


def batchnorm_caffe_to_moments(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Caffe BatchNorm keeps running sums scaled by a factor s (blob 2): mean = blob0 / s,
    variance = blob1 / s, and both are 0 when s is 0, as in Caffe."""
    factor = float(np.asarray(tensors["scale_factor"]).reshape(-1)[0])
    inverse = 0.0 if factor == 0 else 1.0 / factor
    out = {role: array for role, array in tensors.items() if role != "scale_factor"}
    for role in ("mean", "variance"):
        if role in out:
            out[role] = (out[role] * inverse).astype(out[role].dtype, copy=False)
    return out


def _caffe_dense_to_canonical(layer: Layer, weights: np.ndarray) -> np.ndarray:
    in_out = weights if layer.params.get("transpose") else dense_out_in_to_in_out(weights)
    shape = layer.input_shape
    if shape is None:
        if layer.params.get("follows_spatial"):
            raise ShapeError(
                f"layer {layer.name!r}: its input is a spatial blob of unknown height and width "
                f"({in_out.shape[0]} inputs); pass the deploy prototxt (--prototxt) or "
                f"--input-shape C,H,W so the C,H,W -> H,W,C flatten order can be fixed"
            )
        return in_out
    if len(shape) == 3 and shape[1] * shape[2] > 1:
        return flatten_chw_to_hwc(in_out, (shape[0], shape[1], shape[2]))
    total = int(np.prod(shape)) if shape else in_out.shape[0]
    if total != in_out.shape[0]:
        raise ShapeError(
            f"layer {layer.name!r}: weights have {in_out.shape[0]} inputs but its input blob "
            f"is {'x'.join(map(str, shape))} = {total}"
        )
    return in_out


def _expect_ndim(array: np.ndarray, ndim: int, what: str) -> None:
    if array.ndim != ndim:
        raise ShapeError(f"{what} must be {ndim}-D, got shape {tuple(array.shape)}")


def canonicalization_steps(layer: Layer) -> list[str]:
    """What `to_canonical` does to `layer`, in words, for conversion summaries."""
    if layer.layout == CANONICAL or "weights" not in layer.tensors:
        return []
    if layer.kind == Kind.CONV:
        return ["conv kernel OIHW -> HWIO"]
    if layer.kind == Kind.DECONV:
        return ["deconv kernel (in, out, kh, kw) -> (kh, kw, out, in)"]
    if layer.kind == Kind.DENSE:
        steps = [] if layer.params.get("transpose") else ["dense (out, in) -> (in, out)"]
        shape = layer.input_shape
        if shape is not None and len(shape) == 3 and shape[1] * shape[2] > 1:
            steps.append(f"flatten order C,H,W -> H,W,C ({shape[0]}x{shape[1]}x{shape[2]})")
        return steps
    return []
