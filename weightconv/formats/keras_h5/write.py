"""Writing a WeightSet as the Keras weights file of a model, in either Keras layout.

The model is given as a config (``config.json``, model JSON, ``.keras`` or a full-model
``.h5``) or derived from the weights (see `weightconv.formats.keras_h5.config`); layers are
matched to it by name, so a mapping's renames (map file, name scheme, scope) are the names
written. ``keras3`` writes the ``.weights.h5`` Keras 3 would write for that model (byte for
byte when the model is given); ``keras2`` the ``save_weights`` ``.h5`` that Keras 2 and
Keras 3's legacy loader accept. ``.keras`` archives are read, never written.

Example::

    write(ws, "out.weights.h5", model="model.keras")
    write(ws, "out.h5", keras_layout="keras2")
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from weightconv._util.files import atomic_path, check_writable, chunks, reserve
from weightconv._util.memory import release_pages
from weightconv._util.progress import Progress
from weightconv._util.regions import copy_region, output_region
from weightconv.errors import FormatError, MappingError, ShapeError, UsageError
from weightconv.formats.base import WriteResult
from weightconv.formats.keras_h5 import LAYOUTS
from weightconv.formats.keras_h5.archive import write_name_list
from weightconv.formats.keras_h5.config import (
    KERNEL_CLASSES,
    NON_TRAINABLE,
    VARIABLE_OF_ROLE,
    Node,
    Slot,
    config_input_shape,
    derived_slots,
    join_path,
    leaf_keys,
    load_model_config,
    model_slots,
    node_of,
    variable_roles,
)
from weightconv.model import FilledTensor, Tensor, WeightSet

#: Written as ``keras_version`` in the keras2 layout. Keras 2 loaders take a file without a
#: version for Keras 1 and convert its weights; 2.15.0 is the last Keras 2 bundled with
#: TensorFlow (tf.keras), so every Keras 2 reads the file as its own, unconverted.
KERAS2_VERSION = "2.15.0"
#: Tensors are converted and written in pieces of this size.
WRITE_CHUNK_BYTES = 16 << 20
#: Room checked for beside the tensors' bytes: HDF5's groups, attributes and headers.
_METADATA_ROOM = 1 << 20


#: Roles a tensor may also have in a WeightSet, for each role a Keras layer needs.
_ROLE_ALIASES = {
    "weights": ("weights", "kernel"),
    "biases": ("biases", "bias"),
    "depthwise_kernel": ("depthwise_kernel", "weights", "kernel"),
    "moving_mean": ("moving_mean", "mean"),
    "moving_variance": ("moving_variance", "variance"),
}


_NUMERIC_KINDS = "biufc"


def write(
    weights: WeightSet,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    keras_layout: str | None = None,
    model: str | os.PathLike[str] | dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> WriteResult:
    """Write `weights` as a Keras weights file for `model` (a config, see `load_model_config`;
    None: derived from the weights). ``keras3``: the ``.weights.h5`` Keras 3 writes (the name
    must end in ``.weights.h5``); ``keras2``: Keras 2's ``save_weights`` ``.h5``.

    Layers are matched to the model's by name; a missing or extra layer, a tensor Keras would
    not build or a shape that does not fit raises before anything is left on disk. Returns
    counts (``layers, tensors, parameters, bytes, skipped, keras_layout, notes``).
    """
    target = Path(path)
    if keras_layout is None:
        keras_layout = layout_for_name(target)
    if keras_layout not in LAYOUTS:
        raise UsageError(f"unknown Keras layout {keras_layout!r}; known: {', '.join(LAYOUTS)}")
    _check_output_name(target, keras_layout)
    root = node_of(load_model_config(model), str(model)) if model is not None else None
    if root is not None and not root.is_model:
        raise UsageError(f"{model}: the config is a {root.class_name} layer, not a model")
    _check_renames(weights, target)
    if root is not None:
        _check_names(weights, root, target)
    elif not weights.weighted_layers():
        raise UsageError(f"{target}: nothing to write: no layer holds tensors")
    slots = model_slots(root, weights) if root is not None else derived_slots(weights, target)
    counts = {"layers": 0, "tensors": 0, "parameters": 0}
    notes: list[str] = []
    places: list[_Place] = []
    with atomic_path(target, force, notes=notes) as temporary, _hdf5_os_errors():
        _check_room(temporary, weights.nbytes)
        with h5py.File(temporary, "w") as handle:
            if keras_layout == "keras3":
                _write_keras3(handle, slots, target, counts, notes, places)
            else:
                _write_keras2(handle, slots, root, target, counts, notes, places)
        _fill(temporary, places, progress)
    return WriteResult(
        layers=counts["layers"],
        tensors=counts["tensors"],
        parameters=counts["parameters"],
        bytes=target.stat().st_size,
        files=[str(target)],
        notes=notes,
        detail={"keras_layout": keras_layout},
    )


@contextlib.contextmanager
def _hdf5_os_errors() -> Iterator[None]:
    """HDF5 reports some failed writes (a full disk) as a RuntimeError whose text holds
    ``errno = N``: raise them as that OSError, which `atomic_path` makes an OutputError."""
    try:
        yield
    except (RuntimeError, OSError) as exc:
        match = re.search(r"errno = (\d+)", str(exc))
        if match is None or (isinstance(exc, OSError) and exc.errno):
            raise
        code = int(match[1])
        raise OSError(code, os.strerror(code)) from None


def check_output(path: str | os.PathLike[str], force: bool) -> None:
    """Raise unless `path` may be written: a ``.keras`` name, or an existing file without
    `force`, is refused before anything is read."""
    target = Path(path)
    if target.name.lower().endswith(".keras"):
        raise UsageError(_archive_refusal(target))
    check_writable(target, force)


def _stem(target: Path) -> str:
    return re.sub(r"(\.weights)?\.(h5|hdf5|keras)$", "", target.name, flags=re.IGNORECASE)


def _archive_refusal(target: Path) -> str:
    stem = _stem(target)
    return (
        f"{target}: .keras archives are read but not written here; writable: "
        f"{target.with_name(stem + '.weights.h5')} (Keras 3) or "
        f'{target.with_name(stem + ".h5")} (Keras 2, keras_layout="keras2")'
    )


def layout_for_name(target: Path) -> str:
    """The layout an output's name calls for: keras3 for ``.weights.h5``, keras2 for any other
    ``.h5``/``.hdf5`` (Keras 3 loads weights only from ``.weights.h5`` names)."""
    lowered = target.name.lower()
    if lowered.endswith((".h5", ".hdf5")) and not lowered.endswith(".weights.h5"):
        return "keras2"
    return "keras3"


def _check_output_name(target: Path, layout: str) -> None:
    lowered = target.name.lower()
    stem = _stem(target)
    if lowered.endswith(".keras"):
        raise UsageError(_archive_refusal(target))
    if layout == "keras3" and not lowered.endswith(".weights.h5"):
        raise UsageError(
            f"{target}: Keras 3 loads weights only from a name ending in "
            f".weights.h5; write {target.with_name(stem + '.weights.h5')}, or "
            f"use the keras2 layout for a legacy .h5"
        )
    if layout == "keras2" and (
        lowered.endswith(".weights.h5") or not lowered.endswith((".h5", ".hdf5"))
    ):
        raise UsageError(
            f"{target}: Keras reads the legacy layout only from a name ending in "
            f".h5 but not .weights.h5; write {target.with_name(stem + '.h5')}"
        )


def _check_renames(weights: WeightSet, target: Path) -> None:
    """Keras names a layer's variables after the layer: refuse a mapped layer whose tensors
    were renamed away from its name (some of them only, or to different layers)."""
    for layer in weights.weighted_layers():
        if not layer.origins:  # as read, not renamed
            continue
        names = [layer.tensor_name(role) for role in layer.tensors]
        if any(n != layer.name and not n.startswith(layer.name + "/") for n in names):
            raise MappingError(
                f"{target}: layer {layer.name!r}: the mapping names its tensors "
                f"{', '.join(names)}; a Keras layer holds its variables under its own name, "
                f"so rename every tensor of the layer to one new layer name"
            )


def _check_names(weights: WeightSet, root: Node, target: Path) -> None:
    names = [layer.name for layer in weights.weighted_layers()]
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise MappingError(
            f"{target}: two layers of the weights are named {', '.join(map(repr, duplicates))}"
        )
    leaves = leaf_keys(root)
    keys = {key for key, _, _ in leaves}
    extra = [n for n in names if n not in keys]
    if extra:
        weighted = [key for key, leaf, _ in leaves if variable_roles(leaf.class_name, leaf.config)]
        raise MappingError(
            f"{target}: the model has no layer named {', '.join(extra[:10])} "
            f"(its weighted layers: {', '.join(weighted[:20]) or 'none'})"
        )
    have = set(names)
    for key, leaf, _ in leaves:
        roles = variable_roles(leaf.class_name, leaf.config)
        if roles is None and key in have:
            raise MappingError(
                f"{target}: layer {key!r} is a {leaf.class_name} in the model; "
                f"writing its weights is not supported"
            )
        if roles and key not in have:
            raise MappingError(
                f"{target}: the model's {leaf.class_name} {key!r} has no "
                f"weights in the input (its layers: {', '.join(names[:20])})"
            )


def _tensors_for(slot: Slot, target: Path) -> list[tuple[str, Tensor]]:
    """(role, array) in the order Keras keeps the layer's variables, checked against the
    shapes Keras builds from the layer's config."""
    layer = slot.layer
    assert layer is not None
    roles = variable_roles(slot.class_name, slot.config) or []
    left = dict(layer.tensors)
    taken: list[tuple[str, Tensor]] = []
    for role in roles:
        alias = next((a for a in _ROLE_ALIASES.get(role, (role,)) if a in left), None)
        if alias is None:
            raise MappingError(
                f"{target}: layer {layer.name!r}: the model's {slot.class_name} "
                f"{slot.name!r} needs {role}; the weights have "
                f"{', '.join(layer.tensors) or 'none'}"
            )
        taken.append((role, left.pop(alias)))
    if left:
        raise MappingError(
            f"{target}: layer {layer.name!r}: the model's {slot.class_name} "
            f"{slot.name!r} has no place for {', '.join(left)} (it holds "
            f"{', '.join(roles)})"
        )
    shapes = {role: tuple(int(n) for n in tensor.shape) for role, tensor in taken}
    for role, expected in _expected_shapes(slot.class_name, slot.config, shapes).items():
        actual = shapes[role]
        if len(expected) != len(actual) or any(
            e is not None and e != a for e, a in zip(expected, actual, strict=False)
        ):
            shown = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
            raise ShapeError(
                f"{target}: {layer.name}/{role}: the model's {slot.class_name} "
                f"{slot.name!r} expects {shown}, the weights are {actual}"
            )
    for role, tensor in taken:
        dtype = np.dtype(tensor.dtype)
        if dtype.hasobject or (dtype.kind not in _NUMERIC_KINDS and dtype.name != "bfloat16"):
            raise MappingError(
                f"{target}: {layer.name}/{role} has dtype {dtype}; Keras weights are numbers"
            )
        if dtype.isbuiltin == 2 and dtype.name != "bfloat16":  # float8 and other ml_dtypes
            raise FormatError(
                f"{target}: {layer.name}/{role} has dtype {dtype}, which a Keras HDF5 file "
                f"does not store (HDF5 has no such type; Keras writes bfloat16 only)"
            )
    return taken


def _expected_shapes(
    class_name: str, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int | None, ...]]:
    """The shape Keras builds for each role present; None where neither the config nor the
    layer's input fixes it. What the config leaves open (a derived model's) comes from the
    layer's kernel, so its other tensors must at least agree with it."""
    shape = config_input_shape(config)
    axis = config.get("axis", 1 if config.get("data_format") == "channels_first" else -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    channels = None
    if shape is not None and isinstance(axis, int) and -len(shape) <= axis < len(shape):
        value = shape[axis]
        channels = value if isinstance(value, int) else None
    kernel = shapes.get("weights") or shapes.get("depthwise_kernel") or ()

    def dims(key: str, rank: int) -> tuple[int | None, ...]:
        value = config.get(key)
        if isinstance(value, int):
            return (value,) * rank
        if isinstance(value, list) and len(value) == rank:
            return tuple(value)
        return (None,) * rank

    def given(key: str, fallback: int | None) -> int | None:
        value = config.get(key)
        return value if isinstance(value, int) else fallback

    last = kernel[-1] if kernel else None
    expected: dict[str, tuple[int | None, ...]] = {}
    if class_name == "Dense":
        units = given("units", last)
        expected = {"weights": (channels, units), "biases": (units,)}
    elif class_name in KERNEL_CLASSES:
        rank, filters = KERNEL_CLASSES[class_name], given("filters", last)
        groups = config.get("groups", 1) or 1
        if class_name.endswith("Transpose"):
            filters = given("filters", kernel[-2] if len(kernel) > 1 else None)
            expected = {"weights": (*dims("kernel_size", rank), filters, channels)}
        else:
            per_group = channels // groups if channels is not None else None
            expected = {"weights": (*dims("kernel_size", rank), per_group, filters)}
        expected["biases"] = (filters,)
    elif class_name.startswith(("DepthwiseConv", "SeparableConv")):
        rank = 1 if class_name.endswith("1D") else 2
        channels = channels if channels is not None else (kernel[-2] if len(kernel) > 1 else None)
        multiplier = given("depth_multiplier", last)
        inner = channels * multiplier if channels is not None and multiplier else None
        expected = {
            "depthwise_kernel": (*dims("kernel_size", rank), channels, multiplier),
            "biases": (inner,),
        }
        if class_name.startswith("Separable"):
            pointwise = shapes.get("pointwise_kernel", ())
            filters = given("filters", pointwise[-1] if pointwise else None)
            expected["pointwise_kernel"] = (*(1,) * rank, inner, filters)
            expected["biases"] = (filters,)
    elif class_name in ("BatchNormalization", "LayerNormalization"):
        size = (
            channels
            if channels is not None
            else next((s[0] for s in shapes.values() if len(s) == 1), None)
        )
        expected = {role: (size,) for role in shapes}
    elif class_name == "Embedding":
        expected = {"embeddings": (config.get("input_dim"), config.get("output_dim"))}
    return {role: value for role, value in expected.items() if role in shapes}


def _write_keras3(
    handle: h5py.File,
    slots: Iterator[Slot],
    target: Path,
    counts: dict[str, int],
    notes: list[str],
    places: list[_Place],
) -> None:
    """The groups and datasets Keras 3's ``save_weights`` creates, in the order it does."""
    for slot in slots:
        if (
            slot.layer is None
            and not slot.is_model
            and variable_roles(slot.class_name, slot.config) is None
        ):
            notes.append(f"assumed {slot.class_name} {slot.name!r} holds no weights")
        group = handle.create_group(join_path(slot.path, "vars"))
        if slot.name:
            group.attrs["name"] = slot.name
        if slot.layer is None:
            continue
        for index, (_, tensor) in enumerate(_tensors_for(slot, target)):
            if tensor.dtype.name == "bfloat16":
                dataset = group.create_dataset(str(index), data=np.asarray(tensor))
                dataset.attrs["dtype"] = "bfloat16"
            else:
                _create(group, str(index), tensor, places, linked=True)
            _count(counts, tensor)
        counts["layers"] += 1


def _write_keras2(
    handle: h5py.File,
    slots: Iterator[Slot],
    root: Node | None,
    target: Path,
    counts: dict[str, int],
    notes: list[str],
    places: list[_Place],
) -> None:
    """Keras 2 ``save_weights``: a group per top-level layer, ``weight_names`` listing its
    datasets (a nested model's trainable variables first, as Keras orders them)."""
    order: list[str] = [child.name for child in root.container()] if root is not None else []
    names: dict[str, list[tuple[bool, str]]] = {name: [] for name in order}
    for slot in slots:
        if slot.is_model or slot.layer is None:
            continue
        top = slot.top or slot.name
        if top not in names:
            order.append(top)
            names[top] = []
        group = handle.require_group(top)
        for role, tensor in _tensors_for(slot, target):
            if tensor.dtype.name == "bfloat16":
                tensor = np.asarray(tensor).astype(np.float32)  # exact; Keras 2 has no bfloat16
                notes.append(f"{slot.layer.name}/{role}: bfloat16 written as exact float32")
            weight_name = f"{slot.name}/{VARIABLE_OF_ROLE.get(role, role)}:0"
            trainable = slot.trainable and role not in NON_TRAINABLE
            names[top].append((trainable, weight_name))
            _create(group, weight_name, tensor, places)
            _count(counts, tensor)
        counts["layers"] += 1
    write_name_list(handle.attrs, "layer_names", order, target)
    handle.attrs["backend"] = b"tensorflow"
    handle.attrs["keras_version"] = KERAS2_VERSION.encode()
    for name in order:
        group = handle.require_group(name)
        listed = [n for t, n in names[name] if t] + [n for t, n in names[name] if not t]
        write_name_list(group.attrs, "weight_names", listed, target)
    write_name_list(
        handle.create_group("top_level_model_weights").attrs, "weight_names", [], target
    )


def _count(counts: dict[str, int], tensor: Tensor) -> None:
    counts["tensors"] += 1
    counts["parameters"] += int(tensor.size)


@dataclass(frozen=True)
class _Place:
    """Where a dataset's values go in the file, and the tensor that has them."""

    offset: int
    dtype: np.dtype[Any]
    tensor: Tensor


def _create(
    group: h5py.Group, name: str, tensor: Tensor, places: list[_Place], *, linked: bool = False
) -> None:
    """The dataset Keras creates for `tensor`, in the order Keras creates it (so the file
    has the same bytes): Keras 3 assigns the array to the group (an anonymous dataset, written,
    then linked: `linked`), Keras 2 creates the named dataset and then writes it. Writing one
    element allocates its storage; the values are filled in after the file is closed
    (`_fill`), straight into that storage."""
    dtype = np.dtype(tensor.dtype)
    dataset = group.create_dataset(None if linked else name, tuple(tensor.shape), dtype=dtype)
    if tensor.size:
        dataset[(0,) * len(tensor.shape)] = np.zeros((), dtype)
        offset = dataset.id.get_offset()
        if offset is None:  # not a plain contiguous dataset: let HDF5 write it
            dataset[()] = np.asarray(tensor)
        else:
            places.append(_Place(int(offset), dtype, tensor))
    if linked:
        group[name] = dataset


def _check_room(path: Path, nbytes: int) -> None:
    """Refuse, as an OSError, an output the disk or the file-size limit has no room for,
    before HDF5 allocates it: HDF5 writes its metadata last, on closing, where a failure
    cannot be reported cleanly."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        reserve(fd, 0, nbytes + _METADATA_ROOM)
    finally:
        os.ftruncate(fd, 0)
        os.close(fd)


def _fill(path: Path, places: list[_Place], progress: Progress | None) -> None:
    """Every planned dataset's values, in the closed file: converted in place (a Caffe conv
    or dense kernel), copied by the kernel from a mapped input, or written in pieces."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        for place in places:
            tensor = place.tensor
            nbytes = int(tensor.size) * place.dtype.itemsize
            if place.offset + nbytes > size:  # HDF5 allocated it: cannot happen
                raise FormatError(f"{path}: a dataset's storage lies outside the file")
            if isinstance(tensor, FilledTensor):
                _fill_in_place(fd, place, tensor, nbytes)
            else:
                _write_values(fd, place, np.asarray(tensor))
            if progress is not None:
                progress.advance(nbytes)
    finally:
        os.close(fd)


def _fill_in_place(fd: int, place: _Place, tensor: FilledTensor, nbytes: int) -> None:
    # A function of its own, so that no view of the mapping outlives it: the mapping of
    # one tensor is gone before the next is made.
    with output_region(fd, place.offset, nbytes) as region:
        tensor.fill(region.view(place.dtype).reshape(tensor.shape))


def _write_values(fd: int, place: _Place, array: np.ndarray) -> None:
    if array.dtype == place.dtype and copy_region(array, fd, place.offset):
        return
    offset = place.offset
    for chunk in chunks(array, WRITE_CHUNK_BYTES):
        data = np.ascontiguousarray(chunk, dtype=place.dtype).reshape(-1).view(np.uint8)
        written = 0
        while written < data.nbytes:
            written += os.pwrite(fd, data[written:].data, offset + written)
        offset += data.nbytes
        del data
        release_pages(chunk)
