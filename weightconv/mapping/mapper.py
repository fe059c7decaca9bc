"""The work of a mapping: each source layer planned into output tensors that are computed only
when a writer asks for them, one source layer converted at a time."""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from weightconv import arrays
from weightconv.errors import MappingError, ShapeError
from weightconv.mapping.options import MappingOptions
from weightconv.mapping.rules import TensorRule
from weightconv.model import (
    CANONICAL,
    Kind,
    Layer,
    LazyTensor,
    TensorOrigin,
    WeightSet,
    join_tensor_name,
    split_tensor_name,
)
from weightconv.model import canonical as layout

_KERAS_ROLES = {"weights": "kernel", "biases": "bias"}
_SLIM_BLOCK = re.compile(r"^(conv\d+)_\d+$")
_GROUP_PART = re.compile(r"^(?P<base>.+)_group(?P<index>\d+)$")


class _Cache:
    """The canonical form of the one source layer most recently asked for."""

    def __init__(self) -> None:
        self.source: Layer | None = None
        self.canonical: Layer | None = None

    def get(self, source: Layer) -> Layer:
        if self.source is not source:
            self.canonical = None  # drop the previous layer before converting the next
            self.canonical = layout.to_canonical(source)
            self.source = source
        assert self.canonical is not None
        return self.canonical

    def clear(self) -> None:
        self.source = self.canonical = None


@dataclass
class _Out:
    """One output tensor being planned: where it comes from and what is done to it."""

    source: Layer
    role: str
    array_of: Callable[[Layer], np.ndarray]
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    transforms: list[str]


class Mapper:
    def __init__(self, mapping: MappingOptions, weights: WeightSet) -> None:
        self.mapping = mapping
        self.weights = weights
        self.cache = _Cache()
        self.notes: list[str] = []
        #: Kind and (mapped) weights shape of the previous weighted layer.
        self.previous: tuple[str, tuple[int, ...] | None] = (Kind.OTHER, None)
        self.previous_name = ""
        #: The rules that changed at least one tensor (see `RULES`).
        self.used: set[str] = set()

    def run(self) -> WeightSet:
        m = self.mapping
        layers: list[Layer] = []
        owners: dict[int, Layer] = {}
        skipped_by_file = []
        first_conv_done = False
        order = self.weights.channel_order
        if m.input_channels is not None:
            order = self._check_channel_orders()
        for source in self.weights.layers:
            if not source.tensors:
                continue
            if m.map_file and any(
                fnmatch.fnmatchcase(n, p)
                for p in m.map_file.skip
                for n in [source.name, *map(source.tensor_name, source.tensors)]
            ):
                skipped_by_file.append(source.name)
                self.used.add("map_file")
                continue
            outs = self._plan_layer(source)
            kind = _canonical_kind(source, outs)
            flip = False
            if kind == Kind.CONV and not first_conv_done and "weights" in outs:
                first_conv_done = True
                self.used.add("input_channels")
                flip = m.input_channels is not None and m.input_channels != (
                    m.source_channels or self.weights.channel_order
                )
            for role, out in outs.items():
                if flip and role == "weights":
                    self._flip(out)
                self._layout_rules(source, role, out, kind)
                tensor_name = source.tensor_name(role)
                rule = m.map_file.rule_for(tensor_name) if m.map_file else None
                if rule is not None:
                    self.used.add("map_file")
                    self._chain(
                        out,
                        functools.partial(_apply_rule, rule, tensor_name),
                        rule.shape(out.shape, tensor_name),
                        rule.describe(),
                    )
            weights_out = outs.get("weights")
            self.previous = (kind, weights_out.shape if weights_out else None)
            self.previous_name = source.name
            for new_layer in self._name_and_split(source, outs, kind):
                layers.append(new_layer)
                owners[id(new_layer)] = source
        if m.merge_groups:
            layers = self._merge(layers, owners)
        self._check_unique(layers)
        result = WeightSet(
            layers=layers,
            source=self.weights.source,
            channel_order=order,
            notes=list(self.weights.notes),
        )
        release_source = self.weights.release

        def release(layer: Layer) -> None:
            owner = owners.get(id(layer))
            if release_source is not None and owner is not None:
                release_source(owner)

        result.release = release
        for note in self.notes:
            result.note(note)
        if skipped_by_file:
            result.note(f"map file skipped: {', '.join(skipped_by_file)}")
        return result

    # -- per tensor ---------------------------------------------------------------------------

    def _plan_layer(self, source: Layer) -> dict[str, _Out]:
        outs = {}
        shapes = layout.canonical_shapes(source)
        for role, (shape, dtype) in shapes.items():
            outs[role] = _Out(
                source,
                role,
                _picker(self.cache, role),
                shape,
                dtype,
                layout.canonicalization_steps(source, role),
            )
        return outs

    @staticmethod
    def _chain(
        out: _Out,
        transform: Callable[[np.ndarray], np.ndarray],
        shape: tuple[int, ...],
        steps: list[str],
    ) -> None:
        previous = out.array_of
        out.array_of = lambda layer: transform(previous(layer))
        out.shape = tuple(shape)
        out.transforms.extend(steps)

    def _flip(self, out: _Out) -> None:
        if len(out.shape) != 4 or out.shape[2] != 3:
            raise ShapeError(
                f"{out.source.name}/weights: swapping BGR/RGB needs 3 input "
                f"channels, the kernel is {list(out.shape)}"
            )
        source_order = self.mapping.source_channels or self.weights.channel_order
        target_order = str(self.mapping.input_channels)
        self._chain(
            out,
            arrays.flip_input_channels,
            out.shape,
            [f"input channels {str(source_order).upper()} -> {target_order.upper()}"],
        )

    def _layout_rules(self, source: Layer, role: str, out: _Out, kind: str) -> None:
        m = self.mapping
        if role != "weights" or not fnmatch.fnmatchcase(_leaf(source.name), m.fc_pattern):
            return
        if m.fc_as_conv and kind == Kind.DENSE and len(out.shape) == 2:
            hwc = self._fc_input(source, out.shape[0])
            self.used.add("fc_as_conv")
            self._chain(
                out,
                functools.partial(_dense_to_fc_conv, hwc),
                (*hwc, out.shape[1]),
                [f"dense -> fc-as-conv {hwc[0]}x{hwc[1]}x{hwc[2]}"],
            )
        elif m.fc_as_dense and len(out.shape) == 4:
            h, w, c, n = out.shape
            self.used.add("fc_as_dense")
            self._chain(
                out, arrays.fc_conv_to_dense, (h * w * c, n), [f"fc-as-conv {h}x{w}x{c} -> dense"]
            )

    def _fc_input(self, source: Layer, inputs: int) -> tuple[int, int, int]:
        given = self.mapping.fc_inputs.get(_leaf(source.name))
        if given is not None:
            if given[0] * given[1] * given[2] != inputs:
                raise ShapeError(
                    f"{source.name}/weights: fc_inputs={_leaf(source.name)}="
                    f"{','.join(map(str, given))} "
                    f"= {given[0] * given[1] * given[2]} does not match its "
                    f"{inputs} inputs"
                )
            return given
        shape = source.input_shape
        if shape is not None and len(shape) == 3:
            c, h, w = shape
            if c * h * w != inputs:
                raise ShapeError(
                    f"{source.name}/weights: {inputs} inputs, but its input blob is {c}x{h}x{w}"
                )
            return (h, w, c)
        if shape is not None:
            return (1, 1, inputs)
        if source.layout == "caffe":
            if not source.params.get("follows_spatial", False):
                return (1, 1, inputs)  # the reader proved its input flat
            raise ShapeError(
                f"{source.name}/weights: laying it out as a convolution needs the C,H,W of its "
                f"input, a spatial blob of unknown height and width ({inputs} inputs); read "
                f"the caffemodel with prototxt=P or input_shape=C,H,W"
            )
        previous_kind, previous_shape = self.previous
        if previous_kind == Kind.DENSE and previous_shape and previous_shape[-1] == inputs:
            return (1, 1, inputs)  # fed by the dense layer before it: fc7 after fc6
        if (
            previous_shape
            and len(previous_shape) == 4
            and _leaf(self.previous_name).startswith(self.mapping.fc_pattern.rstrip("*"))
            and (previous_shape[-1] == inputs)
        ):
            return (1, 1, inputs)  # fed by an fc layer already laid out as a 1x1-able conv
        raise MappingError(
            f"{source.name}/weights: laying it out as a convolution needs the "
            f"height, width and channels of its input ({inputs} values); read "
            f"the caffemodel with its prototxt or give fc_inputs="
            f"{_leaf(source.name)}=H,W,C"
        )

    # -- names --------------------------------------------------------------------------------

    def _name_and_split(self, source: Layer, outs: dict[str, _Out], kind: str) -> list[Layer]:
        m = self.mapping
        groups = int(source.params.get("group", 1) or 1)
        if m.split_groups and kind == Kind.CONV and groups > 1:
            parts = []
            for index in range(groups):
                tensors = {}
                for role, out in outs.items():
                    if len(out.shape) == 0 or out.shape[-1] % groups:
                        raise ShapeError(
                            f"{source.tensor_name(role)}: {list(out.shape)} does "
                            f"not split into {groups} groups"
                        )
                    piece = _Out(
                        out.source, role, out.array_of, out.shape, out.dtype, list(out.transforms)
                    )
                    self._chain(
                        piece,
                        functools.partial(_group_part, groups, index),
                        (*out.shape[:-1], out.shape[-1] // groups),
                        [f"group {index} of {groups}"],
                    )
                    tensors[role] = piece
                name = f"{_leaf(source.name) if m.names != 'keep' else source.name}_group{index}"
                parts.append(
                    self._layer(source, name, tensors, kind, {**source.params, "group": 1})
                )
            self.used.add("split_groups")
            return parts
        name = source.name if m.names == "keep" else _leaf(source.name)
        return [self._layer(source, name, outs, kind, dict(source.params))]

    def _layer(
        self, source: Layer, name: str, outs: dict[str, _Out], kind: str, params: dict[str, Any]
    ) -> Layer:
        m = self.mapping
        tensors: dict[str, Any] = {}
        stored: dict[str, str] = {}
        origin: dict[str, TensorOrigin] = {}
        layer_path = name
        if m.names == "slim":
            block = _SLIM_BLOCK.match(name)
            layer_path = f"{m.net}/{block.group(1)}/{name}" if block else f"{m.net}/{name}"
        for role, out in outs.items():
            if m.names == "keep":
                full = source.tensor_name(role)
                if name != source.name:  # split groups keep the source's naming style
                    full = join_tensor_name(name, role)
            elif m.names == "keras":
                full = join_tensor_name(layer_path, _KERAS_ROLES.get(role, role))
            else:
                full = join_tensor_name(layer_path, role)
            full = m.scope + full
            if m.map_file:
                renamed = m.map_file.rename(full)
                if renamed != full:
                    self.used.add("map_file")
                full = renamed
            tensors[role] = LazyTensor(out.shape, out.dtype, _loader(out))
            stored[role] = full
            origin[role] = TensorOrigin(
                source.tensor_name(role),
                tuple(int(n) for n in source.tensors[role].shape),
                tuple(out.transforms),
            )
        layer_name = m.scope + layer_path
        if m.map_file:
            layer_name = m.map_file.rename(layer_name)
            # A rename of the full tensor names moves the layer too, so that writers which
            # key by layer (.npy, Keras) use the new name.
            prefixes = {split_tensor_name(full)[0] for full in stored.values()}
            if len(prefixes) == 1 and all(
                split_tensor_name(full)[1] != "value" for full in stored.values()
            ):
                layer_name = prefixes.pop()
        new = Layer(
            name=layer_name,
            kind=kind,
            tensors=tensors,
            params=params,
            origins=origin,
            source_type=source.source_type,
            layout=CANONICAL,
            input_shape=source.input_shape,
            bottoms=source.bottoms,
            tops=source.tops,
        )
        new.stored_names = {
            role: full for role, full in stored.items() if full != join_tensor_name(new.name, role)
        }
        return new

    def _merge(self, layers: list[Layer], owners: dict[int, Layer]) -> list[Layer]:
        merged: list[Layer] = []
        index = 0
        while index < len(layers):
            match = _GROUP_PART.match(layers[index].name)
            if not match or int(match["index"]) != 0:
                merged.append(layers[index])
                index += 1
                continue
            base = match["base"]
            run = [layers[index]]
            while index + len(run) < len(layers):
                follower = _GROUP_PART.match(layers[index + len(run)].name)
                if not follower or follower["base"] != base or int(follower["index"]) != len(run):
                    break
                run.append(layers[index + len(run)])
            if len(run) == 1:
                raise MappingError(f"{run[0].name}: a single group part; nothing to merge it with")
            roles = list(run[0].tensors)
            if any(list(part.tensors) != roles for part in run):
                raise MappingError(f"{base}: its group parts hold different tensors")
            tensors: dict[str, Any] = {}
            origin = {}
            for role in roles:
                parts = [part.tensors[role] for part in run]
                shapes = {tuple(p.shape[:-1]) for p in parts}
                if len(shapes) != 1:
                    raise ShapeError(
                        f"{base}/{role}: group parts have shapes {[list(p.shape) for p in parts]}"
                    )
                shape = (*parts[0].shape[:-1], sum(p.shape[-1] for p in parts))
                tensors[role] = LazyTensor(
                    shape,
                    parts[0].dtype,
                    functools.partial(_merged, parts),
                )
                origin[role] = TensorOrigin(
                    ", ".join(part.tensor_name(role) for part in run),
                    tuple(tuple(int(n) for n in p.shape) for p in parts),
                    (f"merge {len(run)} groups",),
                )
            layer = Layer(
                name=f"{run[0].name.rpartition('_group')[0]}",
                kind=Kind.CONV,
                tensors=tensors,
                params={**run[0].params, "group": len(run)},
                origins=origin,
                layout=CANONICAL,
            )
            owners[id(layer)] = owners.get(id(run[-1]), run[-1])
            merged.append(layer)
            self.used.add("merge_groups")
            index += len(run)
        return merged

    def _check_unique(self, layers: list[Layer]) -> None:
        seen: dict[str, str] = {}
        for layer in layers:
            for role in layer.tensors:
                full = layer.tensor_name(role)
                if full in seen:
                    raise MappingError(
                        f"two tensors map to {full!r} ({seen[full]} and "
                        f"{layer.origins[role].source}); the mapping "
                        f"is ambiguous"
                    )
                seen[full] = layer.origins[role].source

    def _check_channel_orders(self) -> str:
        m = self.mapping
        source = m.source_channels or self.weights.channel_order
        if source is None:
            raise MappingError(
                "the source's channel order is not recorded in it; say which it "
                "is with source_channels=rgb|bgr before asking for "
                f"input_channels={m.input_channels}"
            )
        return m.input_channels or source


def _apply_rule(rule: TensorRule, name: str, array: np.ndarray) -> np.ndarray:
    return rule.apply(array, name)


def _dense_to_fc_conv(hwc: tuple[int, int, int], array: np.ndarray) -> np.ndarray:
    return arrays.dense_to_fc_conv(array, hwc)


def _group_part(groups: int, index: int, array: np.ndarray) -> np.ndarray:
    return arrays.split_groups(array, groups)[index]


def _merged(parts: list[Any]) -> np.ndarray:
    return arrays.merge_groups([np.asarray(part) for part in parts])


def listed(shape: Any) -> list[Any]:
    return [listed(part) if isinstance(part, tuple) else part for part in shape]


def _leaf(name: str) -> str:
    return name.rpartition("/")[2]


def _picker(cache: _Cache, role: str) -> Callable[[Layer], np.ndarray]:
    return lambda source: np.asarray(cache.get(source).tensors[role])


def _loader(out: _Out) -> Callable[[], np.ndarray]:
    return lambda: np.asarray(out.array_of(out.source), order="C")  # 0-d stays 0-d


def _canonical_kind(source: Layer, outs: dict[str, _Out]) -> str:
    weights = outs.get("weights")
    if source.kind in (Kind.CONV, Kind.DENSE) or weights is None:
        return source.kind
    if len(weights.shape) == 4:
        return Kind.CONV
    if len(weights.shape) == 2:
        return Kind.DENSE
    return source.kind
