"""The structure of the synthetic Caffe nets (LeNet, AlexNet, CaffeNet, VGG16): each
layer's V2 definition and blob shapes, no weights, so even VGG16's costs nothing to build.
The deploy definition comes out as a message or as prototxt text, in V2 (`layer`, an
Input layer) or V1 (`layers`, enum types, `input_dim`) encoding. `synthetic` adds the
seeded weights and writes the .caffemodel.

    >>> net_spec("alexnet").parameter_counts()["conv1"]
    34944
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from google.protobuf import text_format

from weightconv._proto import caffe_pb2

Encoding = Literal["v2", "v1"]

SPEC_NAMES = ("lenet", "alexnet", "caffenet", "vgg16")
ENCODINGS: tuple[Encoding, ...] = ("v2", "v1")

#: V2 type string -> V1 enum, for the layer types the specs use.
V1_TYPES = {
    "Convolution": caffe_pb2.V1LayerParameter.CONVOLUTION,
    "InnerProduct": caffe_pb2.V1LayerParameter.INNER_PRODUCT,
    "LRN": caffe_pb2.V1LayerParameter.LRN,
    "Pooling": caffe_pb2.V1LayerParameter.POOLING,
    "ReLU": caffe_pb2.V1LayerParameter.RELU,
    "Softmax": caffe_pb2.V1LayerParameter.SOFTMAX,
    "Dropout": caffe_pb2.V1LayerParameter.DROPOUT,
}
_PARAM_FIELDS = (
    "convolution_param",
    "inner_product_param",
    "lrn_param",
    "pooling_param",
    "dropout_param",
)


def check_encoding(encoding: str) -> None:
    """Refuse anything but "v2" and "v1" (ValueError)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be 'v2' or 'v1', not {encoding!r}")


# --- specs: definitions and blob shapes, no weights ----------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """One layer: its V2 definition (a LayerParameter without blobs) and its blob shapes."""

    message: caffe_pb2.LayerParameter
    blob_shapes: tuple[tuple[int, ...], ...] = ()

    @property
    def name(self) -> str:
        return self.message.name

    @property
    def type(self) -> str:
        return self.message.type

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(shape) for shape in self.blob_shapes)

    def definition(
        self, encoding: Encoding = "v2"
    ) -> caffe_pb2.LayerParameter | caffe_pb2.V1LayerParameter:
        """The layer's message in the given encoding, without blobs (V2: shared, don't edit)."""
        return self.message if encoding == "v2" else self.v1_definition()

    def v1_definition(self) -> caffe_pb2.V1LayerParameter:
        """The layer as a V1 `layers` entry: enum type, `blobs_lr` and `weight_decay`."""
        v1 = caffe_pb2.V1LayerParameter(
            name=self.name,
            type=V1_TYPES[self.type],
            bottom=self.message.bottom,
            top=self.message.top,
        )
        for spec in self.message.param:
            v1.blobs_lr.append(spec.lr_mult)
            v1.weight_decay.append(spec.decay_mult)
        for name in _PARAM_FIELDS:
            if self.message.HasField(name):
                getattr(v1, name).CopyFrom(getattr(self.message, name))
        return v1


@dataclass(frozen=True)
class NetSpec:
    """A net's structure: name, input shape (N, C, H, W) and layers; no weights."""

    name: str
    input_shape: tuple[int, int, int, int]
    layers: tuple[LayerSpec, ...]

    def blob_shapes(self) -> dict[str, list[tuple[int, ...]]]:
        """Layer name -> shapes of its blobs in Caffe layout, for layers that have blobs."""
        return {layer.name: list(layer.blob_shapes) for layer in self.layers if layer.blob_shapes}

    def parameter_counts(self) -> dict[str, int]:
        """Layer name -> number of parameters, for layers that have blobs."""
        return {layer.name: layer.parameter_count for layer in self.layers if layer.blob_shapes}

    @property
    def parameter_count(self) -> int:
        return sum(layer.parameter_count for layer in self.layers)

    def net_parameter(self, encoding: Encoding = "v2") -> caffe_pb2.NetParameter:
        """The deploy definition as a message: V2 with an Input layer, or V1 with input_dim."""
        check_encoding(encoding)
        net = caffe_pb2.NetParameter(name=self.name)
        if encoding == "v1":
            net.input.append("data")
            net.input_dim.extend(self.input_shape)
            for layer in self.layers:
                net.layers.append(layer.v1_definition())
        else:
            net.layer.append(self.input_layer())
            net.layer.extend(layer.message for layer in self.layers)
        return net

    def prototxt(self, encoding: Encoding = "v2") -> str:
        """The deploy definition as prototxt text."""
        net = self.net_parameter(encoding)
        if encoding == "v2":
            return text_format.MessageToString(net)
        # Field order would print `input` after the layers; V1 files put it first.
        layers = list(net.layers)
        net.ClearField("layers")
        text = text_format.MessageToString(net)
        for layer in layers:
            body = text_format.MessageToString(layer, indent=2)
            text += "layers {\n" + body + "}\n"
        return text

    def input_layer(self) -> caffe_pb2.LayerParameter:
        """The V2 Input layer that feeds `data` with `input_shape`."""
        data = caffe_pb2.LayerParameter(name="data", type="Input", top=["data"])
        data.input_param.shape.add().dim.extend(self.input_shape)
        return data


class _Builder:
    """Appends layers in order, tracking the current top's channels and spatial size."""

    def __init__(self, input_shape: tuple[int, int, int, int]) -> None:
        self.input_shape = input_shape
        self.layers: list[LayerSpec] = []
        _, self.channels, self.height, self.width = input_shape
        self.top = "data"
        self.flat: int | None = None

    def _add(
        self,
        name: str,
        layer_type: str,
        blob_shapes: tuple[tuple[int, ...], ...] = (),
        in_place: bool = False,
    ) -> caffe_pb2.LayerParameter:
        top = self.top if in_place else name
        message = caffe_pb2.LayerParameter(name=name, type=layer_type, bottom=[self.top], top=[top])
        if blob_shapes:  # learning-rate multipliers, as in BVLC's deploy files
            message.param.add(lr_mult=1, decay_mult=1)
            message.param.add(lr_mult=2, decay_mult=0)
        self.layers.append(LayerSpec(message, blob_shapes))
        self.top = top
        return message

    def _spatial(self, name: str, height: int, width: int) -> None:
        if height < 1 or width < 1:
            raise ValueError(
                f"{name}: output would be {height}x{width}; the input size "
                f"{self.input_shape[2]}x{self.input_shape[3]} is too small"
            )
        self.height, self.width = height, width

    def conv(
        self, name: str, outputs: int, kernel: int, stride: int = 1, pad: int = 0, group: int = 1
    ) -> None:
        if self.channels % group or outputs % group:
            raise ValueError(
                f"{name}: {self.channels} inputs and {outputs} outputs are not "
                f"both divisible by group {group}"
            )
        param = self._add(
            name, "Convolution", ((outputs, self.channels // group, kernel, kernel), (outputs,))
        ).convolution_param
        param.num_output = outputs
        if pad:
            param.pad.append(pad)
        param.kernel_size.append(kernel)
        if group != 1:
            param.group = group
        if stride != 1:
            param.stride.append(stride)
        self.channels = outputs
        # Caffe convolution rounds down.
        self._spatial(
            name,
            (self.height + 2 * pad - kernel) // stride + 1,
            (self.width + 2 * pad - kernel) // stride + 1,
        )

    def pool(self, name: str, kernel: int, stride: int) -> None:
        if kernel > min(self.height, self.width):
            raise ValueError(
                f"{name}: a {kernel}x{kernel} window on a {self.height}x"
                f"{self.width} input; the input size is too small"
            )
        param = self._add(name, "Pooling").pooling_param
        param.pool = caffe_pb2.PoolingParameter.MAX
        param.kernel_size = kernel
        param.stride = stride
        # Caffe pooling rounds up (no padding here, so no clipping).
        self._spatial(
            name, -(-(self.height - kernel) // stride) + 1, -(-(self.width - kernel) // stride) + 1
        )

    def lrn(self, name: str) -> None:
        param = self._add(name, "LRN").lrn_param
        param.local_size = 5
        param.alpha = 1e-4
        param.beta = 0.75

    def relu(self, name: str) -> None:
        self._add(name, "ReLU", in_place=True)

    def dropout(self, name: str) -> None:
        self._add(name, "Dropout", in_place=True).dropout_param.dropout_ratio = 0.5

    def inner_product(self, name: str, outputs: int) -> None:
        inputs = self.flat if self.flat is not None else self.channels * self.height * self.width
        self._add(
            name, "InnerProduct", ((outputs, inputs), (outputs,))
        ).inner_product_param.num_output = outputs
        self.flat = outputs

    def softmax(self, name: str = "prob") -> None:
        self._add(name, "Softmax")


def _scaled(size: int, width: float, multiple: int = 1) -> int:
    """`size * width` rounded to a multiple of `multiple` (at least one multiple)."""
    return max(multiple, round(size * width / multiple) * multiple)


def _lenet(width: float, num_classes: int, input_size: int) -> NetSpec:
    b = _Builder((1, 1, input_size, input_size))
    b.conv("conv1", _scaled(20, width), 5)
    b.pool("pool1", 2, 2)
    b.conv("conv2", _scaled(50, width), 5)
    b.pool("pool2", 2, 2)
    b.inner_product("ip1", _scaled(500, width))
    b.relu("relu1")
    b.inner_product("ip2", num_classes)
    b.softmax()
    return NetSpec("LeNet", b.input_shape, tuple(b.layers))


def _alexnet(width: float, num_classes: int, input_size: int, caffenet: bool) -> NetSpec:
    b = _Builder((1, 3, input_size, input_size))

    def pool_and_norm(index: int) -> None:
        # AlexNet normalises then pools; CaffeNet pools then normalises.
        steps = [lambda: b.lrn(f"norm{index}"), lambda: b.pool(f"pool{index}", 3, 2)]
        for step in reversed(steps) if caffenet else steps:
            step()

    b.conv("conv1", _scaled(96, width, 2), 11, stride=4)
    b.relu("relu1")
    pool_and_norm(1)
    b.conv("conv2", _scaled(256, width, 2), 5, pad=2, group=2)
    b.relu("relu2")
    pool_and_norm(2)
    b.conv("conv3", _scaled(384, width, 2), 3, pad=1)
    b.relu("relu3")
    b.conv("conv4", _scaled(384, width, 2), 3, pad=1, group=2)
    b.relu("relu4")
    b.conv("conv5", _scaled(256, width, 2), 3, pad=1, group=2)
    b.relu("relu5")
    b.pool("pool5", 3, 2)
    for index in (6, 7):
        b.inner_product(f"fc{index}", _scaled(4096, width, 2))
        b.relu(f"relu{index}")
        b.dropout(f"drop{index}")
    b.inner_product("fc8", num_classes)
    b.softmax()
    return NetSpec("CaffeNet" if caffenet else "AlexNet", b.input_shape, tuple(b.layers))


def _vgg16(width: float, num_classes: int, input_size: int, extra_fc: int = 0) -> NetSpec:
    b = _Builder((1, 3, input_size, input_size))
    for block, (outputs, count) in enumerate(
        [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1
    ):
        for index in range(1, count + 1):
            b.conv(f"conv{block}_{index}", _scaled(outputs, width), 3, pad=1)
            b.relu(f"relu{block}_{index}")
        b.pool(f"pool{block}", 2, 2)
    for index in (6, 7):
        b.inner_product(f"fc{index}", _scaled(4096, width))
        b.relu(f"relu{index}")
        b.dropout(f"drop{index}")
    for index in range(1, extra_fc + 1):  # a bigger model whose largest tensor stays fc6
        b.inner_product(f"fc7_{index}", _scaled(4096, width))
        b.relu(f"relu7_{index}")
    b.inner_product("fc8", num_classes)
    b.softmax()
    return NetSpec("VGG_ILSVRC_16_layers", b.input_shape, tuple(b.layers))


_DEFAULTS = {
    "lenet": (10, 28),
    "alexnet": (1000, 227),
    "caffenet": (1000, 227),
    "vgg16": (1000, 224),
}


def net_spec(
    name: str,
    *,
    width: float = 1.0,
    num_classes: int | None = None,
    input_size: int | None = None,
    extra_fc: int = 0,
) -> NetSpec:
    """The structure of a named net, without weights: cheap even for VGG16.

    `width` scales every convolution's and hidden fully-connected layer's outputs (AlexNet
    and CaffeNet round them to even numbers for their two groups); `num_classes` sets the
    last layer (default 10 for LeNet, 1000 otherwise); `input_size` the square input
    (default 28, 227, 227, 224); `extra_fc` (VGG16 only) adds that many 4096-wide
    fully-connected layers after fc7, for models larger than VGG16 whose largest tensor is
    still fc6 (each adds 16.8M parameters, 67 MB as float32).

        >>> net_spec("alexnet").parameter_counts()["conv1"]
        34944
    """
    if name not in _DEFAULTS:
        raise ValueError(f"unknown synthetic net {name!r}; known: {', '.join(SPEC_NAMES)}")
    default_classes, default_size = _DEFAULTS[name]
    num_classes = default_classes if num_classes is None else num_classes
    input_size = default_size if input_size is None else input_size
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number, not {width!r}")
    if num_classes < 1 or input_size < 1:
        raise ValueError("num_classes and input_size must be positive")
    if name == "lenet":
        return _lenet(width, num_classes, input_size)
    if extra_fc and name != "vgg16":
        raise ValueError("extra_fc applies to vgg16 only")
    if extra_fc < 0:
        raise ValueError("extra_fc must be 0 or more")
    if name == "vgg16":
        return _vgg16(width, num_classes, input_size, extra_fc)
    return _alexnet(width, num_classes, input_size, caffenet=name == "caffenet")
