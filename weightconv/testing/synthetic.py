"""Our seeded caffemodel writer: synthetic Caffe models (LeNet, AlexNet, CaffeNet, VGG16)
for tests, demos (`weightconv demo`) and benchmarks.

What it writes: a deploy prototxt and a binary .caffemodel of a real Caffe net, with
seeded random weights (not trained). Either encoding Caffe reads:

- V2: `layer` entries with string types, an Input layer for `data`, and blobs with a
  `shape` (BlobShape) field;
- V1: `layers` entries with enum types, net-level `input`/`input_dim`, and blobs with the
  legacy 4-D num/channels/height/width fields (a dense layer's weights are (1, 1, out, in)).

Blobs hold `data` (float32) or `double_data` (float64). `links=False` leaves out every
layer's bottom and top, as some converters' and generators' files do. Layer definitions
go through the generated protobuf module; blobs are appended at the wire level, generated
and written at most 16 MB at a time, so a 553 MB VGG16 streams to disk in about two
seconds with under 100 MB of memory. The same seed gives the same bytes on every run.

The nets' structure (layer definitions and blob shapes, no weights) is in `net_specs`;
`net_spec`, `NetSpec`, `LayerSpec`, `SPEC_NAMES` and `ENCODINGS` are re-exported here.

Example::

    from weightconv.testing import synthetic

    net = synthetic.build("alexnet", width=0.125, seed=0)        # or encoding="v1"
    net.write_caffemodel("alexnet.caffemodel")                   # dtype="float64", links=False
    Path("alexnet.prototxt").write_text(net.deploy_prototxt)
    conv1_weights, conv1_biases = net.weights["conv1"]           # Caffe layout, float32
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np

from weightconv._proto import caffe_pb2
from weightconv.codecs.protowire import (
    VARINT,
    encode_key,
    encode_length_delimited_header,
    encode_varint,
)
from weightconv.testing.net_specs import (
    ENCODINGS,
    SPEC_NAMES,
    Encoding,
    LayerSpec,
    NetSpec,
    check_encoding,
    net_spec,
)

__all__ = [
    "DTYPES",
    "ENCODINGS",
    "SPEC_NAMES",
    "BlobDtype",
    "Encoding",
    "LayerSpec",
    "NetSpec",
    "NetWeights",
    "SyntheticNet",
    "build",
    "net_spec",
]

BlobDtype = Literal["float32", "float64"]
DTYPES: tuple[BlobDtype, ...] = ("float32", "float64")

# Field numbers (proto/caffe.proto).
_NET_LAYER_V2, _NET_LAYERS_V1 = 100, 2
_BLOBS_V2, _BLOBS_V1 = 7, 6
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_DOUBLE_DATA, _BLOB_SHAPE = 5, 8, 7
_SHAPE_DIM = 1

_BIAS_STD = 0.05
_CHUNK_VALUES = 1 << 22  # values generated and written at a time: 16 MB of float32


# --- the caffemodel encoder ----------------------------------------------------------------


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


def _plan_layer(
    index: int, spec: LayerSpec, encoding: Encoding, dtype: BlobDtype, links: bool
) -> _LayerPlan:
    layer_field, blob_field = (
        (_NET_LAYERS_V1, _BLOBS_V1) if encoding == "v1" else (_NET_LAYER_V2, _BLOBS_V2)
    )
    definition = _definition_bytes(spec.definition(encoding), links)
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


def _definition_bytes(
    message: caffe_pb2.LayerParameter | caffe_pb2.V1LayerParameter, links: bool
) -> bytes:
    """A layer definition's wire bytes, without its bottom and top blob names unless `links`."""
    data = message.SerializeToString()
    if links:
        return data
    copy = type(message).FromString(data)
    copy.ClearField("bottom")
    copy.ClearField("top")
    return copy.SerializeToString()


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
        check_encoding(self.encoding)
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
        self,
        *,
        encoding: Encoding | None = None,
        dtype: BlobDtype | None = None,
        links: bool = True,
    ) -> int:
        """The exact size in bytes of the .caffemodel, worked out without generating weights."""
        encoding, dtype = self._options(encoding, dtype)
        head, tail = self._net_fields(encoding, links)
        plans = self._plans(encoding, dtype, links)
        return len(head) + len(tail) + sum(plan.size for plan in plans)

    def write_caffemodel(
        self,
        path: str | os.PathLike[str],
        *,
        encoding: Encoding | None = None,
        dtype: BlobDtype | None = None,
        links: bool = True,
    ) -> int:
        """Write the binary .caffemodel, 16 MB of weights in memory at a time; return its size.

        `encoding` ("v2" or "v1") and `dtype` ("float32" writes `data`, "float64"
        `double_data`) default to the net's own. `links=False` writes no layer's bottom or
        top (the V1 net-level input stays), like files from some converters.
        """
        encoding, dtype = self._options(encoding, dtype)
        with open(path, "wb") as handle:
            try:
                return self._write(handle, encoding, dtype, links)
            except BaseException:
                handle.close()
                os.unlink(path)  # no half-written model left behind
                raise

    def caffemodel_bytes(
        self,
        *,
        encoding: Encoding | None = None,
        dtype: BlobDtype | None = None,
        links: bool = True,
    ) -> bytes:
        """The .caffemodel as bytes, held whole in memory: for small nets."""
        encoding, dtype = self._options(encoding, dtype)
        buffer = io.BytesIO()
        self._write(buffer, encoding, dtype, links)
        return buffer.getvalue()

    def _options(
        self, encoding: Encoding | None, dtype: BlobDtype | None
    ) -> tuple[Encoding, BlobDtype]:
        encoding = encoding or self.encoding
        dtype = dtype or self.dtype
        check_encoding(encoding)
        _check_dtype(dtype)
        return encoding, dtype

    def _net_fields(self, encoding: Encoding, links: bool) -> tuple[bytes, bytes]:
        """NetParameter fields before and after the weighted layers, in field-number order."""
        head = caffe_pb2.NetParameter(name=self.name)
        tail = caffe_pb2.NetParameter()
        if encoding == "v1":
            tail.input.append("data")
            tail.input_dim.extend(self.input_shape)
        else:
            data = head.layer.add()
            data.CopyFrom(self.spec.input_layer())
            if not links:
                data.ClearField("top")
        return head.SerializeToString(), tail.SerializeToString()

    def _plans(self, encoding: Encoding, dtype: BlobDtype, links: bool) -> Iterator[_LayerPlan]:
        for index, layer in enumerate(self.layers):
            yield _plan_layer(index, layer, encoding, dtype, links)

    def _write(self, handle: BinaryIO, encoding: Encoding, dtype: BlobDtype, links: bool) -> int:
        head, tail = self._net_fields(encoding, links)
        handle.write(head)
        written = len(head)
        for plan in self._plans(encoding, dtype, links):
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
            handle.write(payload.data)
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
    extra_fc: int = 0,
) -> SyntheticNet:
    """A seeded synthetic net: "lenet", "alexnet", "caffenet" or "vgg16".

    `width`, `num_classes`, `input_size` and `extra_fc` shape the net (see `net_spec`); `seed` and
    `scale` its weights; `encoding` ("v2" or "v1") and `dtype` ("float32" or "float64"
    blobs) are the defaults for `deploy_prototxt` and the caffemodel writers. With
    `scale=1` a unit-variance input gives a peaked but unsaturated softmax (every weight
    layer multiplies the logits by `scale`, so lower it for pixel-range inputs).

        >>> net = build("lenet", seed=1)
        >>> [blob.shape for blob in net.weights["ip1"]]
        [(500, 800), (500,)]
    """
    spec = net_spec(
        spec_name, width=width, num_classes=num_classes, input_size=input_size, extra_fc=extra_fc
    )
    return SyntheticNet(spec, seed=seed, scale=scale, encoding=encoding, dtype=dtype)
