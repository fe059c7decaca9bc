"""TensorFlow-1 checkpoints as a weightconv format, read and written without TensorFlow.

The module the registry's ``ckpt`` row names: `claims` and `sniff` recognise a checkpoint,
`read` lists its tensors (V2 bundles through `bundle`, V1 files through `v1`) and groups them
into layers, `write` and `check_output` come from `writer`. Reading parses only the index:
tensors are `LazyTensor`s whose bytes are mapped and checked when used.

Example::

    ws = read("model.ckpt-1000")              # or the .index, a .data file, the folder
    write(ws, "out/model.ckpt")               # out/model.ckpt.index, .data-00000-of-00001
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from weightconv.errors import FormatError, UsageError
from weightconv.formats.ckpt import dtypes as tf_types
from weightconv.formats.ckpt import v1
from weightconv.formats.ckpt.bundle import BundleReader
from weightconv.formats.ckpt.naming import INDEX_SUFFIX, Location, locate, take_notes
from weightconv.formats.ckpt.slices import TensorInfo
from weightconv.formats.ckpt.writer import check_output, write
from weightconv.model import (
    CANONICAL,
    CheckedTensor,
    Kind,
    Layer,
    LazyTensor,
    Provenance,
    SetAside,
    WeightSet,
    join_tensor_name,
    split_tensor_name,
)

__all__ = ["check_output", "claims", "list_tensors", "read", "sniff", "write"]

OBJECT_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
#: Why a tensor is set aside rather than made part of a layer.
TRAINING_STATE = "training state"
STRINGS = "strings, not weights"

_ROLE_ALIASES = {
    "kernel": "weights",
    "w": "weights",
    "W": "weights",
    "bias": "biases",
    "b": "biases",
}
_TRAINING_STATE_NAMES = {
    "global_step",
    "beta1_power",
    "beta2_power",
    "save_counter",
    "_CHECKPOINTABLE_OBJECT_GRAPH",
    "iter",
    "iterations",
}
_OPTIMIZER_SLOTS = re.compile(
    r"/(Adam|Adam_\d+|Momentum|RMSProp|RMSProp_\d+|Adagrad|Adadelta|Adadelta_\d+|Ftrl|Ftrl_\d+|"
    r"ExponentialMovingAverage|Adamax|Adamax_\d+|Nadam|Nadam_\d+)$"
)


def claims(path: Path) -> bool:
    """True when `path` names a checkpoint (by location, not by its first bytes)."""
    return locate(path) is not None


def sniff(head: bytes, path: Path) -> bool:
    """Never: a checkpoint is known by where it is (`claims`), its index by its last bytes."""
    return False


def list_tensors(path: str | os.PathLike[str]) -> tuple[Location, list[TensorInfo], dict[str, Any]]:
    """The tensors of the checkpoint at `path` (lazy), in key order, and facts about the file."""
    where = locate(path)
    if where is None:
        raise FormatError(
            f"{path}: not a TensorFlow checkpoint (no {path}{INDEX_SUFFIX}, no "
            f"checkpoint state file, not a V1 checkpoint file)"
        )
    if where.version == 1:
        infos, detail = v1.list_tensors(where.path)
        return where, infos, detail
    reader = BundleReader(where.path)
    detail = {
        "version": "V2 (TensorBundle)",
        "prefix": str(where.path),
        "shards": reader.num_shards,
        "endianness": "big" if reader.big_endian else "little",
    }
    return where, reader.tensors(), detail


def read(path: str | os.PathLike[str], *, flat: bool = False, strip_scope: str = "") -> WeightSet:
    """Read a checkpoint into a WeightSet in the canonical (TensorFlow) layout.

    Tensors named ``layer/role`` group into layers (``kernel``/``bias`` become
    ``weights``/``biases``; object-based names drop ``/.ATTRIBUTES/VARIABLE_VALUE``).
    Training state (``global_step``, optimizer slots, the object graph) is not made part of
    any layer: it is listed in ``set_aside`` with a note, unless `flat`, which keeps every
    tensor as its own layer under its full name (string tensors are then read, and so
    CRC-checked, at once: writers that cannot store strings skip them). `strip_scope`
    removes a leading scope such as ``"vgg_16/"``.

    Example::

        ws = read("model.ckpt-1000", strip_scope="vgg_16/")
        [aside.name for aside in ws.set_aside]   # ['global_step', 'conv1/weights/Adam', ...]
    """
    where, infos, detail = list_tensors(path)
    # Layers in the order their data was written (the network's order for files we write;
    # name order for TensorFlow's Saver, which sorts), not the index's name order.
    infos = sorted(infos, key=lambda info: info.position)
    weights = WeightSet(source=Provenance(path=str(where.path), format="ckpt", detail=detail))
    weights.notes.extend(take_notes(Path(where.path)))  # an interrupted commit recovered
    layers: dict[str, Layer] = {}
    unscoped: list[str] = []
    for info in infos:
        name = info.name
        if strip_scope:
            if name.startswith(strip_scope):
                name = name[len(strip_scope) :]
            else:
                unscoped.append(info.name)
        tensor: LazyTensor
        if info.deferred is not None:
            tensor = CheckedTensor(
                info.shape, _lazy_dtype(info), info.load, info.release, info.deferred
            )
        else:
            tensor = LazyTensor(info.shape, _lazy_dtype(info), info.load, info.release)
        if flat and info.dtype == tf_types.STRING:
            # A writer that cannot store strings skips them unread but counts them; read
            # (and so CRC-check) them here, so a corrupt one is refused, not counted.
            info.load()
        if flat:
            layers[name] = Layer(
                name=name,
                tensors={"value": tensor},
                source_type="tensor",
                layout=CANONICAL,
                stored_names={"value": name},
            )
            continue
        reason = _set_aside_reason(info)
        if reason is not None:
            weights.set_aside.append(
                SetAside(info.name, info.shape, info.dtype_name, info.nbytes, reason)
            )
            continue
        base = name.removesuffix(OBJECT_SUFFIX)
        layer_name, stored_role = split_tensor_name(base)
        role = _ROLE_ALIASES.get(stored_role, stored_role)
        layer = layers.setdefault(
            layer_name, Layer(name=layer_name, layout=CANONICAL, source_type="variables")
        )
        if role in layer.tensors:
            role = stored_role
        layer.tensors[role] = tensor
        if name != join_tensor_name(layer_name, role):
            layer.stored_names[role] = name
    for layer in layers.values():
        layer.kind = _guess_kind(layer)
    weights.layers = list(layers.values())
    weights.release = weights.release_lazy_tensors
    for reason, what in [(TRAINING_STATE, "training-state"), (STRINGS, "string")]:
        skipped = [aside.name for aside in weights.set_aside if aside.reason == reason]
        if skipped:
            weights.note(
                f"left out {len(skipped)} {what} tensor(s) "
                f"({', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''}); "
                f"--flat keeps every tensor"
            )
    if strip_scope and len(unscoped) == len(infos):
        raise UsageError(
            f"{path}: strip_scope {strip_scope!r}: no tensor is under that scope "
            f"(tensors: {', '.join(i.name for i in infos[:6])})"
        )
    if unscoped:
        weights.note(
            f"{len(unscoped)} tensor(s) are outside scope {strip_scope!r} and keep "
            f"their names ({', '.join(unscoped[:4])})"
        )
    return weights


def _lazy_dtype(info: TensorInfo) -> np.dtype[Any]:
    if info.dtype == tf_types.STRING:
        return np.dtype(object)
    if info.dtype == tf_types.BFLOAT16:
        return tf_types.bfloat16()
    entry = tf_types.DTYPES.get(info.dtype)
    return np.dtype(entry[1]) if entry and entry[1] else np.dtype("V1")


def _set_aside_reason(info: TensorInfo) -> str | None:
    """Why `info` is no layer's tensor (step counters, optimizer slots, the object graph,
    any string tensor), or None when it is one."""
    name = info.name
    leaf = name.removesuffix(OBJECT_SUFFIX)
    if (
        leaf in _TRAINING_STATE_NAMES
        or ".OPTIMIZER_SLOT" in name
        or leaf.startswith("optimizer/")
        or _OPTIMIZER_SLOTS.search(leaf) is not None
    ):
        return TRAINING_STATE
    if info.dtype == tf_types.STRING:
        return STRINGS
    return None


def _guess_kind(layer: Layer) -> str:
    roles = set(layer.tensors)
    weights = layer.tensors.get("weights")
    if weights is not None and weights.ndim == 4:
        return Kind.CONV
    if weights is not None and weights.ndim == 2:
        return Kind.DENSE
    if roles & {"moving_mean", "moving_variance"}:
        return Kind.BATCHNORM
    if "depthwise_kernel" in roles:
        return Kind.CONV
    return Kind.OTHER
