"""PyTorch state-dict names and layers, both ways; shared by the torch and safetensors formats.

Reading, a key ``features.0.weight`` is layer ``features.0``, role from the last part: a 4-D
``weight`` makes a convolution, a 2-D one a dense layer (``weights``, ``biases``); a layer
with ``running_mean`` and ``running_var`` is a batch norm (``gamma``, ``beta``, ``mean``,
``variance``, ``num_batches_tracked``); a lone 1-D ``weight`` of a layer named ``*prelu*`` is
a PReLU's ``alpha``. Any other key keeps its last part as its role; a key without a dot is a
layer of its own. The layers are in Caffe's layout, which PyTorch keeps.

The keys are kept as the layers' `locations` (what `inspect` lists), not as their names: other
formats name the tensors ``conv1/weights``. Writing, each layer is put in that layout
(`weightconv.model.caffe_layout`) and named ``layer.leaf`` from its role (or by the full name a
source or mapping gave the tensor).

A dense layer's rows need the C, H, W of its input to move between the layouts. It is known
flat when the weighted layer before it (batch norms and PReLUs aside) is a dense layer with as
many outputs as it has inputs; else it must be given (``dense_inputs`` when reading,
``torch_dense_inputs`` when writing) unless the layer records it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from weightconv.errors import MappingError, UsageError
from weightconv.model import CAFFE, VALUE_ROLE, Kind, Layer, Tensor, WeightSet
from weightconv.model.caffe_layout import to_caffe_layout
from weightconv.model.canonical import canonical_shapes

SOURCE_TYPE = "torch"
_BATCHNORM = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "mean",
    "running_var": "variance",
    "num_batches_tracked": "num_batches_tracked",
}
_PLAIN = {"weight": "weights", "bias": "biases"}
#: Our role -> the last part of its PyTorch key.
_LEAF = {
    "weights": "weight",
    "biases": "bias",
    "alpha": "weight",
    "gamma": "weight",
    "beta": "bias",
    "mean": "running_mean",
    "moving_mean": "running_mean",
    "variance": "running_var",
    "moving_variance": "running_var",
}
#: Kinds that keep the shape of what they read: looked past when proving a dense input flat.
_SHAPE_KEEPING = (Kind.BATCHNORM, Kind.PRELU, Kind.SCALE, Kind.BIAS)


def layers_from_state_dict(
    tensors: Mapping[str, Tensor],
    *,
    dense_inputs: Mapping[str, tuple[int, ...]] | None = None,
    where: str,
    in_order: bool = True,
) -> list[Layer]:
    """Layers (in Caffe's layout) from a flat state dict, in its order. `in_order`: the order is
    the net's (a state dict's is its modules'; a safetensors file's is not), so a dense layer
    after a dense one with as many outputs as it has inputs is known to read a flat input."""
    groups: dict[str, dict[str, tuple[str, Tensor]]] = {}
    for key, tensor in tensors.items():
        layer, dot, leaf = key.rpartition(".")
        if not (dot and layer and leaf):
            layer, leaf = key, VALUE_ROLE
        group = groups.setdefault(layer, {})
        if leaf in group:  # "a.b" holding "c" and "a" holding "b.c" cannot both exist
            raise MappingError(f"{where}: two tensors of layer {layer!r} are named {leaf!r}")
        group[leaf] = (key, tensor)
    layers = [_layer(name, group) for name, group in groups.items()]
    _mark_dense_inputs(layers, dict(dense_inputs or {}), where, in_order)
    return layers


def _layer(name: str, group: dict[str, tuple[str, Tensor]]) -> Layer:
    leaves = set(group)
    weight = group.get("weight", ("", None))[1]
    ndim = len(weight.shape) if weight is not None else -1
    if {"running_mean", "running_var"} <= leaves <= set(_BATCHNORM):
        kind, roles = Kind.BATCHNORM, _BATCHNORM
    elif weight is not None and leaves <= {"weight", "bias"} and ndim in (2, 4):
        kind, roles = (Kind.CONV if ndim == 4 else Kind.DENSE), _PLAIN
    elif leaves == {"weight"} and ndim == 1 and "prelu" in name.rpartition(".")[2].lower():
        kind, roles = Kind.PRELU, {"weight": "alpha"}
    else:
        kind, roles = Kind.OTHER, _PLAIN if leaves <= {"weight", "bias"} else {}
    tensors = {roles.get(leaf, leaf): tensor for leaf, (_, tensor) in group.items()}
    stored = {roles.get(leaf, leaf): key for leaf, (key, _) in group.items()}
    params = {}
    if kind == Kind.DENSE and leaves == {"weight"}:
        # A bias-free Linear and an Embedding table look the same: (rows, columns) alone.
        # The canonical layout transposes the one and must not touch the other, so that
        # conversion asks (see `weightconv.model.canonical`).
        params["maybe_embedding"] = True
    return Layer(
        name=name,
        kind=kind,
        tensors=tensors,
        params=params,
        source_type=SOURCE_TYPE,
        layout=CAFFE,
        locations=stored,
    )


def _mark_dense_inputs(
    layers: list[Layer], shapes: dict[str, tuple[int, ...]], where: str, in_order: bool
) -> None:
    """Give each dense layer its input shape (given, or flat when provably so), or mark it as
    possibly reading a spatial blob, which converting it to the canonical layout refuses."""
    previous_outputs: int | None = None
    for layer in layers:
        weights = layer.tensors.get("weights")
        if layer.kind == Kind.DENSE and weights is not None:
            inputs = int(weights.shape[1])
            shape = shapes.pop(layer.name, None)
            if shape is not None:
                _check_total(layer.name, shape, inputs, where)
                layer.input_shape = shape
            elif in_order and previous_outputs == inputs:
                layer.params["follows_spatial"] = False
            else:
                layer.params["follows_spatial"] = True
                layer.params["input_shape_hint"] = (
                    f"give its input's shape as dense_inputs={layer.name}=C,H,W (or =N when flat)"
                )
            previous_outputs = int(weights.shape[0])
        elif layer.tensors and layer.kind not in _SHAPE_KEEPING:
            previous_outputs = None
    if shapes:
        raise UsageError(
            f"dense_inputs={next(iter(shapes))}: {where} has no dense layer of that name"
        )


def _check_total(name: str, shape: tuple[int, ...], inputs: int, where: str) -> None:
    total = int(np.prod(shape))
    if total != inputs:
        raise UsageError(
            f"{where}: layer {name!r} has {inputs} inputs, the shape given for it "
            f"{'x'.join(map(str, shape))} = {total}"
        )


# Writing --------------------------------------------------------------------------------------


def torch_layers(
    weights: WeightSet,
    dense_inputs: Mapping[str, tuple[int, ...]] | None,
    where: str,
    option: str = "torch_dense_inputs",
) -> Iterator[tuple[Layer, tuple[int, ...] | None, list[tuple[str, np.ndarray]]]]:
    """Each weighted layer, the input shape its dense rows were laid out for (given, or flat
    when provably so) and its (PyTorch key, array) pairs in Caffe's layout, in order; a mapped
    input's pages are released after each layer. `option` names the option that gives a dense
    layer's input shape, in messages."""
    shapes = dict(dense_inputs or {})
    unused = set(shapes)
    names: set[str] = set()
    previous_outputs: int | None = None
    for layer in weights.layers:
        if not layer.tensors:
            continue
        shape = shapes.get(layer.name)
        unused.discard(layer.name)
        inputs, outputs = _dense_sizes(layer)
        if shape is None and inputs is not None and inputs == previous_outputs:
            shape = (inputs,)
        converted = to_caffe_layout(layer, shape, hint=f"{option}={layer.name}=C,H,W")
        if inputs is not None:
            previous_outputs = outputs
        elif layer.kind not in _SHAPE_KEEPING:
            previous_outputs = None
        pairs = _keyed_arrays(layer, converted, names, where)
        # Nothing of a layer is kept here past its turn, so a caller that drops the arrays
        # holds one layer at a time.
        del converted
        yield layer, shape, pairs
        del pairs
        if weights.release is not None:
            weights.release(layer)
    if unused:
        raise UsageError(f"{option}={sorted(unused)[0]}: the weights have no layer of that name")


def _keyed_arrays(
    layer: Layer, converted: Layer, names: set[str], where: str
) -> list[tuple[str, np.ndarray]]:
    pairs = []
    for role, tensor in converted.tensors.items():
        key = torch_key(layer, role)
        if key in names:
            raise MappingError(f"{where}: two tensors are named {key!r}")
        names.add(key)
        pairs.append((key, np.asarray(tensor)))
    return pairs


def _dense_sizes(layer: Layer) -> tuple[int | None, int | None]:
    """(inputs, outputs) of a dense layer with 2-D weights, else (None, None)."""
    weights = layer.tensors.get("weights")
    if layer.kind != Kind.DENSE or weights is None or len(weights.shape) != 2:
        return None, None
    shape, _ = canonical_shapes(layer)["weights"]  # (in, out) whatever the layout
    return int(shape[0]), int(shape[1])


def torch_key(layer: Layer, role: str) -> str:
    """The state-dict key of a layer's tensor: ``conv1.weight``, or the name it came with."""
    stored = layer.stored_names.get(role)
    if stored:  # a name the source file (or a mapping) gave the tensor
        return stored
    if role == VALUE_ROLE:
        return layer.name
    return f"{layer.name}.{_LEAF.get(role, role)}"


def describe(value: Any) -> str:
    """A value of a checkpoint, in a few words: ``int 5``, ``dict of 3``, ``str 'resnet'``."""
    if isinstance(value, bool | int | float):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, str):
        return f"str {value[:40]!r}"
    if isinstance(value, dict | list | tuple):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__
