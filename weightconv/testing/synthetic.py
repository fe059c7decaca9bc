"""Seeded synthetic Caffe models (LeNet, AlexNet, CaffeNet, VGG16) for tests, demos, benchmarks.

The weights are random, not trained; the nets are real Caffe nets: a deploy prototxt
and a binary .caffemodel in V2 (`layer`, string types, `shape` blobs) or V1 (`layers`,
enum types, legacy 4-D num/channels/height/width blobs) encoding. Layer definitions go
through the generated protobuf module; blobs are appended at the wire level, generated
and written at most 16 MB at a time, so a 553 MB VGG16 streams to disk in about two
seconds with under 100 MB of memory.

Example::

    net = build("alexnet", width=0.125, seed=0)
    net.write_caffemodel("alexnet.caffemodel")
    Path("alexnet.prototxt").write_text(net.deploy_prototxt)
    conv1_weights, conv1_biases = net.weights["conv1"]
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np
from google.protobuf import text_format

from weightconv._proto import caffe_pb2
from weightconv.codecs.protowire import (
    VARINT,
    encode_key,
    encode_length_delimited_header,
    encode_varint,
)

Encoding = Literal["v2", "v1"]
BlobDtype = Literal["float32", "float64"]

SPEC_NAMES = ("lenet", "alexnet", "caffenet", "vgg16")
ENCODINGS: tuple[Encoding, ...] = ("v2", "v1")
DTYPES: tuple[BlobDtype, ...] = ("float32", "float64")

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

# Field numbers (proto/caffe.proto).
_NET_LAYER_V2, _NET_LAYERS_V1 = 100, 2
_BLOBS_V2, _BLOBS_V1 = 7, 6
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_DOUBLE_DATA, _BLOB_SHAPE = 5, 8, 7
_SHAPE_DIM = 1

_BIAS_STD = 0.05
_CHUNK_VALUES = 1 << 22  # values generated and written at a time: 16 MB of float32


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
        if encoding == "v2":
            return self.message
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
        _check_encoding(encoding)
        net = caffe_pb2.NetParameter(name=self.name)
        if encoding == "v1":
            net.input.append("data")
            net.input_dim.extend(self.input_shape)
            for layer in self.layers:
                net.layers.append(layer.definition("v1"))
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


def _vgg16(width: float, num_classes: int, input_size: int) -> NetSpec:
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
    name: str, *, width: float = 1.0, num_classes: int | None = None, input_size: int | None = None
) -> NetSpec:
    """The structure of a named net, without weights: cheap even for VGG16.

    `width` scales every convolution's and hidden fully-connected layer's outputs (AlexNet
    and CaffeNet round them to even numbers for their two groups); `num_classes` sets the
    last layer (default 10 for LeNet, 1000 otherwise); `input_size` the square input
    (default 28, 227, 227, 224).

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
    if name == "vgg16":
        return _vgg16(width, num_classes, input_size)
    return _alexnet(width, num_classes, input_size, caffenet=name == "caffenet")


# --- the caffemodel encoder ----------------------------------------------------------------


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be 'v2' or 'v1', not {encoding!r}")


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', not {dtype!r}")


def _varint_field(number: int, value: int) -> bytes:
    return encode_key(number, VARINT) + encode_varint(value)


def _blob_prefix(shape: tuple[int, ...], encoding: Encoding, dtype: BlobDtype) -> bytes:
    """A BlobProto's shape fields and its data field's key and length: all but the payload."""
    if encoding == "v1":
        if len(shape) > 4:
            raise ValueError(f"a legacy V1 blob has at most 4 axes, not {shape}")
        dims = (1,) * (4 - len(shape)) + tuple(shape)
        head = b"".join(
            _varint_field(number, dim)
            for number, dim in zip(
                (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH), dims, strict=True
            )
        )
    else:
        packed = b"".join(encode_varint(dim) for dim in shape)
        blob_shape = encode_length_delimited_header(_SHAPE_DIM, len(packed)) + packed
        head = encode_length_delimited_header(_BLOB_SHAPE, len(blob_shape)) + blob_shape
    field, itemsize = (_BLOB_DOUBLE_DATA, 8) if dtype == "float64" else (_BLOB_DATA, 4)
    return head + encode_length_delimited_header(field, math.prod(shape) * itemsize)


@dataclass(frozen=True)
class _LayerPlan:
    """A layer's encoding worked out from shapes alone: every byte but the blob payloads."""

    index: int  # position in NetSpec.layers; seeds the layer's weights
    spec: LayerSpec
    head: bytes  # the layer field's key and length, then the definition without blobs
    blob_heads: tuple[bytes, ...]  # per blob: the blobs field's key and length, and prefix
    payload_lengths: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.head) + sum(map(len, self.blob_heads)) + sum(self.payload_lengths)


def _plan_layer(index: int, spec: LayerSpec, encoding: Encoding, dtype: BlobDtype) -> _LayerPlan:
    layer_field, blob_field = (
        (_NET_LAYERS_V1, _BLOBS_V1) if encoding == "v1" else (_NET_LAYER_V2, _BLOBS_V2)
    )
    definition = spec.definition(encoding).SerializeToString()
    itemsize = 8 if dtype == "float64" else 4
    payloads = tuple(math.prod(shape) * itemsize for shape in spec.blob_shapes)
    blob_heads = []
    for shape, payload in zip(spec.blob_shapes, payloads, strict=True):
        prefix = _blob_prefix(shape, encoding, dtype)
        blob_heads.append(
            encode_length_delimited_header(blob_field, len(prefix) + payload) + prefix
        )
    body = len(definition) + sum(map(len, blob_heads)) + sum(payloads)
    head = encode_length_delimited_header(layer_field, body) + definition
    return _LayerPlan(index, spec, head, tuple(blob_heads), payloads)


def _payload(blob: np.ndarray, dtype: BlobDtype) -> np.ndarray:
    """The blob's packed little-endian bytes, as a flat uint8 view (no copy for float32)."""
    wire = np.ascontiguousarray(blob, dtype="<f8" if dtype == "float64" else "<f4")
    return wire.reshape(-1).view(np.uint8)


# --- weights and the net -------------------------------------------------------------------


class NetWeights(Mapping[str, list[np.ndarray]]):
    """Layer name -> blobs (float32, Caffe layout), in layer order, generated on access.

    Every access regenerates the layer's blobs from the seed, with the same values each
    time, so a VGG16 is never held whole unless asked for with `dict(net.weights)`.
    """

    def __init__(self, names: list[str], make: Callable[[str], list[np.ndarray]]) -> None:
        self._names = names
        self._make = make

    def __getitem__(self, name: str) -> list[np.ndarray]:
        if name not in self._names:
            raise KeyError(name)
        return self._make(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass(frozen=True)
class SyntheticNet:
    """A net's structure plus seeded weights, and writers for both Caffe encodings.

    Weights are drawn per layer from `numpy.random.default_rng([seed, layer index])`:
    He-scaled normal weights (std `scale * sqrt(2 / fan_in)`, fan_in = in/group * kh * kw
    or in) and small non-zero normal biases (std 0.05).
    """

    spec: NetSpec
    seed: int = 0
    scale: float = 1.0
    encoding: Encoding = "v2"
    dtype: BlobDtype = "float32"

    def __post_init__(self) -> None:
        _check_encoding(self.encoding)
        _check_dtype(self.dtype)
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, not {self.seed}")

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self.spec.input_shape

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        return self.spec.layers

    @property
    def deploy_prototxt(self) -> str:
        """The deploy definition in this net's encoding (V2 `layer`, or V1 `layers`)."""
        return self.spec.prototxt(self.encoding)

    def prototxt(self, encoding: Encoding | None = None) -> str:
        """The deploy definition in the given encoding (default: this net's)."""
        return self.spec.prototxt(encoding or self.encoding)

    def blob_shapes(self) -> dict[str, list[tuple[int, ...]]]:
        """Layer name -> blob shapes in Caffe layout, without generating any weights."""
        return self.spec.blob_shapes()

    @property
    def parameter_count(self) -> int:
        return self.spec.parameter_count

    @property
    def weights(self) -> NetWeights:
        """Layer name -> [weights, biases] as float32 arrays in Caffe layout, lazily."""
        return NetWeights(
            [layer.name for layer in self.layers if layer.blob_shapes], self.layer_weights
        )

    def layer_weights(self, name: str) -> list[np.ndarray]:
        """One layer's blobs; the same values for the same seed, every time."""
        for index, layer in enumerate(self.layers):
            if layer.name == name:
                return self._generate(index, layer)
        raise KeyError(name)

    def _generate(self, index: int, layer: LayerSpec) -> list[np.ndarray]:
        blobs = [np.empty(shape, np.float32) for shape in layer.blob_shapes]
        filled = [0] * len(blobs)
        for position, chunk in self._blob_chunks(index, layer):
            blobs[position].reshape(-1)[filled[position] : filled[position] + chunk.size] = chunk
            filled[position] += chunk.size
        return blobs

    def _blob_chunks(self, index: int, layer: LayerSpec) -> Iterator[tuple[int, np.ndarray]]:
        """(blob position, next flat run of its values), in file order; at most 16 MB each."""
        rng = np.random.default_rng([self.seed, index])
        for position, shape in enumerate(layer.blob_shapes):
            if position == 0:
                std = self.scale * math.sqrt(2.0 / max(math.prod(shape[1:]), 1))
            else:
                std = _BIAS_STD
            remaining = math.prod(shape)
            while remaining:
                count = min(remaining, _CHUNK_VALUES)
                chunk = rng.standard_normal(count, dtype=np.float32)
                chunk *= np.float32(std)
                yield position, chunk
                remaining -= count

    def caffemodel_size(
        self, *, encoding: Encoding | None = None, dtype: BlobDtype | None = None
    ) -> int:
        """The exact size in bytes of the .caffemodel, worked out without generating weights."""
        encoding, dtype = self._options(encoding, dtype)
        head, tail = self._net_fields(encoding)
        return len(head) + len(tail) + sum(plan.size for plan in self._plans(encoding, dtype))

    def write_caffemodel(
        self,
        path: str | os.PathLike[str],
        *,
        encoding: Encoding | None = None,
        dtype: BlobDtype | None = None,
    ) -> int:
        """Write the binary .caffemodel, 16 MB of weights in memory at a time; return its size.

        `encoding` ("v2" or "v1") and `dtype` ("float32" writes `data`, "float64"
        `double_data`) default to the net's own.
        """
        encoding, dtype = self._options(encoding, dtype)
        with open(path, "wb") as handle:
            try:
                return self._write(handle, encoding, dtype)
            except BaseException:
                handle.close()
                os.unlink(path)  # no half-written model left behind
                raise

    def caffemodel_bytes(
        self, *, encoding: Encoding | None = None, dtype: BlobDtype | None = None
    ) -> bytes:
        """The .caffemodel as bytes, held whole in memory: for small nets."""
        encoding, dtype = self._options(encoding, dtype)
        buffer = io.BytesIO()
        self._write(buffer, encoding, dtype)
        return buffer.getvalue()

    def _options(
        self, encoding: Encoding | None, dtype: BlobDtype | None
    ) -> tuple[Encoding, BlobDtype]:
        encoding = encoding or self.encoding
        dtype = dtype or self.dtype
        _check_encoding(encoding)
        _check_dtype(dtype)
        return encoding, dtype

    def _net_fields(self, encoding: Encoding) -> tuple[bytes, bytes]:
        """NetParameter fields before and after the weighted layers, in field-number order."""
        head = caffe_pb2.NetParameter(name=self.name)
        tail = caffe_pb2.NetParameter()
        if encoding == "v1":
            tail.input.append("data")
            tail.input_dim.extend(self.input_shape)
        else:
            head.layer.append(self.spec.input_layer())
        return head.SerializeToString(), tail.SerializeToString()

    def _plans(self, encoding: Encoding, dtype: BlobDtype) -> Iterator[_LayerPlan]:
        for index, layer in enumerate(self.layers):
            yield _plan_layer(index, layer, encoding, dtype)

    def _write(self, handle: BinaryIO, encoding: Encoding, dtype: BlobDtype) -> int:
        head, tail = self._net_fields(encoding)
        handle.write(head)
        written = len(head)
        for plan in self._plans(encoding, dtype):
            self._write_layer(handle, plan, dtype)
            written += plan.size
        handle.write(tail)
        return written + len(tail)

    def _write_layer(self, handle: BinaryIO, plan: _LayerPlan, dtype: BlobDtype) -> None:
        handle.write(plan.head)
        written = [0] * len(plan.blob_heads)
        for position, chunk in self._blob_chunks(plan.index, plan.spec):
            if not written[position]:
                handle.write(plan.blob_heads[position])
            payload = _payload(chunk, dtype)
            handle.write(payload)
            written[position] += payload.nbytes
        if tuple(written) != plan.payload_lengths:
            raise RuntimeError(
                f"{plan.spec.name}: wrote {written} bytes of blob data where "
                f"{list(plan.payload_lengths)} were declared"
            )


def build(
    spec_name: str,
    *,
    width: float = 1.0,
    num_classes: int | None = None,
    seed: int = 0,
    encoding: Encoding = "v2",
    input_size: int | None = None,
    scale: float = 1.0,
    dtype: BlobDtype = "float32",
) -> SyntheticNet:
    """A seeded synthetic net: "lenet", "alexnet", "caffenet" or "vgg16".

    `width`, `num_classes` and `input_size` shape the net (see `net_spec`); `seed` and
    `scale` its weights; `encoding` ("v2" or "v1") and `dtype` ("float32" or "float64"
    blobs) are the defaults for `deploy_prototxt` and the caffemodel writers. With
    `scale=1` a unit-variance input gives a peaked but unsaturated softmax (every weight
    layer multiplies the logits by `scale`, so lower it for pixel-range inputs).

        >>> net = build("lenet", seed=1)
        >>> [blob.shape for blob in net.weights["ip1"]]
        [(500, 800), (500,)]
    """
    spec = net_spec(spec_name, width=width, num_classes=num_classes, input_size=input_size)
    return SyntheticNet(spec, seed=seed, scale=scale, encoding=encoding, dtype=dtype)
