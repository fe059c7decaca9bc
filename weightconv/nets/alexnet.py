"""AlexNet and CaffeNet in TensorFlow with Caffe's semantics, built from converted weights.

The graph is what a Caffe deploy net computes, not an approximation of it:

- convolution pads symmetrically (``tf.pad``, then VALID), as Caffe does; TF's SAME would put
  an odd pixel at the end;
- max pooling rounds its output size up and drops a last window that would start in the
  padding (`weightconv.nets.tf_ops.caffe_max_pool`);
- grouped convolution splits the input channels and the kernel's output channels into
  ``group`` consecutive blocks, block g of the output seeing only block g of the input;
- LRN is ``tf.nn.local_response_normalization`` with Caffe's parameters translated by
  `weightconv.lrn.caffe_to_tf` (alpha divided by local_size, k as bias);
- fc6 takes pool5 flattened in H, W, C order (an NHWC reshape), which is the canonical
  layout weightconv writes; dropout is off at inference.

Layer parameters (strides, pads, groups, LRN constants) are not stored in .npy, checkpoint
or Keras files: they come from a deploy prototxt when one is given, otherwise from BVLC's
AlexNet/CaffeNet definitions (`weightconv.nets.architecture`). Every weight shape is checked
against the graph first (`weightconv.nets.params`).

Importing this module does not import TensorFlow; running or exporting a graph does.

Example::

    net = AlexNet.from_weights("alexnet.npy")               # BVLC AlexNet structure
    net = AlexNet.from_weights("caffenet.ckpt", variant="caffenet")
    probabilities = net.probabilities(images_nhwc)        # (N, classes)
    model = net.to_keras()                                 # layers conv1 .. fc8
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from weightconv import formats, pipeline
from weightconv.errors import FormatError, ShapeError, UsageError
from weightconv.lrn import CaffeLRN, TfLRN, caffe_to_tf
from weightconv.model import WeightSet
from weightconv.nets.architecture import (
    BVLC_INPUT_SIZE,
    BVLC_LRN,
    VARIANTS,
    Architecture,
    Step,
    check_variant,
    net_input_size,
    pair,
)
from weightconv.nets.params import Params, assign, expected_shapes, fmt_shape
from weightconv.nets.tf_ops import caffe_max_pool, import_tensorflow, pool_padding

_CAFFE_FORMATS = ("caffemodel", "caffe-h5")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class AlexNet:
    """An AlexNet-style graph with its weights, ready to run on NHWC float32 images.

    Build it with `from_weights`. ``channel_order`` is the order the first layer expects
    ("bgr" for Caffe-trained weights, "rgb" when converted with ``--input-channels rgb``,
    None when the file does not say).
    """

    architecture: Architecture
    params: dict[str, Params] = field(repr=False)
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
        format: str | None = None,
        read_options: Mapping[str, Any] | None = None,
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
            format: the format of the file `weights` (default: detected).
            read_options: the format's reader options (e.g. ``{"trust_pickle": True}``); one
                the reader does not take is refused. A Caffe file is read with `prototxt`.

        Raises:
            ShapeError: a tensor does not fit the graph (names the layer and both shapes).
            UsageError: `format` or `read_options` given with a WeightSet, or an option the
                reader does not take.

        Example::

            net = AlexNet.from_weights("alexnet.npy", prototxt="deploy.prototxt")
            net.probabilities(images).argmax(axis=1)
        """
        if isinstance(weights, WeightSet):
            if format is not None or read_options:
                raise UsageError(
                    "format= and read_options= apply to a weight file, not to a WeightSet "
                    "already read"
                )
        else:
            weights = read_weights(Path(weights), prototxt, format, read_options)
        if prototxt is not None:
            arch = Architecture.from_prototxt(prototxt)
            if variant is not None and variant != arch.variant:
                check_variant(variant)
                raise UsageError(
                    f"{prototxt} defines a {arch.variant} (LRN "
                    f"{'before' if arch.variant == 'alexnet' else 'after'} "
                    f"pooling), not a {variant}"
                )
            if input_size is not None:
                arch = replace(arch, input_size=pair(input_size))
        else:
            arch = Architecture.bvlc(
                variant or "alexnet", input_size=pair(input_size or BVLC_INPUT_SIZE)
            )
        if lrn is not None:
            arch = arch.with_lrn(lrn)
        params, notes = assign(arch, weights)
        first = params[arch.weighted[0].name].weights
        in_channels = first.shape[2] * arch.weighted[0].group if first.ndim == 4 else 3
        shapes = expected_shapes(arch, params, in_channels)
        return cls(arch, params, weights.channel_order, [*weights.notes, *notes], shapes)

    # -- facts --------------------------------------------------------------------------------

    @property
    def variant(self) -> str:
        """The chain's kind: alexnet, caffenet or custom (LRN before, after or without pooling)."""
        return self.architecture.variant

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one input image."""
        first = self.architecture.weighted[0]
        kernel = self.params[first.name].weights
        return (*self.architecture.input_size, kernel.shape[2] * first.group)

    @property
    def num_classes(self) -> int:
        """The number of outputs of the last layer."""
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
                f"images are {fmt_shape(images.shape)}; the graph takes NHWC "
                f"(N, {', '.join(map(str, self.input_shape))})"
            )
        return images

    @functools.cached_property
    def _constants(self) -> dict[str, tuple[Any, Any]]:
        tf = import_tensorflow()
        return {
            name: (tf.constant(p.weights), None if p.biases is None else tf.constant(p.biases))
            for name, p in self.params.items()
        }

    def _run(self, images: np.ndarray, dropout: bool) -> np.ndarray:
        tf = import_tensorflow()
        x = tf.constant(images)
        for step in self.architecture.steps:
            x = self._apply(tf, step, x, dropout)
        return np.asarray(x.numpy())

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
            return caffe_max_pool(tf, x, step)
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
        from weightconv.nets.keras_model import keras_model

        return keras_model(
            self.architecture, self.params, self.input_shape, include_softmax=include_softmax
        )


def read_weights(
    path: Path,
    prototxt: str | os.PathLike[str] | None,
    format: str | None,
    read_options: Mapping[str, Any] | None,
) -> WeightSet:
    """The weight file read through the pipeline, a Caffe file with the deploy prototxt."""
    options = dict(read_options or {})
    if prototxt is not None and "prototxt" not in options:
        try:
            caffe = formats.detect(path, format).name in _CAFFE_FORMATS
        except (FormatError, UsageError):
            caffe = False  # pipeline.load says what is wrong with the file
        if caffe:
            options["prototxt"] = prototxt
    return pipeline.load(path, format=format, options=options)


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
    "read_weights",
    "softmax",
]
