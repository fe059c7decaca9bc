"""From the tensors a file holds to the tensors another format or network expects.

A `Mapping` turns a WeightSet (in any layout) into the WeightSet a writer lays out:
canonical layout, then the rules the user asked for, each by name and shape:

- name schemes: ``keep`` (as the source names them), ``tf1`` (``conv1_1/weights``), ``slim``
  (``vgg_16/conv1/conv1_1/weights``), ``keras`` (``conv1/kernel``); a scope prefix;
- fully-connected layers as slim's convolutions (``fc6`` (25088, 4096) <-> (7, 7, 512, 4096))
  and back;
- BGR <-> RGB on the first convolution's input channels, from the recorded source order;
- grouped convolutions split into per-group kernels (``conv2_group0``, ``conv2_group1``) or
  merged back;
- a user map file (JSON or TOML) with regex renames, skips and per-tensor transforms.

Nothing is computed until a writer asks for a tensor: the mapped tensors are `LazyTensor`s,
and the last converted source layer is the only one kept, so memory stays near one layer.
`Mapping.explain` lists every output tensor with its source, shapes and transforms.

Example::

    mapping = Mapping(names="slim", net="vgg_16", fc_as_conv=True)
    mapped = mapping.apply(weightconv.load("vgg16.caffemodel", prototxt="deploy.prototxt"))
    weightconv.save(mapped, "vgg_16.ckpt")
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from weightconv import arrays
from weightconv.errors import MappingError, ShapeError, UsageError
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

NAME_SCHEMES = ("keep", "tf1", "slim", "keras", "caffe")
CHANNEL_ORDERS = ("rgb", "bgr")
_KERAS_ROLES = {"weights": "kernel", "biases": "bias"}
_SLIM_BLOCK = re.compile(r"^(conv\d+)_\d+$")
_GROUP_PART = re.compile(r"^(?P<base>.+)_group(?P<index>\d+)$")
TRANSFORM_KEYS = ("reshape", "transpose", "flip_axis")


@dataclass
class TensorRule:
    """Per-tensor transforms from a map file, applied in the order listed here."""

    reshape: tuple[int, ...] | None = None
    transpose: tuple[int, ...] | None = None
    flip_axis: int | None = None

    def apply(self, array: np.ndarray, name: str) -> np.ndarray:
        if self.reshape is not None:
            if int(np.prod(self.reshape)) != array.size:
                raise ShapeError(
                    f"{name}: cannot reshape {tuple(array.shape)} to {self.reshape} (map file)"
                )
            array = array.reshape(self.reshape)
        if self.transpose is not None:
            if sorted(self.transpose) != list(range(array.ndim)):
                raise ShapeError(
                    f"{name}: transpose {self.transpose} does not fit shape "
                    f"{tuple(array.shape)} (map file)"
                )
            array = array.transpose(self.transpose)
        if self.flip_axis is not None:
            if not -array.ndim <= self.flip_axis < array.ndim:
                raise ShapeError(
                    f"{name}: flip_axis {self.flip_axis} does not fit shape "
                    f"{tuple(array.shape)} (map file)"
                )
            array = np.flip(array, axis=self.flip_axis)
        return array

    def shape(self, shape: tuple[int, ...], name: str) -> tuple[int, ...]:
        return self.apply(np.empty(shape, dtype=np.bool_), name).shape

    def describe(self) -> list[str]:
        steps = []
        if self.reshape is not None:
            steps.append(f"reshape to {list(self.reshape)} (map file)")
        if self.transpose is not None:
            steps.append(f"transpose axes {list(self.transpose)} (map file)")
        if self.flip_axis is not None:
            steps.append(f"flip axis {self.flip_axis} (map file)")
        return steps


@dataclass
class MapFile:
    """A user's mapping: regex renames of full tensor names, skips, per-tensor transforms.

    JSON::

        {"rename": [{"from": "^vgg_16/conv(\\\\d)/conv\\\\d_(\\\\d)/", "to": "conv\\\\1_\\\\2/"}],
         "skip": ["fc8"],
         "tensors": {"fc6/weights": {"reshape": [7, 7, 512, 4096]}}}

    TOML has the same keys (``[[rename]]`` tables, ``[tensors."fc6/weights"]``). Tensor
    keys are source tensor names (globs allowed), as ``weightconv inspect`` lists them.
    """

    renames: list[tuple[re.Pattern[str], str]] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    tensors: dict[str, TensorRule] = field(default_factory=dict)
    #: Where the rules were read from, for reports.
    source: str = ""

    @classmethod
    def load(cls, path: str | Path) -> MapFile:
        target = Path(path)
        try:
            text = target.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{target}: cannot read the map file: {exc.strerror}") from None
        try:
            if target.suffix.lower() == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise UsageError(
                f"{target}: not valid {target.suffix.lstrip('.') or 'JSON'}: {exc}"
            ) from None
        return cls.from_dict(data, str(target))

    @classmethod
    def from_dict(cls, data: Any, where: str = "map file") -> MapFile:
        if not isinstance(data, dict):
            raise UsageError(f"{where}: expected a table with rename/skip/tensors")
        unknown = set(data) - {"rename", "skip", "tensors"}
        if unknown:
            raise UsageError(
                f"{where}: unknown keys {sorted(unknown)} (known: rename, skip, tensors)"
            )
        renames = []
        for item in data.get("rename", []):
            if not isinstance(item, dict) or set(item) != {"from", "to"}:
                raise UsageError(f"{where}: each rename needs exactly 'from' and 'to'")
            try:
                renames.append((re.compile(item["from"]), str(item["to"])))
            except re.error as exc:
                raise UsageError(f"{where}: rename pattern {item['from']!r}: {exc}") from None
        skip = [str(s) for s in data.get("skip", [])]
        tensors = {}
        for name, spec in data.get("tensors", {}).items():
            if not isinstance(spec, dict) or set(spec) - set(TRANSFORM_KEYS):
                raise UsageError(
                    f"{where}: tensor {name!r}: transforms must be among "
                    f"{', '.join(TRANSFORM_KEYS)}"
                )
            tensors[name] = TensorRule(
                reshape=tuple(int(n) for n in spec["reshape"]) if "reshape" in spec else None,
                transpose=tuple(int(n) for n in spec["transpose"]) if "transpose" in spec else None,
                flip_axis=int(spec["flip_axis"]) if "flip_axis" in spec else None,
            )
        return cls(renames, skip, tensors, where)

    def rule_for(self, source_name: str) -> TensorRule | None:
        for pattern, rule in self.tensors.items():
            if fnmatch.fnmatchcase(source_name, pattern):
                return rule
        return None

    def rename(self, name: str) -> str:
        for pattern, replacement in self.renames:
            name = pattern.sub(replacement, name)
        return name


@dataclass
class Mapping:
    """What to do to a WeightSet on its way to a writer; see the module docstring."""

    names: str = "keep"
    net: str = ""
    scope: str = ""
    fc_as_conv: bool = False
    fc_as_dense: bool = False
    fc_pattern: str = "fc*"
    fc_inputs: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    input_channels: str | None = None
    source_channels: str | None = None
    split_groups: bool = False
    merge_groups: bool = False
    map_file: MapFile | None = None

    def __post_init__(self) -> None:
        if self.names not in NAME_SCHEMES:
            raise UsageError(
                f"unknown name scheme {self.names!r}; known: {', '.join(NAME_SCHEMES)}"
            )
        for order in (self.input_channels, self.source_channels):
            if order is not None and order not in CHANNEL_ORDERS:
                raise UsageError(f"channel order must be rgb or bgr, got {order!r}")
        if self.fc_as_conv and self.fc_as_dense:
            raise UsageError("--fc-as-conv and --fc-as-dense contradict each other")
        if self.split_groups and self.merge_groups:
            raise UsageError("--split-groups and --merge-groups contradict each other")
        if self.names == "slim" and not self.net:
            raise UsageError("slim names need the net's scope: --net vgg_16 (or alexnet_v2, ...)")
        if self.scope and not self.scope.endswith("/"):
            self.scope += "/"

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def changed(self) -> dict[str, Any]:
        """The options that differ from the defaults, by name (a map file by its path)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if value != default:
                out[f.name] = value.source if isinstance(value, MapFile) else value
        return out

    def replace(self, **changes: Any) -> Mapping:
        return dataclasses.replace(self, **changes)

    def is_identity(self) -> bool:
        return (
            self.names == "keep"
            and not self.scope
            and not self.fc_as_conv
            and not self.fc_as_dense
            and self.input_channels is None
            and not self.split_groups
            and not self.merge_groups
            and self.map_file is None
        )

    def apply(self, weights: WeightSet) -> WeightSet:
        """The mapped WeightSet, in canonical layout, its tensors computed on demand."""
        return _Mapper(self, weights).run()

    def explain(self, weights: WeightSet) -> list[dict[str, Any]]:
        """Every output tensor: source name and shape -> target name and shape, transforms."""
        mapped = self.apply(weights)
        rows = []
        for layer in mapped.layers:
            for role, tensor in layer.tensors.items():
                origin = layer.origins[role]
                rows.append(
                    {
                        "from": origin.source,
                        "from_shape": _listed(origin.source_shape),
                        "to": layer.tensor_name(role),
                        "to_shape": list(tensor.shape),
                        "dtype": str(tensor.dtype),
                        "transforms": list(origin.transforms),
                    }
                )
        return rows


# The work -------------------------------------------------------------------------------------


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


class _Mapper:
    def __init__(self, mapping: Mapping, weights: WeightSet) -> None:
        self.mapping = mapping
        self.weights = weights
        self.cache = _Cache()
        self.notes: list[str] = []
        #: Kind and (mapped) weights shape of the previous weighted layer.
        self.previous: tuple[str, tuple[int, ...] | None] = (Kind.OTHER, None)
        self.previous_name = ""

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
                continue
            outs = self._plan_layer(source)
            kind = _canonical_kind(source, outs)
            flip = False
            if kind == Kind.CONV and not first_conv_done and "weights" in outs:
                first_conv_done = True
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
                    self._chain(
                        out,
                        lambda a, r=rule, n=tensor_name: r.apply(a, n),
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
        steps = layout.canonicalization_steps(source)
        for role, (shape, dtype) in shapes.items():
            outs[role] = _Out(
                source,
                role,
                _picker(self.cache, role),
                shape,
                dtype,
                list(steps) if role == "weights" else [],
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
        self._chain(
            out,
            arrays.flip_input_channels,
            out.shape,
            [
                f"input channels {source_order.upper()} -> "  # type: ignore[union-attr]
                f"{self.mapping.input_channels.upper()}"
            ],
        )  # type: ignore[union-attr]

    def _layout_rules(self, source: Layer, role: str, out: _Out, kind: str) -> None:
        m = self.mapping
        if role != "weights" or not fnmatch.fnmatchcase(_leaf(source.name), m.fc_pattern):
            return
        if m.fc_as_conv and kind == Kind.DENSE and len(out.shape) == 2:
            hwc = self._fc_input(source, out.shape[0])
            self._chain(
                out,
                lambda a, s=hwc: arrays.dense_to_fc_conv(a, s),
                (*hwc, out.shape[1]),
                [f"dense -> fc-as-conv {hwc[0]}x{hwc[1]}x{hwc[2]}"],
            )
        elif m.fc_as_dense and len(out.shape) == 4:
            h, w, c, n = out.shape
            self._chain(
                out, arrays.fc_conv_to_dense, (h * w * c, n), [f"fc-as-conv {h}x{w}x{c} -> dense"]
            )

    def _fc_input(self, source: Layer, inputs: int) -> tuple[int, int, int]:
        given = self.mapping.fc_inputs.get(_leaf(source.name))
        if given is not None:
            if given[0] * given[1] * given[2] != inputs:
                raise ShapeError(
                    f"{source.name}/weights: --fc-input {'x'.join(map(str, given))} "
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
        if source.layout == "caffe" and not source.params.get("follows_spatial", False):
            return (1, 1, inputs)
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
            f"the caffemodel with its prototxt or pass --fc-input "
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
                        lambda a, i=index, g=groups: arrays.split_groups(a, g)[i],
                        (*out.shape[:-1], out.shape[-1] // groups),
                        [f"group {index} of {groups}"],
                    )
                    tensors[role] = piece
                name = f"{_leaf(source.name) if m.names != 'keep' else source.name}_group{index}"
                parts.append(
                    self._layer(source, name, tensors, kind, {**source.params, "group": 1})
                )
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
                full = m.map_file.rename(full)
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
                    lambda ps=parts: arrays.merge_groups([np.asarray(p) for p in ps]),
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
                "is with --source-channels rgb|bgr before asking for "
                f"--input-channels {m.input_channels}"
            )
        return m.input_channels or source


def _listed(shape: Any) -> list[Any]:
    return [_listed(part) if isinstance(part, tuple) else part for part in shape]


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
