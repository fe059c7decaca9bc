"""The typed reports the library's verbs return; ``to_dict()`` of each is the ``--json``
document of the command (every one carries ``schema_version``, ``ok`` and ``verb``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightconv.errors import UsageError
from weightconv.formats.base import plain
from weightconv.model import Layer, WeightSet, join_tensor_name
from weightconv.model.canonical import canonical_layers

#: Bumped when a key of a ``--json`` document changes meaning or goes away.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FileRef:
    path: str
    format: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "format": self.format}


def document(verb: str, ok: bool, body: dict[str, Any]) -> dict[str, Any]:
    """A ``--json`` document: the keys every verb's document has, then `body`."""
    return {"schema_version": SCHEMA_VERSION, "ok": ok, "verb": verb, **plain(body)}


@dataclass
class ConversionReport:
    """What a conversion read, did and wrote."""

    input: FileRef
    output: FileRef
    layers: int
    tensors: int
    parameters: int
    bytes: int
    files: list[str]
    #: [{"step": "conv kernel OIHW -> HWIO", "layers": ["conv1", ...]}, ...]
    transforms: list[dict[str, Any]]
    skipped: list[str]
    channel_order: str | None
    #: The options applied, by where they went: read, write, mapping, only, skip, force.
    options: dict[str, Any]
    detail: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    verb: str = "convert"

    def to_dict(self) -> dict[str, Any]:
        return document(
            self.verb,
            True,
            {
                "input": self.input.to_dict(),
                "output": self.output.to_dict(),
                "layers": self.layers,
                "tensors": self.tensors,
                "parameters": self.parameters,
                "bytes": self.bytes,
                "files": self.files,
                "transforms": self.transforms,
                "skipped": self.skipped,
                "channel_order": self.channel_order,
                "options": self.options,
                "detail": self.detail,
                "notes": self.notes,
            },
        )


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of an inventory. `status` is ``weights`` for tensors conversions carry and
    says why for the others (``training state``, ...)."""

    name: str
    layer: str
    role: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    parameters: int
    bytes: int
    status: str = "weights"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer": self.layer,
            "role": self.role,
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "parameters": self.parameters,
            "bytes": self.bytes,
            "status": self.status,
        }


@dataclass
class Inventory:
    """Everything a weight file holds, as `inspect` lists it."""

    input: FileRef
    title: str
    detail: dict[str, Any]
    layout: str
    channel_order: str | None
    tensors: list[TensorEntry]
    layers: list[dict[str, Any]]
    notes: list[str]

    @property
    def totals(self) -> dict[str, int]:
        carried = [t for t in self.tensors if t.status == "weights"]
        return {
            "layers": len({t.layer for t in carried}),
            "tensors": len(self.tensors),
            "weights": len(carried),
            "set_aside": len(self.tensors) - len(carried),
            "parameters": sum(t.parameters for t in self.tensors),
            "bytes": sum(t.bytes for t in self.tensors),
        }

    def to_dict(self) -> dict[str, Any]:
        return document(
            "inspect",
            True,
            {
                "input": self.input.to_dict(),
                "title": self.title,
                "detail": self.detail,
                "layout": self.layout,
                "channel_order": self.channel_order,
                "tensors": [t.to_dict() for t in self.tensors],
                "layers": self.layers,
                "totals": self.totals,
                "notes": self.notes,
            },
        )


def inventory_of(weights: WeightSet, ref: FileRef, title: str, canonical: bool) -> Inventory:
    layers = list(canonical_layers(weights)) if canonical else weights.weighted_layers()
    rows = [
        TensorEntry(
            name=layer.location(role),
            layer=layer.name,
            role=role,
            kind=layer.kind,
            shape=tuple(int(n) for n in tensor.shape),
            dtype=str(np.dtype(tensor.dtype).newbyteorder("=")),
            parameters=int(tensor.size),
            bytes=int(tensor.nbytes),
        )
        for layer in layers
        for role, tensor in layer.tensors.items()
    ]
    for aside in weights.set_aside:
        count = 1
        for n in aside.shape:
            count *= n
        rows.append(
            TensorEntry(
                name=aside.name,
                layer="",
                role="",
                kind="",
                shape=aside.shape,
                dtype=aside.dtype,
                parameters=count,
                bytes=aside.nbytes,
                status=aside.reason,
            )
        )
    layouts = {layer.layout for layer in weights.weighted_layers()}
    layout = (
        "canonical"
        if canonical
        else (layouts.pop() if len(layouts) == 1 else "mixed" if layouts else "none")
    )
    return Inventory(
        input=ref,
        title=title,
        detail=dict(weights.source.detail) if weights.source else {},
        layout=layout,
        channel_order=weights.channel_order,
        tensors=rows,
        layers=[_layer_summary(layer) for layer in weights.layers],
        notes=list(weights.notes),
    )


def _layer_summary(layer: Layer) -> dict[str, Any]:
    return {
        "name": layer.name,
        "kind": layer.kind,
        "type": layer.source_type,
        "params": dict(layer.params),
        "input_shape": list(layer.input_shape) if layer.input_shape else None,
        "tensors": list(layer.tensors),
    }


@dataclass
class TensorReport:
    """One tensor of a file: where it is, its statistics, and (read on demand) its values."""

    input: FileRef
    name: str
    values: np.ndarray = field(repr=False)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, with_values: bool = False) -> dict[str, Any]:
        tensor = dict(self.stats)
        if with_values:
            tensor["values"] = self.values.tolist()
        return document("inspect", True, {"input": self.input.to_dict(), "tensor": tensor})


def tensor_report(layers: list[Layer], wanted: str, ref: FileRef) -> TensorReport:
    """The tensor `wanted` names (its location, its name, ``layer/role``, or a layer holding
    one tensor), with summary statistics; a name that matches nothing is a UsageError."""
    found = None
    candidates = []
    for layer in layers:
        for role, tensor in layer.tensors.items():
            name = layer.location(role)
            candidates.append(name)
            alone = wanted == layer.name and len(layer.tensors) == 1
            if wanted in (name, layer.tensor_name(role), f"{layer.name}/{role}") or alone:
                found = (name, tensor)
    if found is None:
        roles = [c for c in candidates if c.startswith(wanted + "/")]
        more = " ..." if len(candidates) > 12 else ""
        hint = (
            f"; it has {', '.join(roles)}"
            if roles
            else (f"; tensors: {', '.join(candidates[:12])}{more}")
        )
        raise UsageError(f"{ref.path}: no tensor {wanted!r}{hint}")
    name, tensor = found
    values = np.asarray(tensor)
    stats: dict[str, Any] = {
        "name": name,
        "shape": list(values.shape),
        "dtype": str(values.dtype.newbyteorder("=")),
        "parameters": int(values.size),
    }
    if values.size and np.issubdtype(values.dtype, np.number):
        as_float = values.astype(np.float64)
        finite = as_float[np.isfinite(as_float)]
        stats.update(
            min=float(finite.min()) if finite.size else None,
            max=float(finite.max()) if finite.size else None,
            mean=float(finite.mean()) if finite.size else None,
            std=float(finite.std()) if finite.size else None,
            zeros=int(np.count_nonzero(values == 0)),
            nan=int(np.count_nonzero(np.isnan(as_float))),
            inf=int(np.count_nonzero(np.isinf(as_float))),
        )
    return TensorReport(ref, name, values, stats)


DIFF_STATUSES = ("equal", "close", "differs", "shape mismatch", "only in a", "only in b")


@dataclass
class DiffReport:
    """Two files compared tensor by tensor, each in the canonical layout."""

    a: FileRef
    b: FileRef
    atol: float
    rtol: float
    #: One row per tensor name: {"name", "status", "shape_a", "shape_b", "max_abs", ...}.
    tensors: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {
            status: sum(row["status"] == status for row in self.tensors) for status in DIFF_STATUSES
        }

    @property
    def equal(self) -> bool:
        """True when every tensor is equal, or close within the tolerances."""
        return all(row["status"] in ("equal", "close") for row in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        return document(
            "diff",
            self.equal,
            {
                "inputs": [self.a.to_dict(), self.b.to_dict()],
                "atol": self.atol,
                "rtol": self.rtol,
                "tensors": self.tensors,
                "counts": self.counts,
                "notes": self.notes,
            },
        )


def compare_tensors(a: WeightSet, b: WeightSet, atol: float, rtol: float) -> list[dict[str, Any]]:
    """Rows for every tensor of either side, keyed by layer and canonical role, so that a
    Keras ``conv1/kernel`` meets a ``conv1/weights``."""
    left = _by_name(a)
    right = _by_name(b)
    return [
        _compare(name, left.get(name), right.get(name), atol, rtol)
        for name in [*left, *(n for n in right if n not in left)]
    ]


def _by_name(weights: WeightSet) -> dict[str, Any]:
    return {
        join_tensor_name(layer.name, role): tensor
        for layer in weights.layers
        for role, tensor in layer.tensors.items()
    }


_BLOCK = 1 << 22  # values compared at a time, which bounds the memory


def _compare(name: str, a: Any, b: Any, atol: float, rtol: float) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name}
    if a is None or b is None:
        row["status"] = "only in b" if a is None else "only in a"
        return row
    row.update(
        shape_a=list(a.shape), shape_b=list(b.shape), dtype_a=str(a.dtype), dtype_b=str(b.dtype)
    )
    if tuple(a.shape) != tuple(b.shape):
        row["status"] = "shape mismatch"
        return row
    left, right = np.asarray(a), np.asarray(b)
    if left.dtype == object or right.dtype == object:
        same = left.dtype == right.dtype and left.tolist() == right.tolist()
        row.update(status="equal" if same else "differs", max_abs=None, max_rel=None)
        return row
    max_abs = max_rel = 0.0
    bitwise = left.dtype == right.dtype
    within = True
    flat_a, flat_b = left.reshape(-1), right.reshape(-1)
    complex_values = left.dtype.kind == "c" or right.dtype.kind == "c"
    wide = np.complex128 if complex_values else np.float64
    for start in range(0, flat_a.size, _BLOCK):
        x = flat_a[start : start + _BLOCK]
        y = flat_b[start : start + _BLOCK]
        if bitwise and not np.array_equal(x.view(np.uint8), y.view(np.uint8)):
            bitwise = False
        xf, yf = x.astype(wide), y.astype(wide)
        both_nan = np.isnan(xf) & np.isnan(yf)
        delta = np.where(both_nan | (xf == yf), 0.0, np.abs(xf - yf))
        if delta.size:
            max_abs = max(max_abs, float(np.nanmax(np.where(np.isnan(delta), np.inf, delta))))
            scale = np.abs(yf)
            rel = np.divide(delta, scale, out=np.zeros_like(delta), where=scale > 0)
            rel = np.where((scale == 0) & (delta > 0), np.inf, rel)
            max_rel = max(max_rel, float(rel.max()))
            within = within and bool(np.all(delta <= atol + rtol * scale))
    row.update(
        max_abs=max_abs,
        max_rel=max_rel,
        status="equal" if bitwise or max_abs == 0 else "close" if within else "differs",
    )
    return row
