"""The graph as a Keras functional model, with its weights set (imports Keras when called).

Weighted layers are Conv2D (``groups`` for grouped convolutions) and Dense named after the
Caffe layers, so a Keras 3 ``.weights.h5`` weightconv writes loads into the model with
``model.load_weights``. Keras has no layer for LRN with TensorFlow's parameters nor for
Caffe's ceil-mode max pooling; two small layers registered as ``weightconv>CaffeLRN`` and
``weightconv>CaffeMaxPooling2D`` stand in, so a saved model reloads.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from weightconv.formats.caffe.net import pool_output_size
from weightconv.lrn import caffe_to_tf
from weightconv.nets.architecture import BVLC_LRN, Architecture, Step, pair
from weightconv.nets.params import Params
from weightconv.nets.tf_ops import caffe_max_pool, import_tensorflow


def keras_model(
    architecture: Architecture,
    params: dict[str, Params],
    input_shape: tuple[int, int, int],
    *,
    include_softmax: bool = True,
) -> Any:
    """A ``keras.Model`` computing `architecture` on (H, W, C) inputs, weights from `params`."""
    import_tensorflow()
    import keras

    lrn_layer, pool_layer = _keras_layers()
    inputs = keras.Input(input_shape, name="data")
    x = inputs
    for step in architecture.steps:
        if step.op == "conv":
            if step.pad != (0, 0):
                ph, pw = step.pad
                x = keras.layers.ZeroPadding2D(((ph, ph), (pw, pw)), name=f"{step.name}_pad")(x)
            p = params[step.name]
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
            p = params[step.name]
            layer = keras.layers.Dense(
                p.weights.shape[1], use_bias=p.biases is not None, name=step.name
            )
            x = layer(x)
            layer.set_weights([p.weights] + ([p.biases] if p.biases is not None else []))
        elif step.op == "dropout":
            x = keras.layers.Dropout(step.rate, name=step.name)(x)
    if include_softmax:
        x = keras.layers.Softmax(name="prob")(x)
    name = architecture.variant if architecture.variant in ("alexnet", "caffenet") else "net"
    return keras.Model(inputs, x, name=name)


@functools.cache
def _keras_layers() -> tuple[type, type]:
    """The two Keras layers the graph needs that Keras lacks, defined on first use."""
    import keras

    tf = import_tensorflow()

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
            self.kernel, self.stride, self.pad = pair(kernel), pair(stride), pair(pad)
            self.ceil = ceil

        def call(self, x: Any) -> Any:
            step = Step("pool", self.name, self.kernel, self.stride, self.pad, ceil=self.ceil)
            return caffe_max_pool(tf, x, step)

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


__all__ = ["keras_model"]
