"""AlexNet and CaffeNet in TensorFlow with Caffe's semantics, built from converted weights.

The graph is what a Caffe deploy net computes, not an approximation of it:

- convolution pads symmetrically (``tf.pad``, then VALID), as Caffe does; TF's SAME would put
  an odd pixel at the end;
- max pooling rounds its output size up and drops a last window that would start in the
  padding (`caffe_net.pool_output_size`): the input is padded at the bottom/right with -inf
  as far as the last window reaches (or cropped when rounding down), then pooled VALID;
- grouped convolution splits the input channels and the kernel's output channels into
  ``group`` consecutive blocks, block g of the output seeing only block g of the input;
- LRN is ``tf.nn.local_response_normalization`` with Caffe's parameters translated by
  `weightconv.lrn.caffe_to_tf` (alpha divided by local_size, k as bias);
- fc6 takes pool5 flattened in H, W, C order (an NHWC reshape), which is the canonical
  layout weightconv writes; dropout is off at inference.

Layer parameters (strides, pads, groups, LRN constants) are not stored in .npy, checkpoint
or Keras files: they come from a deploy prototxt when one is given, otherwise from BVLC's
AlexNet/CaffeNet definitions. Every weight shape is checked against the graph first.

Importing this module does not import TensorFlow; running or exporting a graph does.

Example::

    net = AlexNet.from_weights("alexnet.npy")               # BVLC AlexNet structure
    net = AlexNet.from_weights("caffenet.ckpt", variant="caffenet")
    probabilities = net.probabilities(images_nhwc)        # (N, classes)
    model = net.to_keras()                                 # layers conv1 .. fc8
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from weightconv.errors import FormatError, MappingError, ShapeError, UsageError
from weightconv.formats.caffe.net import (
    LayerDef,
    NetDef,
    conv_output_size,
    infer_blob_shapes,
    net_def_from_message,
    parse_prototxt,
    pool_output_size,
)
from weightconv.lrn import CaffeLRN, TfLRN, caffe_to_tf
from weightconv.model import Layer, WeightSet
from weightconv.model.canonical import canonical_layers

#: "alexnet": conv -> relu -> LRN -> pool (BVLC AlexNet); "caffenet": conv -> relu -> pool ->
#: LRN (BVLC reference CaffeNet).
VARIANTS = ("alexnet", "caffenet")
#: BVLC AlexNet's and CaffeNet's LRN (the k is Caffe's default).
BVLC_LRN = CaffeLRN(local_size=5, alpha=1e-4, beta=0.75, k=1.0)
BVLC_INPUT_SIZE = (227, 227)

_GROUP_PART = re.compile(r"^(?P<base>.+)_group(?P<index>\d+)$")
_WEIGHT_ROLES = ("weights", "kernel")
_BIAS_ROLES = ("biases", "bias")
_DATA_TYPES = {"Input", "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData"}


@dataclass(frozen=True)
class Step:
    """One operation of the graph, named after the Caffe layer it reproduces.

    ``op`` is one of conv, relu, lrn, pool, dense, dropout, pad. Sizes are (h, w) pairs.
    """

    op: str
    name: str
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    group: int = 1
    ceil: bool = True
    num_output: int | None = None
    bias: bool = True
    lrn: CaffeLRN | None = None
    rate: float = 0.5


@dataclass(frozen=True)
class Architecture:
    """The ordered steps of an AlexNet-style chain, its input size and where it came from."""

    steps: tuple[Step, ...]
    input_size: tuple[int, int] = BVLC_INPUT_SIZE
    variant: str = "alexnet"
    source: str = "BVLC AlexNet defaults"

    @classmethod
    def bvlc(
        cls,
        variant: str = "alexnet",
        *,
        lrn: CaffeLRN = BVLC_LRN,
        input_size: tuple[int, int] = BVLC_INPUT_SIZE,
    ) -> Architecture:
        """BVLC AlexNet ("alexnet") or CaffeNet ("caffenet") as their deploy nets define them.

        >>> [s.name for s in Architecture.bvlc("caffenet").steps][:5]
        ['conv1', 'relu1', 'pool1', 'norm1', 'conv2']
        """
        _check_variant(variant)

        def conv(
            index: int, kernel: int, stride: int = 1, pad: int = 0, group: int = 1
        ) -> list[Step]:
            return [
                Step(
                    "conv",
                    f"conv{index}",
                    (kernel, kernel),
                    (stride, stride),
                    (pad, pad),
                    group=group,
                ),
                Step("relu", f"relu{index}"),
            ]

        def pool_and_norm(index: int) -> list[Step]:
            norm = Step("lrn", f"norm{index}", lrn=lrn)
            pool = Step("pool", f"pool{index}", (3, 3), (2, 2))
            return [norm, pool] if variant == "alexnet" else [pool, norm]

        steps = [
            *conv(1, 11, stride=4),
            *pool_and_norm(1),
            *conv(2, 5, pad=2, group=2),
            *pool_and_norm(2),
            *conv(3, 3, pad=1),
            *conv(4, 3, pad=1, group=2),
            *conv(5, 3, pad=1, group=2),
            Step("pool", "pool5", (3, 3), (2, 2)),
        ]
        for index in (6, 7):
            steps += [
                Step("dense", f"fc{index}"),
                Step("relu", f"relu{index}"),
                Step("dropout", f"drop{index}"),
            ]
        steps.append(Step("dense", "fc8"))
        name = "AlexNet" if variant == "alexnet" else "CaffeNet"
        return cls(
            tuple(steps),
            tuple(input_size),
            variant,  # type: ignore[arg-type]
            f"BVLC {name} defaults",
        )

    @classmethod
    def from_prototxt(cls, prototxt: str | os.PathLike[str]) -> Architecture:
        """The chain a deploy prototxt defines (V0, V1 or V2): conv, ReLU, LRN, max pooling,
        inner product, dropout and padding layers, in order; a final Softmax is left out."""
        message, _notes = parse_prototxt(prototxt)
        return cls.from_net_def(net_def_from_message(message), source=str(prototxt))

    @classmethod
    def from_net_def(cls, net: NetDef, source: str = "prototxt") -> Architecture:
        steps: list[Step] = []
        current: str | None = None
        for layer in net.layers:
            if layer.phase == "TRAIN":
                continue
            if layer.type in _DATA_TYPES:
                current = layer.tops[0] if layer.tops else current
                continue
            if current is None:
                current = layer.bottoms[0] if layer.bottoms else None
            if len(layer.bottoms) != 1 or layer.bottoms[0] != current:
                raise UsageError(
                    f"{source}: layer {layer.name!r} reads "
                    f"{', '.join(layer.bottoms) or 'nothing'}, not the previous "
                    f"layer's output {current!r}; the built-in graph runs a "
                    f"simple chain (AlexNet, CaffeNet)"
                )
            if layer.type == "Softmax":
                break
            steps.append(_step_from_layer(layer, source))
            current = layer.tops[0] if layer.tops else current
        if not any(step.op == "conv" for step in steps):
            raise UsageError(f"{source}: defines no convolution; not an AlexNet-style net")
        size = net_input_size(net)
        if size is None:
            raise UsageError(f"{source}: does not declare its input size")
        return cls(tuple(steps), size, _detect_variant(steps), source)

    @property
    def weighted(self) -> list[Step]:
        """The conv and dense steps, in order."""
        return [step for step in self.steps if step.op in ("conv", "dense")]

    def with_lrn(self, params: CaffeLRN) -> Architecture:
        """The same graph with every LRN step using `params` (Caffe's spelling)."""
        steps = tuple(
            replace(step, lrn=params) if step.op == "lrn" else step for step in self.steps
        )
        return replace(self, steps=steps)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise UsageError(f"unknown AlexNet variant {variant!r}; known: {', '.join(VARIANTS)}")


def _detect_variant(steps: Sequence[Step]) -> str:
    ops = [step.op for step in steps]
    if "lrn" in ops and "pool" in ops:
        return "alexnet" if ops.index("lrn") < ops.index("pool") else "caffenet"
    return "custom"


def net_input_size(net: NetDef) -> tuple[int, int] | None:
    shapes = infer_blob_shapes(net)
    names = list(net.inputs)
    names += [
        top
        for layer in net.layers
        if layer.type in _DATA_TYPES and layer.phase != "TRAIN"
        for top in layer.tops
    ]
    for name in names:
        shape = shapes.get(name)
        if shape is not None and len(shape) == 4:
            return int(shape[2]), int(shape[3])
    return None


def _step_from_layer(layer: LayerDef, source: str) -> Step:
    p = layer.params
    if layer.type == "Convolution":
        return Step(
            "conv",
            layer.name,
            tuple(p["kernel"]),
            tuple(p["stride"]),
            tuple(p["pad"]),
            tuple(p.get("dilation", (1, 1))),
            group=int(p.get("group") or 1),
            num_output=int(p["num_output"]) or None,
            bias=bool(p.get("bias_term", True)),
        )
    if layer.type == "InnerProduct":
        if p.get("transpose") or p.get("axis", 1) != 1:
            raise UsageError(
                f"{source}: {layer.name}: InnerProduct with transpose or axis "
                f"other than 1 is not supported by the built-in graph"
            )
        return Step(
            "dense",
            layer.name,
            num_output=int(p["num_output"]) or None,
            bias=bool(p.get("bias_term", True)),
        )
    if layer.type == "ReLU":
        return Step("relu", layer.name)
    if layer.type == "LRN":
        from weightconv.lrn import from_layer_params

        return Step("lrn", layer.name, lrn=from_layer_params(p))
    if layer.type == "Pooling":
        if p["method"] != "max" or p.get("global_pooling"):
            raise UsageError(
                f"{source}: {layer.name}: only max pooling (not global) is "
                f"supported by the built-in graph, got {p['method']}"
            )
        return Step(
            "pool",
            layer.name,
            tuple(p["kernel"]),
            tuple(p["stride"]),
            tuple(p["pad"]),
            ceil=bool(p.get("ceil", True)),
        )
    if layer.type == "Dropout":
        return Step("dropout", layer.name)
    if layer.type == "Padding":
        pad = int(p.get("pad", 0))
        return Step("pad", layer.name, pad=(pad, pad))
    raise UsageError(
        f"{source}: layer {layer.name!r} of type {layer.type} is not supported by "
        f"the built-in AlexNet graph (conv, ReLU, LRN, max pooling, inner product, "
        f"dropout)"
    )


# --- weights -------------------------------------------------------------------------------


@dataclass
class _Params:
    weights: np.ndarray
    biases: np.ndarray | None
    source: str


def _role(layer: Layer, roles: Sequence[str]) -> np.ndarray | None:
    for role in roles:
        if role in layer.tensors:
            return np.asarray(layer.tensors[role], dtype=np.float32)
    return None


def _collect(weights: WeightSet) -> tuple[dict[str, _Params], list[str]]:
    """Every weighted layer in canonical layout, group parts (conv2_group0, ...) merged."""
    found: dict[str, _Params] = {}
    parts: dict[str, dict[int, _Params]] = {}
    order: list[str] = []
    for layer in canonical_layers(weights):
        kernel = _role(layer, _WEIGHT_ROLES)
        if kernel is None:
            continue
        params = _Params(kernel, _role(layer, _BIAS_ROLES), layer.name)
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
        biases = [p.biases for p in ordered]
        found[base] = _Params(
            np.concatenate([p.weights for p in ordered], axis=3),
            None if any(b is None for b in biases) else np.concatenate(biases),  # type: ignore[arg-type]
            " + ".join(p.source for p in ordered),
        )
    return found, order


def _assign(arch: Architecture, weights: WeightSet) -> tuple[dict[str, _Params], list[str]]:
    """The weights of each conv/dense step: by name, else by position when the counts match."""
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


def _expected_shapes(
    arch: Architecture, params: dict[str, _Params], in_channels: int = 3
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
            p = params[step.name]
            kernel = p.weights.shape
            out = kernel[-1] if len(kernel) == 4 else -1
            if step.num_output is not None and out != step.num_output:
                out = step.num_output
            per_group = c // step.group if c % step.group == 0 else c / step.group
            expected = (*step.kernel, per_group, out)
            why = (
                f"{c} input channels / group {step.group}"
                if step.group > 1
                else f"{c} input channels"
            )
            if kernel != expected or out % step.group:
                raise ShapeError(
                    f"{step.name}: weights {_fmt(kernel)} do not fit the graph, "
                    f"which expects {_fmt(expected)} ({step.kernel[0]}x"
                    f"{step.kernel[1]} kernel, {why}, {out} outputs)"
                )
            _check_bias(step, p, out)
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
                step.kernel,
                step.stride,
                step.pad,
                step.dilation,
            )
            h, w, c = (
                conv_output_size(h, kh, sh, ph, dh),
                conv_output_size(w, kw, sw, pw, dw),
                out,
            )
            if h < 1 or w < 1:
                raise ShapeError(f"{step.name}: the input {arch.input_size} is too small")
        elif step.op == "pool":
            (kh, kw), (sh, sw), (ph, pw) = step.kernel, step.stride, step.pad
            h, w = (
                pool_output_size(h, kh, sh, ph, step.ceil),
                pool_output_size(w, kw, sw, pw, step.ceil),
            )
        elif step.op == "pad":
            h, w = h + 2 * step.pad[0], w + 2 * step.pad[1]
        elif step.op == "dense":
            p = params[step.name]
            inputs = flat if flat is not None else h * w * c
            kernel = p.weights.shape
            if len(kernel) == 4:  # slim's fc-as-conv: (H, W, C, out) is the dense kernel
                hwc = (h, w, c) if flat is None else (1, 1, flat)
                if kernel[:3] != hwc:
                    raise ShapeError(
                        f"{step.name}: fc-as-conv weights {_fmt(kernel)} do not "
                        f"fit the graph, which expects {_fmt((*hwc, kernel[3]))} "
                        f"(its input is {'x'.join(map(str, hwc))})"
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
                    else f"its input is the {h}x{w}x{c} output of the layer before, "
                    f"flattened H, W, C"
                )
                raise ShapeError(
                    f"{step.name}: weights {_fmt(kernel)} do not fit the graph, "
                    f"which expects {_fmt(expected)} ({why})"
                )
            _check_bias(step, p, out)
            flat = out
        elif step.op == "lrn":
            caffe_to_tf(step.lrn or BVLC_LRN, step.name)  # refuses what TF cannot express
        shapes[step.name] = (flat,) if flat is not None else (h, w, c)
    if flat is None:
        raise UsageError("the graph ends in a spatial blob; an AlexNet ends in fc layers")
    return shapes


def _check_bias(step: Step, p: _Params, out: int) -> None:
    if p.biases is None:
        if step.bias:
            raise MappingError(f"{step.name}: no biases in {p.source}")
        return
    if p.biases.shape != (out,):
        raise ShapeError(
            f"{step.name}: biases {_fmt(p.biases.shape)} do not fit the graph, "
            f"which expects ({out},)"
        )


def _fmt(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def pool_padding(
    size: int, kernel: int, stride: int, pad: int, ceil: bool = True
) -> tuple[int, int]:
    """(before, after) padding that makes a VALID pooling give Caffe's output size; `after`
    is negative when the input has to be cropped instead (floor rounding)."""
    out = pool_output_size(size, kernel, stride, pad, ceil)
    return pad, (out - 1) * stride + kernel - size - pad


# --- the graph -----------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null meanwhile (C++ code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with _quiet_native_stderr():  # TF's native start-up logs bypass that setting
            import tensorflow as tf
    except ImportError as exc:
        raise UsageError(
            f"running the AlexNet graph needs TensorFlow ({exc}); pip install 'weightconv[tf]'"
        ) from None
    return tf


@dataclass
class AlexNet:
    """An AlexNet-style graph with its weights, ready to run on NHWC float32 images.

    Build it with `from_weights`. ``channel_order`` is the order the first layer expects
    ("bgr" for Caffe-trained weights, "rgb" when converted with ``--input-channels rgb``,
    None when the file does not say).
    """

    architecture: Architecture
    params: dict[str, _Params] = field(repr=False)
    channel_order: str | None = None
    notes: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_weights(
        cls,
        weights: WeightSet | str | os.PathLike[str],
        *,
        prototxt: str | os.PathLike[str] | None = None,
        variant: str | None = None,
        lrn: CaffeLRN | None = None,
        input_size: tuple[int, int] | None = None,
        **load_options: Any,
    ) -> AlexNet:
        """The graph for `weights` (a WeightSet or any file `weightconv.load` reads).

        Args:
            weights: conv1..conv5 and fc6..fc8 (or the prototxt's names, or group parts
                ``conv2_group0``/``_group1``; weights with other names are matched by order
                when there are exactly as many).
            prototxt: a deploy net giving strides, pads, groups, pooling and LRN parameters
                and the input size; without it, BVLC's definitions of `variant`.
            variant: "alexnet" (default) or "caffenet"; with a prototxt it must agree.
            lrn: override every LRN layer's parameters (Caffe's spelling).
            input_size: (H, W) when not 227x227 and no prototxt gives it.
            **load_options: passed to `weightconv.load` when `weights` is a path.

        Raises:
            ShapeError: a tensor does not fit the graph (names the layer and both shapes).
        """
        if not isinstance(weights, WeightSet):
            from weightconv import load

            path = Path(weights)
            if prototxt is not None and _is_caffe(path):
                load_options.setdefault("prototxt", prototxt)
            weights = load(path, **load_options)
        if prototxt is not None:
            arch = Architecture.from_prototxt(prototxt)
            if variant is not None and variant != arch.variant:
                _check_variant(variant)
                raise UsageError(
                    f"{prototxt} defines a {arch.variant} (LRN "
                    f"{'before' if arch.variant == 'alexnet' else 'after'} "
                    f"pooling), not a {variant}"
                )
            if input_size is not None:
                arch = replace(arch, input_size=tuple(input_size))
        else:
            arch = Architecture.bvlc(
                variant or "alexnet", input_size=tuple(input_size or BVLC_INPUT_SIZE)
            )
        if lrn is not None:
            arch = arch.with_lrn(lrn)
        params, notes = _assign(arch, weights)
        first = params[arch.weighted[0].name].weights
        in_channels = first.shape[2] * arch.weighted[0].group if first.ndim == 4 else 3
        shapes = _expected_shapes(arch, params, in_channels)
        return cls(arch, params, weights.channel_order, [*weights.notes, *notes], shapes)

    # -- facts --------------------------------------------------------------------------------

    @property
    def variant(self) -> str:
        return self.architecture.variant

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one input image."""
        first = self.architecture.weighted[0]
        kernel = self.params[first.name].weights
        return (*self.architecture.input_size, kernel.shape[2] * first.group)

    @property
    def num_classes(self) -> int:
        return int(self.params[self.architecture.weighted[-1].name].weights.shape[-1])

    def lrn_parameters(self) -> dict[str, TfLRN]:
        """Each LRN step's TensorFlow parameters, as the graph uses them."""
        return {
            step.name: caffe_to_tf(step.lrn or BVLC_LRN, step.name)
            for step in self.architecture.steps
            if step.op == "lrn"
        }

    # -- running ------------------------------------------------------------------------------

    def logits(
        self, images: np.ndarray, *, batch_size: int = 8, dropout: bool = False
    ) -> np.ndarray:
        """The last layer's outputs (N, classes), float32, for NHWC float32 images already
        preprocessed (resized, mean-subtracted, in `channel_order`)."""
        images = self._check_images(images)
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        outputs = [
            self._run(images[start : start + batch_size], dropout)
            for start in range(0, images.shape[0], batch_size)
        ]
        return np.concatenate(outputs, axis=0)

    def probabilities(self, images: np.ndarray, *, batch_size: int = 8) -> np.ndarray:
        """Softmax of `logits` (N, classes), computed in float64 and returned as float64."""
        return softmax(self.logits(images, batch_size=batch_size))

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            raise ShapeError(
                f"images are {_fmt(images.shape)}; the graph takes NHWC "
                f"(N, {', '.join(map(str, self.input_shape))})"
            )
        return images

    @functools.cached_property
    def _constants(self) -> dict[str, tuple[Any, Any]]:
        tf = _tf()
        return {
            name: (tf.constant(p.weights), None if p.biases is None else tf.constant(p.biases))
            for name, p in self.params.items()
        }

    def _run(self, images: np.ndarray, dropout: bool) -> np.ndarray:
        tf = _tf()
        x = tf.constant(images)
        for step in self.architecture.steps:
            x = self._apply(tf, step, x, dropout)
        return x.numpy()

    def _apply(self, tf: Any, step: Step, x: Any, dropout: bool) -> Any:
        if step.op == "conv":
            kernel, bias = self._constants[step.name]
            ph, pw = step.pad
            if ph or pw:
                x = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
            strides = [1, *step.stride, 1]
            dilations = [1, *step.dilation, 1]
            if step.group == 1:
                y = tf.nn.conv2d(x, kernel, strides, "VALID", dilations=dilations)
            else:
                y = tf.concat(
                    [
                        tf.nn.conv2d(part, k, strides, "VALID", dilations=dilations)
                        for part, k in zip(
                            tf.split(x, step.group, axis=3),
                            tf.split(kernel, step.group, axis=3),
                            strict=True,
                        )
                    ],
                    axis=3,
                )
            return y if bias is None else tf.nn.bias_add(y, bias)
        if step.op == "relu":
            return tf.nn.relu(x)
        if step.op == "lrn":
            p = caffe_to_tf(step.lrn or BVLC_LRN, step.name)
            return tf.nn.local_response_normalization(
                x, depth_radius=p.depth_radius, bias=p.bias, alpha=p.alpha, beta=p.beta
            )
        if step.op == "pool":
            return _caffe_max_pool(tf, x, step)
        if step.op == "pad":
            ph, pw = step.pad
            return tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
        if step.op == "dense":
            kernel, bias = self._constants[step.name]
            if len(x.shape) > 2:
                x = tf.reshape(x, [tf.shape(x)[0], -1])  # NHWC: rows in H, W, C order
            y = tf.matmul(x, kernel)
            return y if bias is None else tf.nn.bias_add(y, bias)
        if step.op == "dropout":
            return tf.nn.dropout(x, rate=step.rate) if dropout else x
        raise UsageError(f"{step.name}: unknown step {step.op!r}")

    # -- Keras --------------------------------------------------------------------------------

    def to_keras(self, *, include_softmax: bool = True) -> Any:
        """A Keras functional model computing the same graph, weights set.

        Its weighted layers are Conv2D (``groups`` for grouped convolutions) and Dense named
        after the Caffe layers (conv1 .. fc8), in order, so a Keras 3 ``.weights.h5`` that
        weightconv writes for these weights loads into it with ``model.load_weights``.
        Padding is a ZeroPadding2D before each padded conv; LRN and Caffe's ceil-mode max
        pooling, which Keras has no layer for, are two small registered layers,
        ``weightconv>CaffeLRN`` and ``weightconv>CaffeMaxPooling2D``.
        """
        _tf()
        import keras

        lrn_layer, pool_layer = _keras_layers()
        h, w, c = self.input_shape
        inputs = keras.Input((h, w, c), name="data")
        x = inputs
        for step in self.architecture.steps:
            if step.op == "conv":
                if step.pad != (0, 0):
                    ph, pw = step.pad
                    x = keras.layers.ZeroPadding2D(((ph, ph), (pw, pw)), name=f"{step.name}_pad")(x)
                p = self.params[step.name]
                layer = keras.layers.Conv2D(
                    p.weights.shape[3],
                    step.kernel,
                    strides=step.stride,
                    padding="valid",
                    dilation_rate=step.dilation,
                    groups=step.group,
                    use_bias=p.biases is not None,
                    name=step.name,
                )
                x = layer(x)
                layer.set_weights([p.weights] + ([p.biases] if p.biases is not None else []))
            elif step.op == "relu":
                x = keras.layers.ReLU(name=step.name)(x)
            elif step.op == "lrn":
                t = caffe_to_tf(step.lrn or BVLC_LRN, step.name)
                x = lrn_layer(t.depth_radius, t.bias, t.alpha, t.beta, name=step.name)(x)
            elif step.op == "pool":
                x = pool_layer(step.kernel, step.stride, step.pad, step.ceil, name=step.name)(x)
            elif step.op == "pad":
                ph, pw = step.pad
                x = keras.layers.ZeroPadding2D(((ph, ph), (pw, pw)), name=step.name)(x)
            elif step.op == "dense":
                if len(x.shape) > 2:
                    x = keras.layers.Flatten(name=f"{step.name}_flatten")(x)
                p = self.params[step.name]
                layer = keras.layers.Dense(
                    p.weights.shape[1], use_bias=p.biases is not None, name=step.name
                )
                x = layer(x)
                layer.set_weights([p.weights] + ([p.biases] if p.biases is not None else []))
            elif step.op == "dropout":
                x = keras.layers.Dropout(step.rate, name=step.name)(x)
        if include_softmax:
            x = keras.layers.Softmax(name="prob")(x)
        name = {"alexnet": "alexnet", "caffenet": "caffenet"}.get(self.variant, "net")
        return keras.Model(inputs, x, name=name)


def _caffe_max_pool(tf: Any, x: Any, step: Step) -> Any:
    (kh, kw), (sh, sw), (ph, pw) = step.kernel, step.stride, step.pad
    top, bottom = pool_padding(int(x.shape[1]), kh, sh, ph, step.ceil)
    left, right = pool_padding(int(x.shape[2]), kw, sw, pw, step.ceil)
    if bottom < 0:
        x = x[:, :bottom]
        bottom = 0
    if right < 0:
        x = x[:, :, :right]
        right = 0
    if top or bottom or left or right:
        x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=float("-inf"))
    return tf.nn.max_pool2d(x, [kh, kw], [sh, sw], "VALID")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _is_caffe(path: Path) -> bool:
    from weightconv import formats

    try:
        return formats.detect(path).name in ("caffemodel", "caffe-h5")
    except (FormatError, UsageError):
        return False


@functools.cache
def _keras_layers() -> tuple[type, type]:
    """The two Keras layers the graph needs that Keras lacks, defined on first use."""
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="weightconv")
    class CaffeLRN(keras.layers.Layer):
        """``tf.nn.local_response_normalization`` with TensorFlow's parameters."""

        def __init__(
            self, depth_radius: int, bias: float, alpha: float, beta: float, **kwargs: Any
        ) -> None:
            super().__init__(**kwargs)
            self.depth_radius, self.bias, self.alpha, self.beta = (depth_radius, bias, alpha, beta)

        def call(self, x: Any) -> Any:
            return tf.nn.local_response_normalization(
                x, depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha, beta=self.beta
            )

        def get_config(self) -> dict[str, Any]:
            return {
                **super().get_config(),
                "depth_radius": self.depth_radius,
                "bias": self.bias,
                "alpha": self.alpha,
                "beta": self.beta,
            }

    @keras.saving.register_keras_serializable(package="weightconv")
    class CaffeMaxPooling2D(keras.layers.Layer):
        """Max pooling with Caffe's output size: -inf padding, then VALID."""

        def __init__(
            self,
            kernel: Sequence[int],
            stride: Sequence[int],
            pad: Sequence[int],
            ceil: bool = True,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self.kernel, self.stride, self.pad = tuple(kernel), tuple(stride), tuple(pad)
            self.ceil = ceil

        def call(self, x: Any) -> Any:
            step = Step(
                "pool",
                self.name,
                self.kernel,
                self.stride,  # type: ignore[arg-type]
                self.pad,
                ceil=self.ceil,
            )  # type: ignore[arg-type]
            return _caffe_max_pool(tf, x, step)

        def compute_output_shape(self, shape: Sequence[int | None]) -> tuple[int | None, ...]:
            def size(n: int | None, axis: int) -> int | None:
                return (
                    None
                    if n is None
                    else pool_output_size(
                        n, self.kernel[axis], self.stride[axis], self.pad[axis], self.ceil
                    )
                )

            return (shape[0], size(shape[1], 0), size(shape[2], 1), shape[3])

        def get_config(self) -> dict[str, Any]:
            return {
                **super().get_config(),
                "kernel": list(self.kernel),
                "stride": list(self.stride),
                "pad": list(self.pad),
                "ceil": self.ceil,
            }

    return CaffeLRN, CaffeMaxPooling2D


def describe(net: AlexNet) -> Iterator[str]:
    """One line per step: what the graph does, for reports."""
    for step in net.architecture.steps:
        shape = net.shapes.get(step.name)
        size = "x".join(map(str, shape)) if shape else "?"
        if step.op == "lrn":
            t = caffe_to_tf(step.lrn or BVLC_LRN, step.name)
            yield (
                f"{step.name}: LRN depth_radius {t.depth_radius}, alpha {t.alpha:g}, "
                f"beta {t.beta:g}, bias {t.bias:g} -> {size}"
            )
        elif step.op in ("conv", "pool"):
            yield (
                f"{step.name}: {step.op} {step.kernel[0]}x{step.kernel[1]} stride "
                f"{step.stride[0]} pad {step.pad[0]}"
                + (f" group {step.group}" if step.group > 1 else "")
                + f" -> {size}"
            )
        else:
            yield f"{step.name}: {step.op} -> {size}"


__all__ = [
    "BVLC_LRN",
    "VARIANTS",
    "AlexNet",
    "Architecture",
    "Step",
    "describe",
    "net_input_size",
    "pool_padding",
    "softmax",
]
