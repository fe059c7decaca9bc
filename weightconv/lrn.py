"""Local response normalisation: Caffe's parameters and TensorFlow's, both ways.

Caffe (ACROSS_CHANNELS): ``b_c = a_c / (k + alpha/n * sum of a^2 over the n channels centred
on c)^beta``. TensorFlow (``tf.nn.local_response_normalization``): ``b_c = a_c / (bias + alpha *
sum of a^2 over channels c-r .. c+r)^beta``. So ``n = 2r + 1``, ``bias = k``, ``alpha_tf =
alpha_caffe / n``, ``beta`` the same. Caffe's WITHIN_CHANNEL mode (a spatial window, ``k``
unused) has no TensorFlow counterpart and is refused.

Example::

    tf_params = caffe_to_tf(CaffeLRN(local_size=5, alpha=1e-4, beta=0.75, k=1.0))
    # TfLRN(depth_radius=2, alpha=2e-05, beta=0.75, bias=1.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from weightconv.errors import ShapeError, UsageError

ACROSS_CHANNELS = "across_channels"
WITHIN_CHANNEL = "within_channel"
#: The AlexNet paper's constants (k=2, alpha=1e-4, n=5), which Caffe's reference models do not
#: use: TF code carrying them is usually copied from the paper, not translated from the model.
PAPER_BIAS = 2.0
PAPER_ALPHA = 1e-4


@dataclass(frozen=True)
class CaffeLRN:
    """Caffe's LRNParameter (defaults as in caffe.proto)."""

    local_size: int = 5
    alpha: float = 1.0
    beta: float = 0.75
    k: float = 1.0
    norm_region: str = ACROSS_CHANNELS

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TfLRN:
    """The arguments of ``tf.nn.local_response_normalization``."""

    depth_radius: int
    alpha: float
    beta: float
    bias: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_caffe(params: CaffeLRN, where: str = "LRN") -> None:
    """Raise a clear error for parameters Caffe itself would refuse or TF cannot express."""
    region = params.norm_region.lower()
    if region not in (ACROSS_CHANNELS, WITHIN_CHANNEL):
        raise UsageError(f"{where}: unknown norm_region {params.norm_region!r}")
    if region == WITHIN_CHANNEL:
        raise UsageError(
            f"{where}: norm_region WITHIN_CHANNEL normalises over a spatial window; "
            f"TensorFlow's LRN works across channels only, so it has no "
            f"equivalent (use a pooling-based implementation)"
        )
    if params.local_size < 1 or params.local_size % 2 == 0:
        raise UsageError(
            f"{where}: local_size must be a positive odd number (Caffe requires "
            f"it), got {params.local_size}"
        )
    _positive(where, "beta", params.beta, allow_zero=True)
    _positive(where, "alpha", params.alpha, allow_zero=True)
    _positive(where, "k", params.k)


def validate_tf(params: TfLRN, where: str = "LRN") -> None:
    if params.depth_radius < 0:
        raise UsageError(f"{where}: depth_radius must be 0 or more, got {params.depth_radius}")
    _positive(where, "alpha", params.alpha, allow_zero=True)
    _positive(where, "beta", params.beta, allow_zero=True)
    _positive(where, "bias", params.bias)


def _positive(where: str, name: str, value: float, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        needed = "0 or more" if allow_zero else "greater than 0"
        raise UsageError(f"{where}: {name} must be {needed}, got {value}")


def caffe_to_tf(params: CaffeLRN, where: str = "LRN") -> TfLRN:
    validate_caffe(params, where)
    return TfLRN(
        depth_radius=(params.local_size - 1) // 2,
        alpha=params.alpha / params.local_size,
        beta=params.beta,
        bias=params.k,
    )


def tf_to_caffe(params: TfLRN, where: str = "LRN") -> CaffeLRN:
    validate_tf(params, where)
    size = 2 * params.depth_radius + 1
    return CaffeLRN(local_size=size, alpha=params.alpha * size, beta=params.beta, k=params.bias)


def suspicious(tf_params: TfLRN, source: CaffeLRN | None = None) -> list[str]:
    """Warnings for TF parameters that look copied from the AlexNet paper instead of
    translated from the source model (alpha 1e-4 with bias 2 against a Caffe k of 1)."""
    warnings = []
    looks_like_paper = math.isclose(tf_params.alpha, PAPER_ALPHA) and math.isclose(
        tf_params.bias, PAPER_BIAS
    )
    if source is not None:
        expected = caffe_to_tf(source)
        if not math.isclose(tf_params.alpha, expected.alpha, rel_tol=1e-6):
            warnings.append(
                f"alpha {tf_params.alpha:g} is not the source's {source.alpha:g} / "
                f"{source.local_size} = {expected.alpha:g}"
                + (
                    " (was it divided by local_size?)"
                    if math.isclose(tf_params.alpha, source.alpha, rel_tol=1e-6)
                    else ""
                )
            )
        if not math.isclose(tf_params.bias, expected.bias, rel_tol=1e-6):
            warnings.append(f"bias {tf_params.bias:g} is not the source's k = {source.k:g}")
        if tf_params.depth_radius != expected.depth_radius:
            warnings.append(
                f"depth_radius {tf_params.depth_radius} is not (local_size - 1) / 2 "
                f"= {expected.depth_radius}"
            )
    if looks_like_paper and (source is None or not math.isclose(source.k, PAPER_BIAS)):
        warnings.append(
            "alpha 1e-4 with bias 2 are the AlexNet paper's constants; Caffe's "
            "reference models use k = 1 and alpha 1e-4 / local_size in TF terms"
        )
    return warnings


def from_layer_params(params: dict[str, Any]) -> CaffeLRN:
    """A Caffe LRN layer's recorded params (`Layer.params`) as CaffeLRN."""
    return CaffeLRN(
        local_size=int(params.get("local_size", 5)),
        alpha=float(params.get("alpha", 1.0)),
        beta=float(params.get("beta", 0.75)),
        k=float(params.get("k", 1.0)),
        norm_region=str(params.get("norm_region", ACROSS_CHANNELS)).lower(),
    )


def caffe_lrn(x: np.ndarray, params: CaffeLRN, channel_axis: int = 1) -> np.ndarray:
    """Caffe's ACROSS_CHANNELS LRN computed in float64, as a reference implementation."""
    validate_caffe(params)
    if x.ndim < 1:
        raise ShapeError("LRN input must have a channel axis")
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), channel_axis, -1)
    channels = moved.shape[-1]
    half = (params.local_size - 1) // 2
    squares = np.square(moved)
    padded = np.concatenate(
        [np.zeros((*moved.shape[:-1], half)), squares, np.zeros((*moved.shape[:-1], half))], axis=-1
    )
    window = np.cumsum(np.concatenate([np.zeros((*moved.shape[:-1], 1)), padded], axis=-1), axis=-1)
    sums = window[..., params.local_size : params.local_size + channels] - window[..., :channels]
    scale = params.k + params.alpha / params.local_size * sums
    return np.moveaxis(moved * scale**-params.beta, -1, channel_axis)
