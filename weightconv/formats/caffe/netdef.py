"""The normalised form of a Caffe net definition, whatever Caffe version spelled it: a
`NetDef` of `LayerDef`s, each with its V2 type name, blob links and parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from weightconv.model import Kind

#: V2 type name -> the kind of layer weightconv sees.
KIND_OF_TYPE = {
    "Convolution": Kind.CONV,
    "Deconvolution": Kind.DECONV,
    "InnerProduct": Kind.DENSE,
    "LRN": Kind.LRN,
    "Pooling": Kind.POOL,
    "PReLU": Kind.PRELU,
    "BatchNorm": Kind.BATCHNORM,
    "Scale": Kind.SCALE,
    "Bias": Kind.BIAS,
    "Input": Kind.INPUT,
    "Data": Kind.INPUT,
    "ImageData": Kind.INPUT,
    "HDF5Data": Kind.INPUT,
    "MemoryData": Kind.INPUT,
    "DummyData": Kind.INPUT,
    "WindowData": Kind.INPUT,
    "ReLU": Kind.RELU,
    "Softmax": Kind.SOFTMAX,
    "Dropout": Kind.DROPOUT,
}


@dataclass
class LayerDef:
    """One layer of a net definition, whatever Caffe version spelled it."""

    name: str
    type: str
    bottoms: list[str] = field(default_factory=list)
    tops: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    phase: str | None = None

    @property
    def kind(self) -> str:
        return KIND_OF_TYPE.get(self.type, Kind.OTHER)


@dataclass
class NetDef:
    """A net definition: its layers in file order and its net-level inputs."""

    name: str
    encoding: str
    layers: list[LayerDef]
    #: Net-level inputs (`input:` with `input_dim`/`input_shape`): blob name -> full shape.
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
