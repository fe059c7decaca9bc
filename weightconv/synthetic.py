"""Seeded synthetic Caffe models (LeNet, AlexNet, CaffeNet, VGG16) for demos, tests, benchmarks.

The weights are random, not trained; the nets are real Caffe nets: a deploy prototxt
and a binary .caffemodel in V2 (`layer`) or V1 (`layers`, enum types, legacy 4-D blob
shapes) encoding, written with protowire's encoder so that a 550 MB VGG16 streams to
disk layer by layer.

Example::

    net = build("alexnet", width=0.125)
    net.write_caffemodel("alexnet.caffemodel")
    Path("alexnet.prototxt").write_text(net.deploy_prototxt)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from google.protobuf import text_format

from ._proto import caffe_pb2
from .formats.caffe_net import conv_output_size, pool_output_size
from .formats.protowire import encode_length_delimited_header

V1_TYPES = {
    "Convolution": caffe_pb2.V1LayerParameter.CONVOLUTION,
    "InnerProduct": caffe_pb2.V1LayerParameter.INNER_PRODUCT,
    "LRN": caffe_pb2.V1LayerParameter.LRN,
    "Pooling": caffe_pb2.V1LayerParameter.POOLING,
    "ReLU": caffe_pb2.V1LayerParameter.RELU,
    "Softmax": caffe_pb2.V1LayerParameter.SOFTMAX,
    "Dropout": caffe_pb2.V1LayerParameter.DROPOUT,
}
_PARAM_FIELDS = ("convolution_param", "inner_product_param", "lrn_param", "pooling_param",
                 "dropout_param")


@dataclass
class LayerSpec:
    """A layer's definition (a V2 LayerParameter without blobs) and its blob shapes."""

    message: caffe_pb2.LayerParameter
    blob_shapes: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.message.name


@dataclass
class SyntheticNet:
    """A generated net: definition, seeded weights, and writers for both Caffe encodings."""

    name: str
    input_shape: tuple[int, int, int, int]
    layers: list[LayerSpec]
    seed: int = 0
    scale: float = 1.0

    @property
    def deploy_prototxt(self) -> str:
        """The V2 deploy definition (an Input layer, then every layer), as text."""
        return text_format.MessageToString(self.net_parameter())

    def deploy_prototxt_v1(self) -> str:
        """The same net as a 2014-style V1 definition (`input_dim`, `layers` with enums)."""
        return text_format.MessageToString(self.net_parameter(encoding="v1"))

    def net_parameter(self, encoding: str = "v2") -> caffe_pb2.NetParameter:
        net = caffe_pb2.NetParameter(name=self.name)
        if encoding == "v1":
            net.input.append("data")
            net.input_dim.extend(self.input_shape)
            for spec in self.layers:
                net.layers.add().CopyFrom(_as_v1(spec.message))
            return net
        data = net.layer.add(name="data", type="Input", top=["data"])
        data.input_param.shape.add().dim.extend(self.input_shape)
        for spec in self.layers:
            net.layer.add().CopyFrom(spec.message)
        return net

    def blob_shapes(self) -> dict[str, list[tuple[int, ...]]]:
        return {spec.name: spec.blob_shapes for spec in self.layers if spec.blob_shapes}

    @property
    def parameter_count(self) -> int:
        return sum(int(np.prod(s)) for shapes in self.blob_shapes().values() for s in shapes)

    def layer_weights(self, spec: LayerSpec, index: int) -> list[np.ndarray]:
        """The blobs of one layer in Caffe layout; the same for the same seed, every time."""
        rng = np.random.default_rng([self.seed, index])
        blobs = []
        for position, shape in enumerate(spec.blob_shapes):
            if position == 0:
                fan_in = int(np.prod(shape[1:]))
                std = self.scale * np.sqrt(2.0 / max(fan_in, 1))
                blob = rng.standard_normal(shape, dtype=np.float32)
                blob *= np.float32(std)
            else:
                blob = (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05))
            blobs.append(blob)
        return blobs

    def weights(self) -> Iterator[tuple[str, list[np.ndarray]]]:
        for index, spec in enumerate(self.layers):
            if spec.blob_shapes:
                yield spec.name, self.layer_weights(spec, index)

    def write_caffemodel(self, path: str | os.PathLike[str], encoding: str = "v2",
                         dtype: str = "float32") -> None:
        """Write the binary .caffemodel; one layer in memory at a time."""
        with open(path, "wb") as handle:
            self._write(handle, encoding, dtype)

    def caffemodel_bytes(self, encoding: str = "v2", dtype: str = "float32") -> bytes:
        import io

        buffer = io.BytesIO()
        self._write(buffer, encoding, dtype)
        return buffer.getvalue()

    def _write(self, handle: BinaryIO, encoding: str, dtype: str) -> None:
        header = caffe_pb2.NetParameter(name=self.name)
        if encoding == "v1":
            header.input.append("data")
            header.input_dim.extend(self.input_shape)
        else:
            data = header.layer.add(name="data", type="Input", top=["data"])
            data.input_param.shape.add().dim.extend(self.input_shape)
        handle.write(header.SerializeToString())
        layer_field, blob_field = (2, 6) if encoding == "v1" else (100, 7)
        for index, spec in enumerate(self.layers):
            message = _as_v1(spec.message) if encoding == "v1" else spec.message
            head = message.SerializeToString()
            blobs = [_encode_blob(blob, legacy=encoding == "v1", dtype=dtype)
                     for blob in self.layer_weights(spec, index)] if spec.blob_shapes else []
            body_length = len(head) + sum(len(encode_length_delimited_header(blob_field, n))
                                          + n for n, _ in blobs)
            handle.write(encode_length_delimited_header(layer_field, body_length))
            handle.write(head)
            for length, parts in blobs:
                handle.write(encode_length_delimited_header(blob_field, length))
                for part in parts:
                    handle.write(part)


def _encode_blob(blob: np.ndarray, legacy: bool, dtype: str) -> tuple[int, list[bytes]]:
    if legacy:
        dims = (1,) * (4 - blob.ndim) + tuple(blob.shape)
        shape = caffe_pb2.BlobProto(num=dims[0], channels=dims[1], height=dims[2],
                                    width=dims[3]).SerializeToString()
    else:
        inner = caffe_pb2.BlobShape(dim=blob.shape).SerializeToString()
        shape = encode_length_delimited_header(7, len(inner)) + inner
    wire_dtype, data_field = ("<f8", 8) if dtype == "float64" else ("<f4", 5)
    payload = np.ascontiguousarray(blob, dtype=wire_dtype).tobytes()
    parts = [shape, encode_length_delimited_header(data_field, len(payload)), payload]
    return sum(len(p) for p in parts), parts


def _as_v1(message: caffe_pb2.LayerParameter) -> caffe_pb2.V1LayerParameter:
    v1 = caffe_pb2.V1LayerParameter(name=message.name, bottom=message.bottom, top=message.top,
                                    type=V1_TYPES[message.type])
    for name in _PARAM_FIELDS:
        if message.HasField(name):
            getattr(v1, name).CopyFrom(getattr(message, name))
    return v1


# --- the nets ------------------------------------------------------------------------------


class _Builder:
    """Appends layers while tracking the current blob's channels and spatial size."""

    def __init__(self, input_shape: tuple[int, int, int, int]) -> None:
        self.layers: list[LayerSpec] = []
        self.channels, self.height, self.width = input_shape[1:]
        self.top = "data"
        self.flat: int | None = None

    def _add(self, name: str, layer_type: str, blob_shapes: list[tuple[int, ...]],
             in_place: bool = False) -> caffe_pb2.LayerParameter:
        top = self.top if in_place else name
        message = caffe_pb2.LayerParameter(name=name, type=layer_type, bottom=[self.top],
                                           top=[top])
        self.layers.append(LayerSpec(message, blob_shapes))
        self.top = top
        return message

    def conv(self, name: str, outputs: int, kernel: int, stride: int = 1, pad: int = 0,
             group: int = 1) -> None:
        message = self._add(name, "Convolution",
                            [(outputs, self.channels // group, kernel, kernel), (outputs,)])
        param = message.convolution_param
        param.num_output = outputs
        param.kernel_size.append(kernel)
        if stride != 1:
            param.stride.append(stride)
        if pad:
            param.pad.append(pad)
        if group != 1:
            param.group = group
        self.channels = outputs
        self.height = conv_output_size(self.height, kernel, stride, pad)
        self.width = conv_output_size(self.width, kernel, stride, pad)

    def pool(self, name: str, kernel: int, stride: int) -> None:
        param = self._add(name, "Pooling", []).pooling_param
        param.pool = caffe_pb2.PoolingParameter.MAX
        param.kernel_size = kernel
        param.stride = stride
        self.height = pool_output_size(self.height, kernel, stride, 0)
        self.width = pool_output_size(self.width, kernel, stride, 0)

    def lrn(self, name: str) -> None:
        param = self._add(name, "LRN", []).lrn_param
        param.local_size = 5
        param.alpha = 1e-4
        param.beta = 0.75

    def relu(self, name: str) -> None:
        self._add(name, "ReLU", [], in_place=True)

    def dropout(self, name: str) -> None:
        self._add(name, "Dropout", [], in_place=True).dropout_param.dropout_ratio = 0.5

    def dense(self, name: str, outputs: int) -> None:
        inputs = self.flat if self.flat is not None else self.channels * self.height * self.width
        self._add(name, "InnerProduct", [(outputs, inputs), (outputs,)]) \
            .inner_product_param.num_output = outputs
        self.flat = outputs

    def softmax(self, name: str = "prob") -> None:
        self._add(name, "Softmax", [])


def _scaled(size: int, width: float, multiple: int = 2) -> int:
    return max(multiple, round(size * width / multiple) * multiple)


def lenet() -> tuple[tuple[int, int, int, int], list[LayerSpec]]:
    shape = (1, 1, 28, 28)
    b = _Builder(shape)
    b.conv("conv1", 20, 5)
    b.pool("pool1", 2, 2)
    b.conv("conv2", 50, 5)
    b.pool("pool2", 2, 2)
    b.dense("ip1", 500)
    b.relu("relu1")
    b.dense("ip2", 10)
    b.softmax()
    return shape, b.layers


def alexnet(width: float = 1.0, num_classes: int = 1000, input_size: int = 227,
            caffenet: bool = False) -> tuple[tuple[int, int, int, int], list[LayerSpec]]:
    """BVLC AlexNet (LRN before pooling) or CaffeNet (pooling before LRN)."""
    shape = (1, 3, input_size, input_size)
    b = _Builder(shape)
    b.conv("conv1", _scaled(96, width), 11, stride=4)
    b.relu("relu1")
    for index, (outputs, kernel, pad) in enumerate([(256, 5, 2)], start=2):
        if caffenet:
            b.pool("pool1", 3, 2)
            b.lrn("norm1")
        else:
            b.lrn("norm1")
            b.pool("pool1", 3, 2)
        b.conv(f"conv{index}", _scaled(outputs, width), kernel, pad=pad, group=2)
        b.relu(f"relu{index}")
    if caffenet:
        b.pool("pool2", 3, 2)
        b.lrn("norm2")
    else:
        b.lrn("norm2")
        b.pool("pool2", 3, 2)
    b.conv("conv3", _scaled(384, width), 3, pad=1)
    b.relu("relu3")
    b.conv("conv4", _scaled(384, width), 3, pad=1, group=2)
    b.relu("relu4")
    b.conv("conv5", _scaled(256, width), 3, pad=1, group=2)
    b.relu("relu5")
    b.pool("pool5", 3, 2)
    b.dense("fc6", _scaled(4096, width))
    b.relu("relu6")
    b.dropout("drop6")
    b.dense("fc7", _scaled(4096, width))
    b.relu("relu7")
    b.dropout("drop7")
    b.dense("fc8", num_classes)
    b.softmax()
    return shape, b.layers


def vgg16(width: float = 1.0, num_classes: int = 1000,
          input_size: int = 224) -> tuple[tuple[int, int, int, int], list[LayerSpec]]:
    shape = (1, 3, input_size, input_size)
    b = _Builder(shape)
    for block, (outputs, count) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)],
                                             start=1):
        for index in range(1, count + 1):
            b.conv(f"conv{block}_{index}", _scaled(outputs, width, 1), 3, pad=1)
            b.relu(f"relu{block}_{index}")
        b.pool(f"pool{block}", 2, 2)
    for name in ("fc6", "fc7"):
        b.dense(name, _scaled(4096, width, 1))
        b.relu(name.replace("fc", "relu"))
        b.dropout(name.replace("fc", "drop"))
    b.dense("fc8", num_classes)
    b.softmax()
    return shape, b.layers


def build(name: str, *, width: float = 1.0, num_classes: int = 1000, seed: int = 0,
          input_size: int | None = None, scale: float = 1.0) -> SyntheticNet:
    """A seeded synthetic net: "lenet", "alexnet", "caffenet" or "vgg16"."""
    if name == "lenet":
        shape, layers = lenet()
        net_name = "LeNet"
    elif name in ("alexnet", "caffenet"):
        shape, layers = alexnet(width, num_classes, input_size or 227, caffenet=name == "caffenet")
        net_name = "AlexNet" if name == "alexnet" else "CaffeNet"
    elif name == "vgg16":
        shape, layers = vgg16(width, num_classes, input_size or 224)
        net_name = "VGG_ILSVRC_16_layers"
    else:
        raise ValueError(f"unknown synthetic net {name!r}; known: lenet, alexnet, caffenet, vgg16")
    return SyntheticNet(net_name, shape, layers, seed=seed, scale=scale)


def write_example(directory: str | os.PathLike[str], name: str, **options: object) -> tuple[
        Path, Path]:
    """Write NAME.caffemodel and NAME.prototxt into `directory`; return both paths."""
    folder = Path(directory)
    net = build(name, **options)  # type: ignore[arg-type]
    model, prototxt = folder / f"{name}.caffemodel", folder / f"{name}.prototxt"
    net.write_caffemodel(model)
    prototxt.write_text(net.deploy_prototxt)
    return model, prototxt
