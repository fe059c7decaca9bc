"""Pairing our layers with the tensors of a target model (a template), by order and shape.

A template is a PyTorch state dict or an ONNX model whose tensor names are its own
(``features.0.weight``, ``classifier.1.weight``): our layers cannot be matched to them by name.
They are matched in order instead: the template's layers (its tensors grouped by module, or by
the ONNX node that consumes them) one for one with our weighted layers, each pair holding the
same roles (weights, biases, gamma, ...) with the same shapes in Caffe's layout (which PyTorch
and ONNX keep). A Caffe BatchNorm followed by its Scale pairs with one template batch norm.
Where the two sides stop fitting, the pairing is refused, naming both sides at that place.

Example::

    slots = state_dict_slots(weightconv.load("torchvision_alexnet.pt"))
    pairs = pair(weights, slots, dense_inputs=None, where="out.pt")
    pairs[0].slot.name   # 'features.0.weight'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightconv.errors import MappingError
from weightconv.formats.torch.names import torch_key
from weightconv.formats.torch.read import read
from weightconv.model import CAFFE, CANONICAL, Kind, Layer, WeightSet
from weightconv.model.caffe_layout import steps

#: Role names that mean the same tensor.
_SYNONYMS = {
    "moving_mean": "mean",
    "moving_variance": "variance",
    "scale": "gamma",
    "offset": "beta",
}
#: Template tensors that are not weights: written as the template has them when ours lack them.
CARRIED = ("num_batches_tracked",)
#: Kinds whose tensors are weights a template holds slots for.
WEIGHT_KINDS = (Kind.CONV, Kind.DECONV, Kind.DENSE, Kind.BATCHNORM, Kind.PRELU, Kind.SCALE)


@dataclass(frozen=True)
class Slot:
    """One tensor of a template: its name there, the layer (module or node) it belongs to, the
    role it plays and its shape and dtype as the template stores it. `transposed`: stored as
    the transpose of Caffe's layout (an ONNX Gemm with transB=0, a MatMul)."""

    name: str
    layer: str
    role: str
    shape: tuple[int, ...]
    dtype: str
    transposed: bool = False
    #: The template's own tensor, for a slot that is not a weight (a batch count) and that
    #: our weights lack: it is written as the template has it.
    value: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Pair:
    """One of our tensors (layer, role, shape in Caffe's layout) and the slot it fills."""

    layer: str
    role: str
    shape: tuple[int, ...]
    slot: Slot
    transforms: tuple[str, ...] = ()


@dataclass
class _Ours:
    layer: Layer
    roles: dict[str, tuple[int, ...]] = field(default_factory=dict)


def state_dict_slots(template: WeightSet) -> list[Slot]:
    """The slots of a state dict read by `weightconv.formats.torch.read` (every tensor)."""
    slots = []
    for layer in template.weighted_layers():
        for role, tensor in layer.tensors.items():
            slots.append(
                Slot(
                    name=layer.location(role),
                    layer=layer.name,
                    role=role,
                    shape=tuple(int(n) for n in tensor.shape),
                    dtype=str(tensor.dtype),
                    value=tensor if role in CARRIED else None,
                )
            )
    return slots


def caffe_shapes(layer: Layer) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in Caffe's (PyTorch's) layout, without converting it."""
    shapes = {role: tuple(int(n) for n in t.shape) for role, t in layer.tensors.items()}
    if layer.layout == CAFFE:
        if layer.kind == Kind.BATCHNORM:
            shapes.pop("scale_factor", None)
        weights = shapes.get("weights")
        if layer.kind == Kind.DENSE and layer.params.get("transpose") and weights:
            shapes["weights"] = weights[::-1]
        return shapes
    if layer.layout != CANONICAL or "weights" not in shapes:
        return shapes
    weights = shapes["weights"]
    if len(weights) == 4 and layer.kind in (Kind.CONV, Kind.DECONV, Kind.DENSE):
        kh, kw, i, o = weights
        shapes["weights"] = (o, i, kh, kw)
    elif len(weights) == 2 and layer.kind == Kind.DENSE:
        shapes["weights"] = weights[::-1]
    return shapes


def pair(
    weights: WeightSet,
    slots: list[Slot],
    *,
    dense_inputs: Mapping[str, tuple[int, ...]] | None = None,
    where: str,
    template: str,
) -> list[Pair]:
    """Our weighted layers paired in order with the template's `slots` (grouped by layer);
    refused where a layer's roles or shapes differ, or either side has layers left over."""
    ours = [_Ours(layer, caffe_shapes(layer)) for layer in weights.weighted_layers()]
    theirs = _grouped(slots)
    pairs: list[Pair] = []
    i = j = 0
    while i < len(ours) and j < len(theirs):
        group = theirs[j]
        wanted = {_SYNONYMS.get(s.role, s.role): s for s in group}
        optional = {r: wanted.pop(r) for r in list(wanted) if r in CARRIED}
        taken = [ours[i]]
        if set(_roles(taken)) != set(wanted) and i + 1 < len(ours):
            merged = [ours[i], ours[i + 1]]  # a Caffe BatchNorm and its Scale
            if _bn_and_scale(merged) and set(_roles(merged)) == set(wanted):
                taken = merged
        have = _roles(taken)
        for role, slot in optional.items():
            if role in have:
                wanted[role] = slot
            else:
                kept = ("not in our weights: kept from the template",)
                pairs.append(Pair("", role, slot.shape, slot, kept))
        if set(have) != set(wanted) or not all(_fits(have[r][2], wanted[r]) for r in wanted):
            raise MappingError(
                f"{where}: pairing with {template} broke at our layer #{i + 1} "
                f"{_describe_ours(taken[:1])} and its layer #{j + 1} {_describe_slots(group)} "
                f"({len(pairs)} tensors paired before it; ours has {len(ours)} weighted layers, "
                f"the template {len(theirs)})" + _hint(taken[0].layer)
            )
        for common, slot in wanted.items():
            layer, role, shape = have[common]
            transforms = steps(layer, _given(dense_inputs, layer), role)
            if slot.transposed:
                transforms.append("(out, in) -> (in, out) as the template stores it")
            pairs.append(Pair(layer.name, role, shape, slot, tuple(transforms)))
        i += len(taken)
        j += 1
    if i < len(ours) or j < len(theirs):
        left = (
            f"our layers {', '.join(o.layer.name for o in ours[i : i + 5])} have no place in it"
            if i < len(ours)
            else f"its {', '.join(s.name for g in theirs[j : j + 2] for s in g)}"
            f"{' ...' if len(theirs) - j > 2 else ''} not in our weights"
        )
        raise MappingError(
            f"{where}: {template} has {len(theirs)} weighted layers, ours {len(ours)}: after "
            f"{len(pairs)} paired tensors, {left}" + (_hint(ours[i].layer) if i < len(ours) else "")
        )
    return pairs


def template_pairs(
    weights: WeightSet,
    model: str | os.PathLike[str],
    dense_inputs: Mapping[str, tuple[int, ...]] | None,
    where: str,
) -> tuple[dict[str, Slot], list[Slot]]:
    """Our tensors' keys (``conv1.weight``) -> the slots of the state dict `model` they fill;
    and the slots ours lack that are written as the template has them (`CARRIED`)."""
    slots = state_dict_slots(read(model))
    pairs = pair(weights, slots, dense_inputs=dense_inputs, where=where, template=os.fspath(model))
    by_layer = {layer.name: layer for layer in weights.weighted_layers()}
    filled = {torch_key(by_layer[p.layer], p.role): p.slot for p in pairs if p.layer}
    return filled, [p.slot for p in pairs if not p.layer]


def explain_rows(pairs: list[Pair]) -> list[dict[str, Any]]:
    """The pairing as `map --explain` rows."""
    return [
        {
            "from": f"{p.layer}/{p.role}" if p.layer else "(the template's own)",
            "from_shape": list(p.shape),
            "to": p.slot.name,
            "to_shape": list(p.slot.shape),
            "dtype": p.slot.dtype,
            "transforms": list(p.transforms),
        }
        for p in pairs
    ]


def _hint(layer: Layer) -> str:
    if layer.kind in WEIGHT_KINDS:
        return ""
    return f"; {layer.name} is not a weight a template holds: leave it out with skip={layer.name}"


def _grouped(slots: list[Slot]) -> list[list[Slot]]:
    groups: dict[str, list[Slot]] = {}
    for slot in slots:
        groups.setdefault(slot.layer, []).append(slot)
    return list(groups.values())


def _roles(taken: list[_Ours]) -> dict[str, tuple[Layer, str, tuple[int, ...]]]:
    """Each tensor of the layers taken by its role's common name: (layer, its role, shape)."""
    out: dict[str, tuple[Layer, str, tuple[int, ...]]] = {}
    for item in taken:
        for role, shape in item.roles.items():
            out[_SYNONYMS.get(role, role)] = (item.layer, role, shape)
    return out


def _bn_and_scale(taken: list[_Ours]) -> bool:
    kinds = [item.layer.kind for item in taken]
    return kinds == [Kind.BATCHNORM, Kind.SCALE]


def _fits(shape: tuple[int, ...], slot: Slot) -> bool:
    expected = slot.shape[::-1] if slot.transposed else slot.shape
    return tuple(shape) == tuple(expected)


def _given(dense_inputs: Mapping[str, tuple[int, ...]] | None, layer: Layer) -> Any:
    return (dense_inputs or {}).get(layer.name)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _describe_ours(taken: list[_Ours]) -> str:
    item = taken[0]
    roles = ", ".join(f"{r} {_shape(s)}" for r, s in item.roles.items())
    return f"{item.layer.name} ({item.layer.kind}: {roles})"


def _describe_slots(group: list[Slot]) -> str:
    shown = ", ".join(
        f"{s.name} {_shape(s.shape)}{' (in, out)' if s.transposed else ''}" for s in group
    )
    return f"{group[0].layer} ({shown})"


def check_dtype(array: np.ndarray, slot: Slot, where: str) -> None:
    """Refuse a tensor whose dtype is not the template's (a cast could lose bits)."""
    if str(array.dtype.newbyteorder("=")) != slot.dtype:
        raise MappingError(
            f"{where}: the template's {slot.name} is {slot.dtype}, our tensor for it is "
            f"{array.dtype}; convert the weights' dtype first"
        )
