"""The Layer-level canonical rules: how each kind of layer's tensors reach the canonical
(TensorFlow/Keras) layout, and what that costs in words and shapes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from weightconv.arrays import (
    batchnorm_caffe_to_moments,
    contiguous_copy,
    conv_oihw_to_hwio_into,
    deconv_caffe_to_tf,
    dense_out_in_to_in_out,
    flatten_chw_to_hwc,
)
from weightconv.errors import ShapeError
from weightconv.model.layers import CAFFE, CANONICAL, Kind, Layer, WeightSet
from weightconv.model.tensors import FilledTensor, Tensor, converted

#: What both layouts do to a Caffe BatchNorm's blobs (`batchnorm_caffe_to_moments`): Caffe's
#: own arithmetic, the reciprocal rounded to the blobs' dtype, then one multiply.
BATCHNORM_STEP = (
    "batchnorm mean, variance multiplied by 1/scale_factor (0 if it is 0), scale_factor dropped"
)
#: The roles whose values `BATCHNORM_STEP` changes.
BATCHNORM_ROLES = ("mean", "variance")


def canonical_layers(weights: WeightSet) -> Iterator[Layer]:
    """Each weighted layer of `weights` in the canonical layout, converted one at a time.

    Only one converted layer is alive at a time when the caller does not keep them, so
    writing a large model costs about one layer of extra memory.
    """
    for layer in weights.layers:
        if layer.tensors:
            yield deferred_canonical(layer)
            if weights.release is not None:
                weights.release(layer)


#: (shape, dtype, fill): canonical weights that `fill` converts into a buffer (see
#: `FilledTensor`).
DirectWeights = tuple[tuple[int, ...], np.dtype[Any], Callable[[np.ndarray], None]]


def deferred_canonical(layer: Layer) -> Layer:
    """`to_canonical`, except that Caffe conv and dense weights become `FilledTensor`s: known
    by shape and dtype, converted only when a consumer asks for the values (or fills them
    straight into its output), so listing or planning costs no conversion."""
    direct = direct_weights(layer)
    if direct is None:
        return to_canonical(layer)
    shape, dtype, fill = direct
    tensors: dict[str, Tensor] = dict(layer.tensors)
    tensors["weights"] = FilledTensor(shape, dtype, fill)
    return replace(layer, tensors=tensors, layout=CANONICAL)


def to_canonical(layer: Layer) -> Layer:
    """Return `layer` with its tensors in the canonical layout (a new Layer; input untouched)."""
    if layer.layout == CANONICAL:
        return layer
    if layer.layout != CAFFE:
        raise ShapeError(f"layer {layer.name!r}: unknown layout {layer.layout!r}")
    tensors: dict[str, Tensor] = dict(layer.tensors)
    if layer.kind == Kind.CONV and "weights" in tensors:
        tensors["weights"] = conv_oihw_to_hwio_into(np.asarray(tensors["weights"]))
    elif layer.kind == Kind.DECONV and "weights" in tensors:
        tensors["weights"] = deconv_caffe_to_tf(np.asarray(tensors["weights"]))
    elif layer.kind == Kind.DENSE and "weights" in tensors:
        tensors["weights"] = _caffe_dense_to_canonical(layer, np.asarray(tensors["weights"]))
    elif layer.kind == Kind.BATCHNORM and "scale_factor" in tensors:
        arrays = {role: np.asarray(t) for role, t in tensors.items()}
        tensors = dict(batchnorm_caffe_to_moments(arrays))
    return replace(layer, tensors=tensors, layout=CANONICAL)


def _caffe_dense_to_canonical(
    layer: Layer, weights: np.ndarray, into: np.ndarray | None = None
) -> np.ndarray:
    in_out = weights if layer.params.get("transpose") else dense_out_in_to_in_out(weights)
    shape = _dense_input(layer, in_out.shape[0])
    if shape is not None:
        return flatten_chw_to_hwc(in_out, shape, into)
    return contiguous_copy(in_out, into)


def _dense_input(layer: Layer, inputs: int) -> tuple[int, int, int] | None:
    """The (C, H, W) whose flatten order a Caffe dense layer's rows follow, when it has a
    spatial input; None when its input is flat. Raises when that cannot be known."""
    shape = layer.input_shape
    if shape is None and layer.params.get("maybe_embedding"):
        raise ShapeError(
            f"layer {layer.name!r}: its 2-D weight has no bias, so it may be a bias-free dense "
            f"layer (whose canonical weights are transposed) or an embedding table (which is "
            f"not); give its input as dense_inputs={layer.name}=N to take it as dense, or "
            f"skip={layer.name}"
        )
    if shape is None:
        if layer.params.get("follows_spatial"):
            hint = layer.params.get("input_shape_hint") or (
                "give the deploy prototxt (prototxt=) or the net's input_shape=C,H,W"
            )
            raise ShapeError(
                f"layer {layer.name!r}: its input may be a spatial blob of unknown height and "
                f"width ({inputs} inputs); {hint} so the C,H,W -> H,W,C flatten order can "
                f"be fixed"
            )
        return None
    total = int(np.prod(shape)) if shape else inputs
    if total != inputs:
        raise ShapeError(
            f"layer {layer.name!r}: weights have {inputs} inputs but its input blob "
            f"is {'x'.join(map(str, shape))} = {total}"
        )
    if len(shape) == 3 and shape[1] * shape[2] > 1:
        return (shape[0], shape[1], shape[2])
    return None


def canonical_shapes(layer: Layer) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Shape and dtype of each tensor `to_canonical` would give, without converting."""
    shapes = {
        role: (tuple(int(n) for n in t.shape), np.dtype(t.dtype))
        for role, t in layer.tensors.items()
    }
    if layer.layout == CANONICAL:
        return shapes
    if layer.kind == Kind.BATCHNORM:
        shapes.pop("scale_factor", None)
    if "weights" not in shapes:
        return shapes
    shape, dtype = shapes["weights"]
    if layer.kind in (Kind.CONV, Kind.DECONV) and len(shape) == 4:
        shapes["weights"] = ((shape[2], shape[3], shape[1], shape[0]), dtype)
    elif layer.kind == Kind.DENSE and len(shape) == 2 and not layer.params.get("transpose"):
        shapes["weights"] = ((shape[1], shape[0]), dtype)
    return shapes


def direct_weights(layer: Layer) -> DirectWeights | None:
    """For a Caffe-layout conv or dense layer, the canonical weights' shape and dtype and a
    function writing them into a C-contiguous array of that shape (a writer's mapped output
    file): the conversion without an intermediate copy. None for any other layer, whose
    tensors `to_canonical` converts (only ``weights`` changes for these kinds)."""
    weights = layer.tensors.get("weights")
    if layer.layout != CAFFE or weights is None:
        return None
    stored = weights  # an array, or a tensor read only when the fill runs
    convert: Callable[[np.ndarray, np.ndarray], object]
    if layer.kind == Kind.CONV and len(stored.shape) == 4:
        convert = conv_oihw_to_hwio_into
    elif layer.kind == Kind.DENSE and len(stored.shape) == 2:
        _dense_input(layer, stored.shape[0 if layer.params.get("transpose") else 1])

        def convert(values: np.ndarray, into: np.ndarray) -> None:
            _caffe_dense_to_canonical(layer, values, into)

    else:
        return None

    def fill(into: np.ndarray) -> None:
        converted(stored, lambda values: convert(values, into))

    shape, dtype = canonical_shapes(layer)["weights"]
    return shape, dtype, fill


def canonicalization_steps(layer: Layer, role: str | None = None) -> list[str]:
    """What `to_canonical` does to `layer` (to its tensor `role`, when given), in words, for
    conversion summaries."""
    if layer.layout == CANONICAL:
        return []
    if layer.kind == Kind.BATCHNORM and "scale_factor" in layer.tensors:
        return [BATCHNORM_STEP] if role in (None, *BATCHNORM_ROLES) else []
    if "weights" not in layer.tensors or role not in (None, "weights"):
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
