"""The way back from the canonical layout to Caffe's, which PyTorch (and ONNX) keep: conv
kernels OIHW, deconv kernels (in, out/group, kh, kw), dense weights (out, in) with a spatial
input flattened C, H, W.

`to_caffe_layout` is `weightconv.model.canonical.to_canonical` reversed, one layer at a time.
The dense rows are the one step that needs more than the tensor: the (C, H, W) of the layer's
input, from the layer (`Layer.input_shape`) or from the caller; when neither has it and the
input may be spatial, the layer is refused, never guessed.

Example::

    torch_like = to_caffe_layout(canonical_fc6, input_shape=(256, 6, 6))
    torch_like.tensors["weights"].shape   # (4096, 9216), rows in C,H,W order
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from weightconv.arrays import (
    batchnorm_caffe_to_moments,
    conv_hwio_to_oihw_copy,
    dense_in_out_to_out_in_copy,
)
from weightconv.errors import ShapeError
from weightconv.model.canonical import BATCHNORM_ROLES, BATCHNORM_STEP
from weightconv.model.layers import CAFFE, CANONICAL, Kind, Layer
from weightconv.model.tensors import Tensor, converted

#: Kinds whose ``weights`` change between the layouts; any other tensor is the same in both
#: unless it has three or more axes, whose Caffe layout is not known here.
_KERNEL_KINDS = (Kind.CONV, Kind.DECONV, Kind.DENSE)


def to_caffe_layout(
    layer: Layer, input_shape: tuple[int, ...] | None = None, *, hint: str = ""
) -> Layer:
    """`layer` with its tensors in Caffe's layout (a new Layer; the input is untouched).

    A Caffe-layout layer is returned with its BatchNorm moments unscaled and an InnerProduct
    stored (in, out) transposed, so the result is what PyTorch keeps. `input_shape` is the
    (C, H, W), or the (N,) of a flat input, that a canonical dense layer reads when the layer
    does not record it; `hint` says in the refusal how to give it.
    """
    if layer.layout == CAFFE:
        return _from_caffe(layer)
    if layer.layout != CANONICAL:
        raise ShapeError(f"layer {layer.name!r}: unknown layout {layer.layout!r}")
    tensors: dict[str, Tensor] = dict(layer.tensors)
    for role, tensor in layer.tensors.items():
        if role == "weights" and layer.kind in _KERNEL_KINDS:
            tensors[role] = converted(
                tensor, lambda values: _kernel(layer, values, input_shape, hint)
            )
        elif len(tensor.shape) >= 3:
            shape = "x".join(map(str, tensor.shape))
            raise ShapeError(
                f"layer {layer.name!r} ({layer.kind}): its {role} ({shape}) has no Caffe/PyTorch "
                f"layout known here; leave it out (skip=) or map it first"
            )
    return replace(layer, tensors=tensors, layout=CAFFE)


def _from_caffe(layer: Layer) -> Layer:
    tensors: dict[str, Tensor] = dict(layer.tensors)
    if layer.kind == Kind.BATCHNORM and "scale_factor" in tensors:
        arrays = {role: np.asarray(t) for role, t in tensors.items()}
        tensors = dict(batchnorm_caffe_to_moments(arrays))
    elif layer.kind == Kind.DENSE and layer.params.get("transpose") and "weights" in tensors:
        tensors["weights"] = np.asarray(tensors["weights"]).T
        params = {k: v for k, v in layer.params.items() if k != "transpose"}
        return replace(layer, tensors=tensors, params=params)
    else:
        return layer
    return replace(layer, tensors=tensors)


def _kernel(
    layer: Layer, weights: np.ndarray, given: tuple[int, ...] | None, hint: str
) -> np.ndarray:
    if weights.ndim == 4:  # conv, deconv, or a dense layer laid out as a convolution
        return conv_hwio_to_oihw_copy(weights)
    if layer.kind != Kind.DENSE or weights.ndim != 2:
        raise ShapeError(
            f"layer {layer.name!r} ({layer.kind}): weights of shape {tuple(weights.shape)} have "
            f"no Caffe/PyTorch layout known here"
        )
    inputs = weights.shape[0]
    shape = given if given is not None else layer.input_shape
    if shape is None:
        if layer.params.get("follows_spatial") is False:
            return dense_in_out_to_out_in_copy(weights)  # the reader proved its input flat
        raise ShapeError(
            f"layer {layer.name!r}: its input may be a spatial blob of unknown C,H,W "
            f"({inputs} inputs), which the canonical layout flattens H,W,C and Caffe/PyTorch "
            f"C,H,W; give {hint or 'its input shape'} (or ={inputs} for a flat input)"
        )
    total = int(np.prod(shape)) if shape else 0
    if total != inputs:
        raise ShapeError(
            f"layer {layer.name!r}: weights have {inputs} inputs but its input is "
            f"{'x'.join(map(str, shape))} = {total}"
        )
    if len(shape) == 3 and shape[0] > 1 and shape[1] * shape[2] > 1:
        return dense_in_out_to_out_in_copy(weights, (shape[0], shape[1], shape[2]))
    return dense_in_out_to_out_in_copy(weights)


#: What `to_caffe_layout` does to an InnerProduct stored (in, out) with ``transpose: true``.
TRANSPOSED_DENSE_STEP = "dense (in, out) -> (out, in) (InnerProduct transpose: true)"


def steps(
    layer: Layer, input_shape: tuple[int, ...] | None = None, role: str | None = None
) -> list[str]:
    """What `to_caffe_layout` does to `layer` (to its tensor `role`, when given), in words,
    for conversion summaries."""
    if layer.layout == CAFFE:  # as `_from_caffe` decides
        tensors = layer.tensors
        if layer.kind == Kind.BATCHNORM and "scale_factor" in tensors:
            return [BATCHNORM_STEP] if role in (None, *BATCHNORM_ROLES) else []
        if layer.kind == Kind.DENSE and layer.params.get("transpose") and "weights" in tensors:
            return [TRANSPOSED_DENSE_STEP] if role in (None, "weights") else []
        return []
    if layer.layout != CANONICAL or "weights" not in layer.tensors or role not in (None, "weights"):
        return []
    weights = layer.tensors["weights"]
    if len(weights.shape) == 4 and layer.kind in _KERNEL_KINDS:
        return ["conv kernel HWIO -> OIHW"]
    if layer.kind != Kind.DENSE:
        return []
    out = ["dense (in, out) -> (out, in)"]
    shape = input_shape if input_shape is not None else layer.input_shape
    if shape is not None and len(shape) == 3 and shape[0] > 1 and shape[1] * shape[2] > 1:
        out.append(f"flatten order H,W,C -> C,H,W ({shape[0]}x{shape[1]}x{shape[2]})")
    return out
