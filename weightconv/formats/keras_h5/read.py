"""Reading every Keras HDF5 layout, without Keras; each is recognised by content.

- Keras 2 ``save_weights`` ``.h5``: root attrs ``layer_names`` (split into ``layer_names0``,
  ``layer_names1``... when long), ``backend``, ``keras_version``; one group per layer whose
  attr ``weight_names`` (``conv1/kernel:0``) names its datasets, nested at that path.
- The same under ``model_weights`` for a full ``model.save("m.h5")``, whose root attr
  ``model_config`` gives layer classes; ``optimizer_weights`` holds training state.
- Keras 3's legacy ``.h5`` (``weight_names`` are variable paths without ``:0``).
- Keras 3 ``.weights.h5``: ``layers/<path>/vars/<i>`` (see `weightconv.formats.keras_h5.config`
  for the paths); ``vars`` holds the model's own variables and ``optimizer/vars`` the
  optimizer's.
- ``.keras`` zip archives: ``config.json`` maps those paths back to layer names and classes,
  and ``model.weights.h5`` is read in place (`weightconv.formats.keras_h5.archive`).

Tensors are Keras's own layout, which is the canonical one; they are read lazily. What the
file holds beside the model's weights (optimizer state, datasets in no Keras place) is kept
out of the layers and listed in ``WeightSet.set_aside`` under its HDF5 dataset path.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from weightconv._util.hdf5 import check_dataset, guard, mapped_values
from weightconv.errors import FormatError, WeightconvError
from weightconv.formats.keras_h5.archive import (
    LinkOrder,
    Source,
    has_name_list,
    is_keras_archive,
    open_source,
    read_name_list,
)
from weightconv.formats.keras_h5.config import (
    HDF5_MAGIC,
    ROLE_OF_VARIABLE,
    VARIABLE_OF_ROLE,
    WEIGHTLESS,
    ZIP_MAGIC,
    Node,
    attr_text,
    class_of_path,
    config_input_shape,
    join_path,
    keras3_paths,
    node_of,
    normal_path,
    parse_config,
    path_name,
    role_variants,
    variable_roles,
)
from weightconv.model import CANONICAL, Kind, Layer, LazyTensor, Provenance, SetAside, WeightSet

#: The `SetAside.reason` of an optimizer's variables (and its iteration count).
OPTIMIZER_STATE = "optimizer state"
#: The `SetAside.reason` of a dataset in no place a Keras loader reads.
OUTSIDE_LAYOUT = "outside the Keras layout"

_KINDS = {
    "Conv2D": Kind.CONV,
    "Conv2DTranspose": Kind.DECONV,
    "Dense": Kind.DENSE,
    "BatchNormalization": Kind.BATCHNORM,
    "PReLU": Kind.PRELU,
    "InputLayer": Kind.INPUT,
    "ReLU": Kind.RELU,
    "Softmax": Kind.SOFTMAX,
    "Dropout": Kind.DROPOUT,
    **{name: Kind.POOL for name in WEIGHTLESS if "Pooling" in name},
}


def sniff(head: bytes, path: Path) -> bool:
    """True for an HDF5 file in a Keras layout, or a zip holding ``model.weights.h5``."""
    if head.startswith(ZIP_MAGIC):
        return is_keras_archive(path)
    if not head.startswith(HDF5_MAGIC):
        return False
    try:
        with guard(path, "HDF5 structure"), h5py.File(path, "r") as handle:
            return _layout_of(handle) is not None
    except (OSError, WeightconvError):
        return False


def _layout_of(handle: h5py.File) -> str | None:
    """ "legacy", "keras3" or None (not a Keras weights file)."""
    if has_name_list(handle.attrs, "layer_names") or "model_config" in handle.attrs:
        return "legacy"
    weights = handle.get("model_weights")
    if isinstance(weights, h5py.Group) and has_name_list(weights.attrs, "layer_names"):
        return "legacy"
    roots = [
        key
        for key in ("layers", "vars", "_layer_checkpoint_dependencies")
        if isinstance(handle.get(key), h5py.Group)
    ]
    if not roots:
        return None
    outside: list[str] = []

    def visit(name: str | bytes, obj: Any) -> None:
        if isinstance(name, bytes):  # a link name that is not UTF-8
            name = name.decode("utf-8", "replace")
        if isinstance(obj, h5py.Dataset) and name.rpartition("/")[0].rpartition("/")[2] != "vars":
            outside.append(name)

    handle.visititems(visit)
    return None if outside else "keras3"


def read(path: str | os.PathLike[str]) -> WeightSet:
    """Read any Keras weights file (see the module docstring) into a canonical WeightSet.

    Layers come in the model's order, weightless ones included. Optimizer state and datasets
    in no Keras place are left out of the layers, noted, and listed in ``set_aside``.

    Example::

        ws = read("model.keras")      # layers conv1, fc6... named from config.json
        [aside.name for aside in ws.set_aside]   # ["optimizer/vars/0", ...]
    """
    source, config = open_source(Path(path))
    notes: list[str] = []
    with source.open() as handle, guard(source, "HDF5 structure"):
        layout = _layout_of(handle)
        if layout is None:
            raise FormatError(
                f"{source}: an HDF5 file, but not Keras weights (no layer_names "
                f"attribute, no model_weights, no layers/.../vars groups)"
            )
        if config is None and layout == "legacy" and "model_config" in handle.attrs:
            text = attr_text(source.attribute(handle, "model_config", ""))
            config = parse_config(text, f"{source} model_config")
        root = node_of(config, str(source)) if config is not None else None
        if layout == "keras3":
            layers, detail, optimizer = _read_keras3(handle, source, root, notes)
        else:
            layers, detail, optimizer = _read_legacy(handle, source, root, notes)
        set_aside = _set_aside(handle, layers, optimizer, source, notes)
    detail["has_config"] = root is not None
    if root is not None:
        detail["model_class"], detail["model_name"] = root.class_name, root.name
    detail["optimizer_tensors"] = len(optimizer)
    weights = WeightSet(
        layers=layers,
        source=Provenance(path=str(path), format="keras-h5", detail=detail),
        set_aside=set_aside,
    )
    for note in notes:
        weights.note(note)
    return weights


def list_datasets(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Every dataset of a Keras file by its full HDF5 path, in reading order: ``weights``
    (the model's tensors, as `read` returns them), ``optimizer`` (training state, set aside)
    and ``unlisted`` (in no Keras place, set aside)."""
    weights = read(path)
    return {
        "weights": [layer.location(role) for layer, role, _ in weights.tensors()],
        "optimizer": [a.name for a in weights.set_aside if a.reason == OPTIMIZER_STATE],
        "unlisted": [a.name for a in weights.set_aside if a.reason != OPTIMIZER_STATE],
    }


def _set_aside(
    handle: h5py.File, layers: list[Layer], optimizer: list[str], source: Source, notes: list[str]
) -> list[SetAside]:
    """Every dataset of the file that no layer holds, and why: the optimizer's in the order
    the layout lists them, then the others in h5py's order."""
    taken = {layer.location(role) for layer in layers for role in layer.tensors}
    found: dict[str, h5py.Dataset] = {}

    def visit(name: str | bytes, obj: Any) -> None:  # returns None: visititems stops at a value
        if isinstance(name, bytes):  # a link name that is not UTF-8
            name = name.decode("utf-8", "replace")
        if isinstance(obj, h5py.Dataset) and name not in taken:
            found[name] = obj

    handle.visititems(visit)
    state = [name for name in optimizer if name in found]
    outside = [name for name in found if name not in set(optimizer)]
    aside = [_aside(found[name], OPTIMIZER_STATE, source) for name in state]
    aside += [_aside(found[name], OUTSIDE_LAYOUT, source) for name in outside]
    if state:
        notes.append(
            f"{source}: left out {len(state)} optimizer tensors (under "
            f"{state[0].split('/')[0]}/): training state, not model weights"
        )
    if outside:
        notes.append(
            f"{source}: left out {len(outside)} datasets in no Keras layer: "
            f"{', '.join(outside[:5])}{'...' if len(outside) > 5 else ''}"
        )
    return aside


def _aside(dataset: h5py.Dataset, reason: str, source: Source) -> SetAside:
    shape = tuple(int(n) for n in dataset.shape or ())
    dtype = _dtype_of(dataset, source)[0]
    count = math.prod(shape)
    return SetAside(
        dataset.name.lstrip("/"),
        shape,
        str(dtype.newbyteorder("=")),
        count * dtype.itemsize,
        reason,
    )


def _loader(source: Source, dataset: str, bfloat16: bool) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        with source.open() as handle, guard(source, f"dataset {dataset}"):
            target = handle[dataset]
            check_dataset(target, source, source.size or source.path.stat().st_size)
            start = 0 if source.member is None else source.offset  # -1: compressed member
            array = mapped_values(target, source.path, start) if start >= 0 else None
            if array is None:
                array = np.asarray(target[()])
        if bfloat16:
            import ml_dtypes

            array = array.view(ml_dtypes.bfloat16)
        return array

    return load


def _dtype_of(dataset: h5py.Dataset, source: Source) -> tuple[np.dtype[Any], bool]:
    """The dataset's dtype, and whether it is bfloat16. Keras stores bfloat16 as 2-byte
    opaque data, marked by a ``dtype`` attribute in ``.weights.h5`` and unmarked by Keras 3's
    legacy writer; no other 2-byte opaque type appears in Keras files, so both are bfloat16."""
    opaque = (
        dataset.dtype.kind == "V"
        and dataset.dtype.itemsize == 2
        and not (dataset.dtype.names or dataset.id.get_type().get_tag())
    )
    if opaque and attr_text(source.attribute(dataset, "dtype", "bfloat16")) == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16), True
    return np.dtype(dataset.dtype), False


def _lazy(source: Source, dataset: h5py.Dataset) -> LazyTensor:
    """A dataset read on demand."""
    dtype, bfloat16 = _dtype_of(dataset, source)
    return LazyTensor(dataset.shape or (), dtype, _loader(source, dataset.name, bfloat16))


def _read_keras3(
    handle: h5py.File, source: Source, root: Node | None, notes: list[str]
) -> tuple[list[Layer], dict[str, Any], list[str]]:
    """Layers of a ``.weights.h5`` (one per ``<path>/vars`` group, in the model's order: the
    config's, else the order Keras created the groups in) and the optimizer's datasets."""
    entries: list[tuple[str, h5py.Group]] = []
    with source.raw() as raw:
        heaps = LinkOrder(raw)

        def walk(group: h5py.Group, path: str) -> None:
            for key in heaps.order(group):
                child = group.get(key)
                if isinstance(child, h5py.Group):
                    if key == "vars":
                        entries.append((path, child))
                    else:
                        walk(child, join_path(path, key))

        walk(handle, "")
    by_path = dict(keras3_paths(root)) if root is not None else {}
    rank = {path: index for index, path in enumerate(by_path)}
    entries.sort(key=lambda e: rank.get(normal_path(e[0]), len(rank)))  # stable
    layers: list[Layer] = []
    optimizer: list[str] = []
    for path, group in entries:
        keys = sorted(group, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
        strays = [k for k in keys if not isinstance(group.get(k), h5py.Dataset)]
        if strays:  # skipping one would shift every later variable into the wrong role
            raise FormatError(
                f"{source}: {group.name}/{strays[0]}: expected a dataset, not a group"
            )
        members = [group[k] for k in keys]
        if path.split("/")[0] == "optimizer":
            optimizer.extend(d.name.lstrip("/") for d in members)
            continue
        node = by_path.get(normal_path(path))
        is_model = path == "" or isinstance(handle.get(join_path(path, "layers")), h5py.Group)
        if is_model and not members:
            continue
        class_name = node.class_name if node is not None else class_of_path(path)
        name = (
            node.name
            if node is not None
            else attr_text(source.attribute(group, "name", "")) or path_name(path) or "model"
        )
        config = node.config if node is not None else {}
        roles = _roles_for(class_name, config, len(members), node is not None)
        tensors = {role: _lazy(source, d) for role, d in zip(roles, members, strict=True)}
        _check_kernel_rank(source, group.name, tensors)
        stored = {role: f"{name}/{VARIABLE_OF_ROLE.get(role, role)}" for role in roles}
        located = {role: d.name.lstrip("/") for role, d in zip(roles, members, strict=True)}
        layers.append(_layer(name, class_name, config, tensors, stored, located))
    _unique_names(layers)
    if root is None and any(not layer.source_type[:1].isupper() for layer in layers):
        notes.append(
            f"{source}: no model config; layer classes guessed from the file's "
            f"paths (layers/conv2d_1...)"
        )
    return layers, {"layout": "keras3"}, optimizer


def _read_legacy(
    handle: h5py.File, source: Source, root: Node | None, notes: list[str]
) -> tuple[list[Layer], dict[str, Any], list[str]]:
    """Layers of a legacy ``.h5`` (in ``layer_names`` order, tensors in ``weight_names``
    order) and the datasets under ``optimizer_weights``."""
    group = handle
    if not has_name_list(handle.attrs, "layer_names"):
        weights = handle.get("model_weights")
        if not isinstance(weights, h5py.Group):
            raise FormatError(
                f"{source}: a Keras model file without weights (no layer_names "
                f"attribute and no model_weights group)"
            )
        group = weights
    names = read_name_list(group, "layer_names", source)
    children = {child.name: child for child in root.children} if root is not None else {}
    layers: list[Layer] = []
    for layer_name in [*names, "top_level_model_weights"]:
        layer_group = group.get(layer_name)
        if layer_name == "top_level_model_weights" and layer_group is None:
            continue
        if not isinstance(layer_group, h5py.Group):
            raise FormatError(
                f"{source}: layer_names lists {layer_name!r} but the file has no "
                f"group {join_path(group.name, layer_name)}"
            )
        members = []
        for weight_name in read_name_list(layer_group, "weight_names", source):
            dataset = layer_group.get(weight_name)
            if not isinstance(dataset, h5py.Dataset):
                raise FormatError(
                    f"{source}: layer {layer_name!r}: weight_names lists "
                    f"{weight_name!r} but there is no dataset "
                    f"{join_path(layer_group.name, weight_name)}"
                )
            members.append((weight_name, dataset))
        if layer_name == "top_level_model_weights" and not members:
            continue
        node = children.get(layer_name)
        for owner, owner_node, owned in _owners(layer_name, node, members):
            class_name = owner_node.class_name if owner_node is not None else ""
            config = owner_node.config if owner_node is not None else {}
            roles = _legacy_roles(class_name, config, [name for name, _ in owned])
            tensors = {role: _lazy(source, d) for role, (_, d) in zip(roles, owned, strict=True)}
            stored = {
                role: name.removesuffix(":0") for role, (name, _) in zip(roles, owned, strict=True)
            }
            located = {role: d.name.lstrip("/") for role, (_, d) in zip(roles, owned, strict=True)}
            layers.append(_layer(owner, class_name, config, tensors, stored, located))
    _unique_names(layers)
    optimizer: list[str] = []
    state = handle.get("optimizer_weights")
    if isinstance(state, h5py.Group):
        state.visititems(
            lambda name, obj: (
                optimizer.append(obj.name.lstrip("/")) if isinstance(obj, h5py.Dataset) else None
            )
        )
    if root is None and layers:
        notes.append(
            f"{source}: no model_config; layer kinds guessed from weight names and "
            f"shapes (a DepthwiseConv2D saved by Keras 3 reads as a convolution)"
        )
    version = attr_text(
        source.attribute(group, "keras_version", source.attribute(handle, "keras_version", ""))
    )
    backend = attr_text(source.attribute(group, "backend", source.attribute(handle, "backend", "")))
    if not version or version.startswith("1."):
        notes.append(
            f"{source}: written by Keras 1 (keras_version {version or 'absent'}); "
            f"tensors are as stored, and Keras 1 kernels may be in Theano layout"
        )
    detail = {
        "layout": "legacy",
        "keras_version": version,
        "backend": backend,
        "full_model": group is not handle,
    }
    return layers, detail, optimizer


def _owners(
    layer_name: str, node: Node | None, members: list[tuple[str, h5py.Dataset]]
) -> Iterator[tuple[str, Node | None, list[tuple[str, h5py.Dataset]]]]:
    """Split a legacy layer group into the layers owning its weights: one, or for a nested
    model each inner layer (``c1/kernel:0``, ``bn1/gamma:0``...) in order of first mention."""
    if not members:
        yield layer_name, node, []
        return
    owners = [name.split("/")[-2] if name.count("/") else layer_name for name, _ in members]
    nested = (
        node.is_model if node is not None else (len(set(owners)) > 1 and layer_name not in owners)
    )
    if not nested:
        yield layer_name, node, members
        return
    inner = {leaf.name: leaf for leaf, _ in node.leaves()} if node is not None else {}
    grouped: dict[str, list[tuple[str, h5py.Dataset]]] = {}
    for owner, member in zip(owners, members, strict=True):
        grouped.setdefault(owner, []).append(member)
    for owner, owned in grouped.items():
        yield owner, inner.get(owner), owned


def _roles_for(class_name: str, config: dict[str, Any], count: int, configured: bool) -> list[str]:
    """Roles of a Keras 3 layer's `count` variables: from its class (and config), else var<i>."""
    roles = variable_roles(class_name, config) if configured else None
    if roles is None or len(roles) != count:
        candidates = {tuple(r) for r in role_variants(class_name) if len(r) == count}
        roles = list(candidates.pop()) if len(candidates) == 1 else None
    return roles if roles is not None else [f"var{i}" for i in range(count)]


def _legacy_roles(class_name: str, config: dict[str, Any], names: list[str]) -> list[str]:
    roles = variable_roles(class_name, config) if class_name else None
    if roles is not None and len(roles) == len(names):
        return roles
    out: list[str] = []
    for name in names:
        variable = re.sub(r":\d+$", "", name.rpartition("/")[2])
        role = ROLE_OF_VARIABLE.get(variable, variable)
        if role in out:
            role = re.sub(r":\d+$", "", name)
        while role in out:
            role += "_"
        out.append(role)
    return out


def _layer(
    name: str,
    class_name: str,
    config: dict[str, Any],
    tensors: dict[str, Any],
    stored: dict[str, str],
    located: dict[str, str],
) -> Layer:
    kind = _KINDS.get(class_name, Kind.OTHER)
    if not class_name:
        kind = _kind_from_tensors(tensors)
    elif kind == Kind.CONV and tensors.get("weights") is not None and tensors["weights"].ndim != 4:
        kind = Kind.OTHER
    params = {
        key: value
        for key, value in config.items()
        if not isinstance(value, dict) and key not in ("name", "trainable")
    }
    if "groups" in config:
        params["group"] = config["groups"]
    input_shape = None
    shape = config_input_shape(config)
    if shape is not None and len(shape) == 4 and all(isinstance(n, int) for n in shape[1:]):
        first = config.get("data_format") == "channels_first"
        input_shape = tuple(shape[1:]) if first else (shape[3], shape[1], shape[2])
    return Layer(
        name=name,
        kind=kind,
        tensors=tensors,
        params=params,
        source_type=class_name,
        layout=CANONICAL,
        input_shape=input_shape,
        stored_names=stored,
        locations=located,
    )


def _kind_from_tensors(tensors: dict[str, Any]) -> str:
    roles = set(tensors)
    if "weights" in roles and roles <= {"weights", "biases"}:
        return {4: Kind.CONV, 2: Kind.DENSE}.get(tensors["weights"].ndim, Kind.OTHER)
    if {"moving_mean", "moving_variance"} <= roles:
        return Kind.BATCHNORM
    if roles == {"alpha"}:
        return Kind.PRELU
    return Kind.OTHER


def _unique_names(layers: list[Layer]) -> None:
    seen: set[str] = set()
    for layer in layers:
        base, n = layer.name, 1
        while layer.name in seen:
            layer.name = f"{base}_{n}"
            n += 1
        seen.add(layer.name)


def _check_kernel_rank(source: object, where: str, tensors: dict[str, Any]) -> None:
    """A kernel is at least a matrix: a 0-d or 1-d one is a damaged file, not weights."""
    kernel = tensors.get("weights")
    if kernel is not None and len(kernel.shape) < 2:
        raise FormatError(
            f"{source}: {where}: the kernel has shape {tuple(kernel.shape)}; a kernel has at "
            f"least 2 dimensions"
        )
