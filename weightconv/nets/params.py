"""The weights of each conv and dense step of an `Architecture`, found and checked.

Weights are taken in weightconv's canonical layout (HWIO kernels, (in, out) dense kernels
with rows in H, W, C order). Group parts such as ``conv2_group0``/``conv2_group1`` are joined
into one kernel; weights named otherwise than the graph's layers are matched by order when
there are exactly as many. Every tensor is checked against the shape the graph expects, and a
mismatch names the layer, the shape found and the shape expected.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from weightconv.errors import MappingError, ShapeError, UsageError
from weightconv.formats.caffe.net import conv_output_size, pool_output_size
from weightconv.lrn import caffe_to_tf
from weightconv.model import Layer, WeightSet
from weightconv.model.canonical import canonical_layers
from weightconv.nets.architecture import BVLC_LRN, Architecture, Step

_GROUP_PART = re.compile(r"^(?P<base>.+)_group(?P<index>\d+)$")
_WEIGHT_ROLES = ("weights", "kernel")
_BIAS_ROLES = ("biases", "bias")


@dataclass
class Params:
    """One step's kernel and biases (float32, canonical layout) and the layers they came from."""

    weights: np.ndarray
    biases: np.ndarray | None
    source: str


def fmt_shape(shape: Sequence[Any]) -> str:
    """A shape as Python writes a tuple: ``(3,)``, ``(5, 5, 6, 32)``."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def assign(arch: Architecture, weights: WeightSet) -> tuple[dict[str, Params], list[str]]:
    """The weights of each conv/dense step: by name, else by position when the counts match.

    Returns the params by step name and notes (how weights were matched by order).
    """
    found, order = _collect(weights)
    wanted = [step.name for step in arch.weighted]
    missing = [name for name in wanted if name not in found]
    if not missing:
        return {name: found[name] for name in wanted}, []
    if len(order) == len(wanted):
        pairs = list(zip(order, wanted, strict=True))
        note = "weights matched to the graph's layers by order: " + ", ".join(
            f"{have} -> {want}" for have, want in pairs if have != want
        )
        return {want: found[have] for have, want in pairs}, [note]
    raise MappingError(
        f"no weights for {', '.join(missing)} (the graph needs "
        f"{', '.join(wanted)}; the weights have {', '.join(order) or 'none'})"
    )


def _role(layer: Layer, roles: Sequence[str]) -> np.ndarray | None:
    for role in roles:
        if role in layer.tensors:
            return np.asarray(layer.tensors[role], dtype=np.float32)
    return None


def _collect(weights: WeightSet) -> tuple[dict[str, Params], list[str]]:
    """Every weighted layer in canonical layout, group parts (conv2_group0, ...) merged."""
    found: dict[str, Params] = {}
    parts: dict[str, dict[int, Params]] = {}
    order: list[str] = []
    for layer in canonical_layers(weights):
        kernel = _role(layer, _WEIGHT_ROLES)
        if kernel is None:
            continue
        params = Params(kernel, _role(layer, _BIAS_ROLES), layer.name)
        match = _GROUP_PART.match(layer.name)
        if match:
            base = match.group("base")
            if base not in parts:
                order.append(base)
            parts.setdefault(base, {})[int(match.group("index"))] = params
        else:
            order.append(layer.name)
            found[layer.name] = params
    for base, pieces in parts.items():
        indices = sorted(pieces)
        if indices != list(range(len(indices))):
            raise MappingError(f"{base}: group parts {indices} are not 0..{len(indices) - 1}")
        ordered = [pieces[i] for i in indices]
        shapes = {p.weights.shape[:-1] for p in ordered}
        if len(shapes) != 1:
            raise ShapeError(
                f"{base}: group parts differ in shape: {[tuple(p.weights.shape) for p in ordered]}"
            )
        biases = [p.biases for p in ordered if p.biases is not None]
        found[base] = Params(
            np.concatenate([p.weights for p in ordered], axis=3),
            np.concatenate(biases) if len(biases) == len(ordered) else None,
            " + ".join(p.source for p in ordered),
        )
    return found, order


def expected_shapes(
    arch: Architecture, params: dict[str, Params], in_channels: int = 3
) -> dict[str, tuple[int, ...]]:
    """Check every tensor against the graph; return each step's output shape (H, W, C) or
    (K,). Raises ShapeError naming the layer, the shape found and the shape expected.
    Fully-connected kernels stored as convolutions (slim's fc-as-conv) become dense."""
    h, w = arch.input_size
    c = in_channels
    flat: int | None = None
    shapes: dict[str, tuple[int, ...]] = {}
    for step in arch.steps:
        if step.op == "conv":
            if flat is not None:
                raise UsageError(f"{step.name}: a convolution after a fully-connected layer")
            h, w, c = _check_conv(arch, step, params[step.name], (h, w, c))
        elif step.op == "pool":
            (kh, kw), (sh, sw), (ph, pw) = step.kernel, step.stride, step.pad
            h, w = (
                pool_output_size(h, kh, sh, ph, step.ceil),
                pool_output_size(w, kw, sw, pw, step.ceil),
            )
        elif step.op == "pad":
            h, w = h + 2 * step.pad[0], w + 2 * step.pad[1]
        elif step.op == "dense":
            flat = _check_dense(step, params[step.name], (h, w, c), flat)
        elif step.op == "lrn":
            caffe_to_tf(step.lrn or BVLC_LRN, step.name)  # refuses what TF cannot express
        shapes[step.name] = (flat,) if flat is not None else (h, w, c)
    if flat is None:
        raise UsageError("the graph ends in a spatial blob; an AlexNet ends in fc layers")
    return shapes


def _check_conv(
    arch: Architecture, step: Step, p: Params, hwc: tuple[int, int, int]
) -> tuple[int, int, int]:
    """The conv's output (H, W, C) after checking its kernel and biases."""
    h, w, c = hwc
    kernel: tuple[int, ...] = p.weights.shape
    out = kernel[-1] if len(kernel) == 4 else -1
    if step.num_output is not None and out != step.num_output:
        out = step.num_output
    per_group = c // step.group if c % step.group == 0 else c / step.group
    expected = (*step.kernel, per_group, out)
    why = f"{c} input channels / group {step.group}" if step.group > 1 else f"{c} input channels"
    if kernel != expected or out % step.group:
        raise ShapeError(
            f"{step.name}: weights {fmt_shape(kernel)} do not fit the graph, "
            f"which expects {fmt_shape(expected)} ({step.kernel[0]}x"
            f"{step.kernel[1]} kernel, {why}, {out} outputs)"
        )
    _check_bias(step, p, out)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = step.kernel, step.stride, step.pad, step.dilation
    h, w = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
    if h < 1 or w < 1:
        raise ShapeError(f"{step.name}: the input {arch.input_size} is too small")
    return h, w, out


def _check_dense(step: Step, p: Params, hwc: tuple[int, int, int], flat: int | None) -> int:
    """The dense step's output size after checking its kernel (made 2-D) and biases."""
    h, w, c = hwc
    inputs = flat if flat is not None else h * w * c
    kernel: tuple[int, ...] = p.weights.shape
    if len(kernel) == 4:  # slim's fc-as-conv: (H, W, C, out) is the dense kernel
        as_conv = (h, w, c) if flat is None else (1, 1, flat)
        if kernel[:3] != as_conv:
            raise ShapeError(
                f"{step.name}: fc-as-conv weights {fmt_shape(kernel)} do not "
                f"fit the graph, which expects {fmt_shape((*as_conv, kernel[3]))} "
                f"(its input is {'x'.join(map(str, as_conv))})"
            )
        p.weights = p.weights.reshape(inputs, kernel[3])
        kernel = p.weights.shape
    out = kernel[-1] if len(kernel) == 2 else -1
    if step.num_output is not None:
        out = step.num_output
    expected = (inputs, out)
    if kernel != expected:
        why = (
            f"its input is {flat}"
            if flat is not None
            else f"its input is the {h}x{w}x{c} output of the layer before, flattened H, W, C"
        )
        raise ShapeError(
            f"{step.name}: weights {fmt_shape(kernel)} do not fit the graph, "
            f"which expects {fmt_shape(expected)} ({why})"
        )
    _check_bias(step, p, out)
    return out


def _check_bias(step: Step, p: Params, out: int) -> None:
    if p.biases is None:
        if step.bias:
            raise MappingError(f"{step.name}: no biases in {p.source}")
        return
    if p.biases.shape != (out,):
        raise ShapeError(
            f"{step.name}: biases {fmt_shape(p.biases.shape)} do not fit the graph, "
            f"which expects ({out},)"
        )


__all__ = ["Params", "assign", "expected_shapes", "fmt_shape"]
