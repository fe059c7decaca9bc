"""The architecture of an AlexNet-style chain: its ordered steps with Caffe's layer settings.

A step is named after the Caffe layer it reproduces and carries what changes the numbers:
kernel, stride, pad, dilation, group, pooling's rounding and the LRN constants (Caffe's
spelling). The steps come from a deploy prototxt (V0, V1 or V2) or from BVLC's AlexNet and
CaffeNet definitions, which .npy, checkpoint and Keras files do not record.

Example::

    arch = Architecture.from_prototxt("deploy.prototxt")
    [step.name for step in arch.weighted]     # ['conv1', ..., 'fc8']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from weightconv.errors import UsageError
from weightconv.formats.caffe.net import (
    LayerDef,
    NetDef,
    infer_blob_shapes,
    net_def_from_message,
    parse_prototxt,
    read_net_def,
)
from weightconv.lrn import CaffeLRN, from_layer_params

#: "alexnet": conv -> relu -> LRN -> pool (BVLC AlexNet); "caffenet": conv -> relu -> pool ->
#: LRN (BVLC reference CaffeNet).
VARIANTS = ("alexnet", "caffenet")
#: BVLC AlexNet's and CaffeNet's LRN (the k is Caffe's default).
BVLC_LRN = CaffeLRN(local_size=5, alpha=1e-4, beta=0.75, k=1.0)
BVLC_INPUT_SIZE = (227, 227)

_DATA_TYPES = {"Input", "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData"}


def pair(values: Sequence[int]) -> tuple[int, int]:
    """Two sizes (h, w) as a tuple of ints."""
    if len(values) != 2:
        raise UsageError(f"expected two sizes (height, width), got {tuple(values)}")
    return int(values[0]), int(values[1])


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
        check_variant(variant)

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
        return cls(tuple(steps), pair(input_size), variant, f"BVLC {name} defaults")

    @classmethod
    def from_prototxt(cls, prototxt: str | os.PathLike[str]) -> Architecture:
        """The chain a deploy prototxt defines (V0, V1 or V2): conv, ReLU, LRN, max pooling,
        inner product, dropout and padding layers, in order; a final Softmax is left out."""
        message, _notes = parse_prototxt(Path(prototxt))
        return cls.from_net_def(net_def_from_message(message), source=str(prototxt))

    @classmethod
    def from_net_def(cls, net: NetDef, source: str = "prototxt") -> Architecture:
        """The chain of a parsed net definition; `source` names it in messages."""
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


def check_variant(variant: str) -> None:
    """Refuse a variant other than those in `VARIANTS`."""
    if variant not in VARIANTS:
        raise UsageError(f"unknown AlexNet variant {variant!r}; known: {', '.join(VARIANTS)}")


def _detect_variant(steps: Sequence[Step]) -> str:
    ops = [step.op for step in steps]
    if "lrn" in ops and "pool" in ops:
        return "alexnet" if ops.index("lrn") < ops.index("pool") else "caffenet"
    return "custom"


def net_input_size(net: NetDef) -> tuple[int, int] | None:
    """(H, W) of a net's image input, from its declared inputs or data layers."""
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


def prototxt_input_size(prototxt: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(H, W) of a deploy prototxt's image input, None when it declares none."""
    return net_input_size(read_net_def(prototxt)[0])


def _step_from_layer(layer: LayerDef, source: str) -> Step:
    p = layer.params
    if layer.type == "Convolution":
        return Step(
            "conv",
            layer.name,
            pair(p["kernel"]),
            pair(p["stride"]),
            pair(p["pad"]),
            pair(p.get("dilation", (1, 1))),
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
            pair(p["kernel"]),
            pair(p["stride"]),
            pair(p["pad"]),
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


__all__ = [
    "BVLC_INPUT_SIZE",
    "BVLC_LRN",
    "VARIANTS",
    "Architecture",
    "Step",
    "check_variant",
    "net_input_size",
    "pair",
    "prototxt_input_size",
]
