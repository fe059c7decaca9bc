"""The canonical in-memory model every reader fills and every writer lays out.

A `WeightSet` is an ordered list of `Layer`s. Each layer has a name, a kind, its
tensors keyed by role (`weights`, `biases`, `alpha`, ...) and the facts a
converter needs (group, stride, padding, LRN parameters, the shape of its input).

Tensors are NumPy arrays, often read-only views of the input file. A layer's
`layout` says how they are laid out:

- ``"canonical"``: TensorFlow/Keras layout. Conv kernels HWIO with I the input
  channels of one group; dense kernels (in, out) with a spatial input flattened
  in H, W, C order.
- ``"caffe"``: as Caffe stores them. Conv kernels OIHW; InnerProduct weights
  (out, in) (or (in, out) with ``transpose``) with the input flattened C, H, W.

`weightconv.model.canonical.to_canonical` turns one layer into the canonical layout.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from weightconv.errors import MappingError
from weightconv.model.tensors import LazyTensor, Tensor

CANONICAL = "canonical"
CAFFE = "caffe"
#: The role of a tensor whose name has no "/": it is its own layer.
VALUE_ROLE = "value"


def split_tensor_name(name: str) -> tuple[str, str]:
    """``"conv1/weights"`` -> ``("conv1", "weights")``; ``"global_step"`` -> its own layer."""
    layer, slash, role = name.rpartition("/")
    if not (slash and layer and role):
        return name, VALUE_ROLE
    return layer, role


def join_tensor_name(layer: str, role: str) -> str:
    """The inverse of `split_tensor_name`."""
    return layer if role == VALUE_ROLE else f"{layer}/{role}"


class Kind:
    """Layer kinds the converter knows; anything else is OTHER and keeps its blobs."""

    CONV = "conv"
    DECONV = "deconv"
    DENSE = "dense"
    LRN = "lrn"
    POOL = "pool"
    PRELU = "prelu"
    BATCHNORM = "batchnorm"
    SCALE = "scale"
    BIAS = "bias"
    INPUT = "input"
    RELU = "relu"
    SOFTMAX = "softmax"
    DROPOUT = "dropout"
    OTHER = "other"


@dataclass(frozen=True)
class TensorOrigin:
    """Where a mapped tensor came from: the source tensor(s), their shape(s), the transforms."""

    source: str
    source_shape: tuple[int, ...] | tuple[tuple[int, ...], ...]
    transforms: tuple[str, ...] = ()


@dataclass
class Layer:
    """One layer: named tensors plus the facts needed to place them elsewhere."""

    name: str
    kind: str = Kind.OTHER
    tensors: dict[str, Tensor] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    source_type: str = ""
    layout: str = CANONICAL
    #: Shape (C, H, W) of the blob feeding this layer, when it is known.
    input_shape: tuple[int, ...] | None = None
    bottoms: tuple[str, ...] = ()
    tops: tuple[str, ...] = ()
    #: Role -> the tensor's full name in the file it came from, where that is not
    #: simply ``layer/role`` (checkpoint scopes, Keras and object-based names).
    stored_names: dict[str, str] = field(default_factory=dict)
    #: Role -> where the file keeps the tensor, when that is not its name (an HDF5 dataset
    #: path such as ``layers/conv2d/vars/0``); what `inspect` lists.
    locations: dict[str, str] = field(default_factory=dict)
    #: Role -> where a mapping took the tensor from; empty for layers as read.
    origins: dict[str, TensorOrigin] = field(default_factory=dict)

    def tensor_name(self, role: str) -> str:
        """The tensor's name as its source file spells it."""
        return self.stored_names.get(role) or join_tensor_name(self.name, role)

    def location(self, role: str) -> str:
        """Where the source file keeps the tensor (its name, unless the format has paths)."""
        return self.locations.get(role) or self.tensor_name(role)

    @property
    def parameter_count(self) -> int:
        return sum(int(t.size) for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(int(t.nbytes) for t in self.tensors.values())

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{role} {'x'.join(map(str, t.shape)) or 'scalar'}" for role, t in self.tensors.items()
        )
        return f"Layer({self.name!r}, {self.kind}, {self.layout}{', ' + shapes if shapes else ''})"


@dataclass(frozen=True)
class SetAside:
    """A tensor the file holds that a conversion leaves out (optimizer slots, step counters):
    listed by `inspect`, kept by readers that are asked for every tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    reason: str


@dataclass
class Provenance:
    """Where a WeightSet came from."""

    path: str
    format: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class WeightSet:
    """Ordered layers with named tensors; the one model all formats meet in.

    Example::

        ws = weightconv.load("lenet.caffemodel", prototxt="lenet.prototxt")
        w = ws["conv1"].tensors["weights"]   # Caffe layout as stored
        for layer in canonical_layers(ws):   # HWIO / (in, out), one layer at a time
            ...
    """

    layers: list[Layer] = field(default_factory=list)
    source: Provenance | None = None
    #: Channel order the first layer expects: "bgr", "rgb" or None when unknown.
    channel_order: str | None = None
    notes: list[str] = field(default_factory=list)
    #: Tensors of the file that are not among the layers, and why.
    set_aside: list[SetAside] = field(default_factory=list)
    #: Set by readers that map files: drops a layer's pages from memory once written.
    release: Callable[[Layer], None] | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        where = f" from {self.source.path} ({self.source.format})" if self.source else ""
        names = ", ".join(self.names()[:6]) + (", ..." if len(self.layers) > 6 else "")
        return (
            f"WeightSet({len(self.layers)} layers [{names}], {self.parameter_count:,} "
            f"parameters{where})"
        )

    def __getitem__(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise MappingError(f"no layer named {name!r} (layers: {', '.join(self.names()[:20])})")

    def __contains__(self, name: object) -> bool:
        return any(layer.name == name for layer in self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def is_flat(self) -> bool:
        """True when every weighted layer holds one tensor named by itself (a file read with
        its full tensor names, such as a checkpoint read flat)."""
        layers = self.weighted_layers()
        return bool(layers) and all(list(layer.tensors) == [VALUE_ROLE] for layer in layers)

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def weighted_layers(self) -> list[Layer]:
        """The layers that hold at least one tensor, in order."""
        return [layer for layer in self.layers if layer.tensors]

    def tensors(self) -> Iterator[tuple[Layer, str, Tensor]]:
        """Every (layer, role, array) in order, in the layout the layers are in."""
        for layer in self.layers:
            for role, array in layer.tensors.items():
                yield layer, role, array

    @property
    def parameter_count(self) -> int:
        return sum(layer.parameter_count for layer in self.layers)

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def select(
        self, only: Sequence[str] = (), skip: Sequence[str] = ()
    ) -> tuple[WeightSet, list[str]]:
        """The layers whose name (or any tensor's full name) matches a glob in `only` (all
        when empty) and none in `skip`; returns the new set and the names left out. A
        pattern also matches everything under it as a scope: ``fc8`` matches ``fc8/weights``.
        """

        def matches(layer: Layer, patterns: Sequence[str]) -> bool:
            names = [layer.name, *(layer.tensor_name(role) for role in layer.tensors)]
            return any(
                fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(n, p.rstrip("/") + "/*")
                for p in patterns
                for n in names
            )

        kept: list[Layer] = []
        dropped: list[Layer] = []
        for layer in self.layers:
            wanted = (not only or matches(layer, only)) and not matches(layer, skip)
            (kept if wanted else dropped).append(layer)
        return replace(self, layers=kept, notes=list(self.notes)), [
            layer.name for layer in dropped if layer.tensors
        ]

    def release_lazy_tensors(self, layer: Layer) -> None:
        """A `release` hook for readers that hand out LazyTensors."""
        for tensor in layer.tensors.values():
            if isinstance(tensor, LazyTensor):
                tensor.release()

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
