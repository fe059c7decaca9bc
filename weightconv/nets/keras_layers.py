"""The Keras layers a Caffe graph needs that Keras lacks, registered for ``.keras`` files.

Importing this module imports Keras and registers, under the package ``weightconv``, the
layers `weightconv.nets.keras_engine` builds Caffe graphs with (NHWC, Caffe's numbers):

- ``CaffePooling``: MAX or AVE pooling with Caffe's output size (rounded up, a last window
  starting in the padding dropped): MAX pads with -inf; AVE sums the zero-padded windows and
  divides by Caffe's divisor, which counts the padding but not the overhang past it.
- ``CaffeLocalResponseNorm``: LRN with Caffe's parameters: ACROSS_CHANNELS
  ``x / (k + alpha / n * sum of n squares) ** beta``; WITHIN_CHANNEL
  ``x / (1 + alpha / n**2 * sum of the n x n zero-padded squares) ** beta``.
- ``CaffeAffine``: Scale and Bias, a learned factor and/or offset broadcast over any span.
- ``CaffeWeightedSum``: Eltwise SUM with coefficients.
- ``CaffeBroadcast``: a product or sum of two inputs with broadcasting (a Scale or Bias
  whose factor is a second bottom).
- ``CaffePower``: ``(shift + scale * x) ** power``; ``CaffeAbs``: AbsVal.
- ``AxisSlice``: ``x[start:stop:step]`` along one axis (Slice, Crop, strided subsampling).

A ``.keras`` file weightconv writes loads in a process that has imported this module::

    import keras
    import weightconv.nets.keras_layers  # registers the layers above
    model = keras.saving.load_model("model.keras")

(or pass ``custom_objects=weightconv.nets.keras_layers.CUSTOM_OBJECTS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from weightconv.formats.caffe.net import pool_output_size


def pool_pads(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> tuple[int, int, int]:
    """(before, after, output size) of a Caffe pooling along one axis: padding `before` and
    `after` (negative: crop that many) makes a VALID pooling take Caffe's windows."""
    out = pool_output_size(size, kernel, stride, pad, ceil)
    return pad, (out - 1) * stride + kernel - size - pad, out


def ave_divisors(size: int, out: int, kernel: int, stride: int, pad: int) -> list[float]:
    """Caffe's AVE divisor of each output along one axis: the window clipped to the padded
    input (padding counted, the overhang of a rounded-up last window not)."""
    starts = [i * stride - pad for i in range(out)]
    return [float(min(start + kernel, size + pad) - start) for start in starts]


def _define() -> dict[str, type]:
    import keras
    import numpy as np
    from keras import ops

    register = keras.saving.register_keras_serializable(package="weightconv")

    @register
    class CaffePooling(keras.layers.Layer):
        """Caffe's MAX or AVE pooling of an NHWC tensor (``global_pooling``: the whole map)."""

        def __init__(
            self,
            method: str = "max",
            kernel: Sequence[int] = (2, 2),
            stride: Sequence[int] = (2, 2),
            pad: Sequence[int] = (0, 0),
            ceil: bool = True,
            global_pooling: bool = False,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            if method not in ("max", "ave"):
                raise ValueError(f"CaffePooling: method {method!r} is not max or ave")
            self.method, self.ceil, self.global_pooling = method, bool(ceil), bool(global_pooling)
            self.kernel = tuple(int(k) for k in kernel)
            self.stride = tuple(int(s) for s in stride)
            self.pad = tuple(int(p) for p in pad)

        def _geometry(self, h: int, w: int) -> tuple[Any, ...]:
            if self.global_pooling:
                return (h, w), (1, 1), (0, 0)
            return self.kernel, self.stride, self.pad

        def call(self, x: Any) -> Any:
            h, w = int(x.shape[1]), int(x.shape[2])
            (kh, kw), (sh, sw), (ph, pw) = self._geometry(h, w)
            top, bottom, oh = pool_pads(h, kh, sh, ph, self.ceil or self.global_pooling)
            left, right, ow = pool_pads(w, kw, sw, pw, self.ceil or self.global_pooling)
            if bottom < 0:
                x = x[:, :bottom]
                bottom = 0
            if right < 0:
                x = x[:, :, :right]
                right = 0
            fill = float("-inf") if self.method == "max" else 0.0
            if top or bottom or left or right:
                widths = [[0, 0], [top, bottom], [left, right], [0, 0]]
                x = ops.pad(x, widths, constant_values=fill)
            if self.method == "max":
                return ops.max_pool(x, (kh, kw), (sh, sw), padding="valid")
            sums = ops.average_pool(x, (kh, kw), (sh, sw), padding="valid") * float(kh * kw)
            area = np.outer(ave_divisors(h, oh, kh, sh, ph), ave_divisors(w, ow, kw, sw, pw))
            return sums / ops.convert_to_tensor(area.reshape(1, oh, ow, 1).astype("float32"))

        def compute_output_shape(self, shape: Sequence[int | None]) -> tuple[int | None, ...]:
            h, w = int(shape[1] or 0), int(shape[2] or 0)
            (kh, kw), (sh, sw), (ph, pw) = self._geometry(h, w)
            ceil = self.ceil or self.global_pooling
            oh = pool_pads(h, kh, sh, ph, ceil)[2]
            ow = pool_pads(w, kw, sw, pw, ceil)[2]
            return (shape[0], oh, ow, shape[3])

        def get_config(self) -> dict[str, Any]:
            return {
                **super().get_config(),
                "method": self.method,
                "kernel": list(self.kernel),
                "stride": list(self.stride),
                "pad": list(self.pad),
                "ceil": self.ceil,
                "global_pooling": self.global_pooling,
            }

    @register
    class CaffeLocalResponseNorm(keras.layers.Layer):
        """Caffe's LRN of an NHWC tensor, its own parameters (no TensorFlow translation)."""

        def __init__(
            self,
            local_size: int = 5,
            alpha: float = 1.0,
            beta: float = 0.75,
            k: float = 1.0,
            region: str = "across_channels",
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            if int(local_size) % 2 == 0 or int(local_size) < 1:
                raise ValueError(f"CaffeLocalResponseNorm: local_size {local_size} is not odd")
            if region not in ("across_channels", "within_channel"):
                raise ValueError(f"CaffeLocalResponseNorm: region {region!r}")
            self.local_size, self.region = int(local_size), region
            self.alpha, self.beta, self.k = float(alpha), float(beta), float(k)

        def call(self, x: Any) -> Any:
            n = self.local_size
            pre = (n - 1) // 2
            squares = x * x
            if self.region == "across_channels":
                c = int(x.shape[-1])
                padded = ops.pad(squares, [[0, 0], [0, 0], [0, 0], [pre, n - 1 - pre]])
                total = padded[..., 0:c]
                for i in range(1, n):
                    total = total + padded[..., i : i + c]
                scale = self.k + (self.alpha / n) * total
            else:
                padded = ops.pad(squares, [[0, 0], [pre, pre], [pre, pre], [0, 0]])
                mean = ops.average_pool(padded, (n, n), (1, 1), padding="valid")
                scale = 1.0 + self.alpha * mean
            return x * ops.power(scale, -self.beta)

        def compute_output_shape(self, shape: Sequence[int | None]) -> tuple[int | None, ...]:
            return tuple(shape)

        def get_config(self) -> dict[str, Any]:
            return {
                **super().get_config(),
                "local_size": self.local_size,
                "alpha": self.alpha,
                "beta": self.beta,
                "k": self.k,
                "region": self.region,
            }

    @register
    class CaffeAffine(keras.layers.Layer):
        """``x * scale + offset`` with `scale` and `offset` of `shape` (broadcast against
        x without its batch axis): Caffe's Scale and Bias with their own parameters."""

        def __init__(
            self,
            shape: Sequence[int] = (),
            scale: bool = True,
            offset: bool = False,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self.param_shape = tuple(int(d) for d in shape)
            self.has_scale, self.has_offset = bool(scale), bool(offset)
            self.factor = None
            self.bias = None

        def build(self, input_shape: Any) -> None:
            if self.has_scale:
                self.factor = self.add_weight(
                    shape=self.param_shape, initializer="ones", name="scale", trainable=True
                )
            if self.has_offset:
                self.bias = self.add_weight(
                    shape=self.param_shape, initializer="zeros", name="offset", trainable=True
                )

        def call(self, x: Any) -> Any:
            y = x * self.factor if self.factor is not None else x
            return y + self.bias if self.bias is not None else y

        def compute_output_shape(self, shape: Sequence[int | None]) -> tuple[int | None, ...]:
            return tuple(shape)

        def get_config(self) -> dict[str, Any]:
            return {
                **super().get_config(),
                "shape": list(self.param_shape),
                "scale": self.has_scale,
                "offset": self.has_offset,
            }

    @register
    class CaffeWeightedSum(keras.layers.Layer):
        """``sum(c * x for c, x in zip(coefficients, inputs))``: Eltwise SUM with coeff."""

        def __init__(self, coefficients: Sequence[float] = (), **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.coefficients = [float(c) for c in coefficients]

        def call(self, inputs: Sequence[Any]) -> Any:
            if len(inputs) != len(self.coefficients):
                raise ValueError(
                    f"CaffeWeightedSum: {len(self.coefficients)} coefficients for "
                    f"{len(inputs)} inputs"
                )
            total = self.coefficients[0] * inputs[0]
            for c, x in zip(self.coefficients[1:], inputs[1:], strict=True):
                total = total + c * x
            return total

        def compute_output_shape(self, shapes: Sequence[Any]) -> tuple[int | None, ...]:
            return tuple(shapes[0])

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "coefficients": list(self.coefficients)}

    @register
    class CaffeBroadcast(keras.layers.Layer):
        """``x * y`` or ``x + y`` (`op` "multiply" or "add"), y broadcast against x."""

        def __init__(self, op: str = "multiply", **kwargs: Any) -> None:
            super().__init__(**kwargs)
            if op not in ("multiply", "add"):
                raise ValueError(f"CaffeBroadcast: op {op!r}")
            self.op = op

        def call(self, inputs: Sequence[Any]) -> Any:
            x, y = inputs
            return x * y if self.op == "multiply" else x + y

        def compute_output_shape(self, shapes: Sequence[Any]) -> tuple[int | None, ...]:
            return tuple(shapes[0])

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "op": self.op}

    @register
    class CaffePower(keras.layers.Layer):
        """Caffe's Power layer: ``(shift + scale * x) ** power``."""

        def __init__(
            self, power: float = 1.0, scale: float = 1.0, shift: float = 0.0, **kwargs: Any
        ) -> None:
            super().__init__(**kwargs)
            self.power, self.scale, self.shift = float(power), float(scale), float(shift)

        def call(self, x: Any) -> Any:
            base = self.scale * x + self.shift
            return base if self.power == 1.0 else ops.power(base, self.power)

        def compute_output_shape(self, shape: Sequence[int | None]) -> tuple[int | None, ...]:
            return tuple(shape)

        def get_config(self) -> dict[str, Any]:
            return {
                **super().get_config(),
                "power": self.power,
                "scale": self.scale,
                "shift": self.shift,
            }

    @register
    class CaffeAbs(keras.layers.Layer):
        """Caffe's AbsVal layer: ``|x|``."""

        def call(self, x: Any) -> Any:
            return ops.absolute(x)

        def compute_output_shape(self, shape: Sequence[int | None]) -> tuple[int | None, ...]:
            return tuple(shape)

    @register
    class AxisSlice(keras.layers.Layer):
        """``x[..., start:stop:step, ...]`` along `axis` (not the batch axis)."""

        def __init__(
            self, axis: int = -1, start: int = 0, stop: int = 1, step: int = 1, **kwargs: Any
        ) -> None:
            super().__init__(**kwargs)
            self.axis, self.start, self.stop, self.step = (
                int(axis),
                int(start),
                int(stop),
                int(step),
            )

        def call(self, x: Any) -> Any:
            index: list[Any] = [slice(None)] * len(x.shape)
            index[self.axis] = slice(self.start, self.stop, self.step)
            return x[tuple(index)]

        def compute_output_shape(self, shape: Sequence[int | None]) -> tuple[int | None, ...]:
            out = list(shape)
            out[self.axis] = len(range(self.start, self.stop, self.step))
            return tuple(out)

        def get_config(self) -> dict[str, Any]:
            return {
                **super().get_config(),
                "axis": self.axis,
                "start": self.start,
                "stop": self.stop,
                "step": self.step,
            }

    return {
        f"weightconv>{cls.__name__}": cls
        for cls in (
            CaffePooling,
            CaffeLocalResponseNorm,
            CaffeAffine,
            CaffeWeightedSum,
            CaffeBroadcast,
            CaffePower,
            CaffeAbs,
            AxisSlice,
        )
    }


#: The registered layers by their Keras name (``weightconv>CaffePooling``, ...).
CUSTOM_OBJECTS: dict[str, type] = _define()


def layer(name: str) -> Any:
    """The layer class registered as ``weightconv>NAME``."""
    return CUSTOM_OBJECTS[f"weightconv>{name}"]


__all__ = ["CUSTOM_OBJECTS", "ave_divisors", "layer", "pool_pads"]
