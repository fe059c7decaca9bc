"""From a Caffe file's raw layers to a WeightSet: blobs paired with layer definitions (the
prototxt's when one is given), named by role, checked against the definition, and the
input of each convolution and fully-connected layer worked out, or marked unknown.

An InnerProduct that reads a spatial blob stores its inputs flattened C, H, W; the
canonical layout wants them H, W, C, which takes that blob's C, H and W. They come from
the blob shapes the net implies (`shapes.infer_blob_shapes`). Where they cannot be worked
out, the layer is marked ``follows_spatial`` unless its input is provably flat
(`shapes.reads_flat_input`), and converting it is refused rather than guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightconv.errors import FormatError, ShapeError
from weightconv.formats.caffe import shapes as caffe_shapes
from weightconv.formats.caffe.net import LayerDef, NetDef
from weightconv.model import CAFFE, Kind, Layer, Provenance, Tensor, WeightSet

ROLES = {
    Kind.CONV: ("weights", "biases"),
    Kind.DECONV: ("weights", "biases"),
    Kind.DENSE: ("weights", "biases"),
    Kind.PRELU: ("alpha",),
    Kind.BATCHNORM: ("mean", "variance", "scale_factor"),
    Kind.SCALE: ("scale", "offset"),
    Kind.BIAS: ("biases",),
}

_VECTOR_ROLES = ("biases", "alpha", "mean", "variance", "scale_factor", "scale", "offset")
_DEFINITION = "caffemodel/prototxt mismatch: the net definition implies"


@dataclass
class RawLayer:
    """A layer as the file holds it: its definition and its blobs (Caffe layout)."""

    definition: LayerDef
    blobs: list[np.ndarray] = field(default_factory=list)
    #: Where the layer's bytes are in the file, for releasing its pages once written.
    span: tuple[int, int] | None = None


def assemble(
    source: Path,
    format_name: str,
    raw_layers: list[RawLayer],
    model_net: NetDef | None,
    deploy_net: NetDef | None,
    input_shape: tuple[int, ...] | None,
    notes: list[str],
    detail: dict[str, Any],
    *,
    in_net_order: bool = True,
) -> WeightSet:
    """Pair blobs with layer definitions (the prototxt's when given) into a WeightSet.

    `in_net_order` says whether `model_net` lists its layers in the net's order (a
    .caffemodel does; an HDF5 snapshot's are alphabetical), which is what lets file order
    stand in for missing bottom/top links.
    """
    blobs_by_name: dict[str, list[np.ndarray]] = {}
    model_defs: dict[str, LayerDef] = {}
    for raw in raw_layers:
        if raw.blobs and raw.definition.name not in blobs_by_name:
            blobs_by_name[raw.definition.name] = raw.blobs
        model_defs.setdefault(raw.definition.name, raw.definition)
    net = deploy_net or model_net
    if net is None:
        raise FormatError(f"{source}: no layer definitions")
    if deploy_net is not None and blobs_by_name:
        described = {layer.name for layer in deploy_net.layers}
        if not described & set(blobs_by_name):
            sample = ", ".join(list(blobs_by_name)[:4])
            raise FormatError(
                f"{source}: the prototxt describes none of its weighted layers "
                f"({sample}, ...): caffemodel and prototxt do not match"
            )
    ws = WeightSet(source=Provenance(str(source), format_name, detail))
    for message in notes:
        ws.note(message)
    inputs = _LayerInputs(net, input_shape, blobs_by_name, deploy_net is not None or in_net_order)
    if inputs.chained:
        ws.note(
            f"{source.name}: no layer names the blob it reads; the layers are read as a chain "
            f"in file order from input_shape={_dims(input_shape, ',')}, checked against every "
            f"weighted layer's blobs"
        )
    placed: set[str] = set()
    for position, definition in enumerate(net.layers):
        if definition.name in placed:
            continue
        placed.add(definition.name)
        blobs = blobs_by_name.get(definition.name, [])
        expects_weights = definition.kind in (Kind.CONV, Kind.DENSE, Kind.DECONV)
        if not blobs and expects_weights and deploy_net is not None and model_net is not None:
            ws.note(
                f"layer {definition.name!r} ({definition.type}) is in the prototxt "
                f"but the caffemodel holds no weights for it"
            )
        ws.layers.append(inputs.place(_make_layer(definition, blobs, ws), position, source))
    if deploy_net is not None:
        unplaced = {name: blobs for name, blobs in blobs_by_name.items() if name not in placed}
        model = model_net or net
        extras = _LayerInputs(model, None, blobs_by_name, in_net_order, infer=False)
        positions = {id(definition): index for index, definition in enumerate(model.layers)}
        for name, blobs in unplaced.items():
            definition = model_defs.get(name, LayerDef(name=name, type="Unknown"))
            ws.note(
                f"layer {name!r} holds weights but is not in the prototxt; "
                f"kept with its caffemodel definition"
            )
            layer = _make_layer(definition, blobs, ws)
            ws.layers.append(extras.place(layer, positions.get(id(definition)), source))
    ws.channel_order = _channel_order(ws)
    return ws


class _LayerInputs:
    """The input of each layer of `net`: the shape of the blob it reads when the net's
    links (or, for a net without links read with `input_shape`, a chain in file order)
    give it; else, for an InnerProduct, whether that input is provably flat."""

    def __init__(
        self,
        net: NetDef,
        input_shape: tuple[int, ...] | None,
        blobs_by_name: dict[str, list[np.ndarray]],
        in_order: bool,
        infer: bool = True,
    ) -> None:
        self.net = net
        self.in_order = in_order
        self.chained = bool(infer and in_order and input_shape and not caffe_shapes.has_links(net))
        self.basis, self.hint = _DEFINITION, ""
        self.linked = net
        if self.chained and input_shape:
            self.linked = caffe_shapes.chained_in_file_order(net, input_shape)
            self.basis = (
                f"read as a chain in file order from input_shape={_dims(input_shape, ',')} "
                f"(the file has no bottom/top links), its layers imply"
            )
            self.hint = "; the file may leave out layers (pooling): pass its prototxt=P"
        self.shapes = caffe_shapes.infer_blob_shapes(self.linked, input_shape) if infer else {}
        self.dense_outputs: dict[str, int] = {}
        for definition in net.layers:
            if definition.kind != Kind.DENSE:
                continue
            blobs = blobs_by_name.get(definition.name)
            sizes = _dense_sizes(definition.params, blobs[0]) if blobs else None
            outputs = sizes[0] if sizes else definition.params.get("num_output")
            if outputs:
                self.dense_outputs.setdefault(definition.name, int(outputs))

    def place(self, layer: Layer, position: int | None, source: Path) -> Layer:
        """Set `layer`'s input shape, or mark an InnerProduct whose input may be spatial;
        then check its blobs against what the net implies."""
        linked = self.linked.layers[position] if position is not None else None
        bottom = linked.bottoms[0] if linked is not None and linked.bottoms else None
        bottom_shape = self.shapes.get(bottom) if bottom is not None else None
        if layer.kind == Kind.DENSE and bottom is not None and position is not None:
            # Caffe's Flatten keeps C,H,W order, so an InnerProduct after one reads the spatial
            # blob as if directly: its rows need the same C,H,W -> H,W,C reorder.
            unflattened = self._before_flatten(bottom, position)
            if unflattened is not None:
                bottom_shape = unflattened
        if layer.kind in (Kind.CONV, Kind.DECONV, Kind.DENSE) and bottom_shape is not None:
            layer.input_shape = tuple(bottom_shape[1:])
        elif layer.kind == Kind.DENSE:
            weights = layer.tensors.get("weights")
            sizes = _dense_sizes(layer.params, weights) if weights is not None else None
            flat = (
                position is not None
                and sizes is not None
                and caffe_shapes.reads_flat_input(
                    self.net, position, sizes[1], self.dense_outputs, self.in_order
                )
            )
            layer.params["follows_spatial"] = bool(layer.params.get("follows_spatial")) or not flat
        _check_against_definition(layer, source, self.basis, self.hint)
        return layer

    def _before_flatten(self, blob: str, position: int) -> tuple[int, ...] | None:
        """The shape of the blob a whole-blob Flatten made `blob` from, if one did."""
        for earlier in reversed(self.linked.layers[:position]):
            if blob not in earlier.tops:
                continue
            if blob in earlier.bottoms:  # in place (ReLU, Dropout, ...): look further back
                continue
            whole = earlier.params.get("axis", 1) == 1 and earlier.params.get("end_axis", -1) == -1
            if earlier.type == "Flatten" and whole and earlier.bottoms:
                shape = self.shapes.get(earlier.bottoms[0])
                return shape if shape is not None and len(shape) == 4 else None
            return None
        return None


def _make_layer(definition: LayerDef, blobs: list[np.ndarray], ws: WeightSet) -> Layer:
    kind = definition.kind
    roles = ROLES.get(kind, ())
    if len(blobs) > len(roles):
        extra = [f"blob{i}" for i in range(len(roles), len(blobs))]
        roles = (*roles, *extra)
        if kind == Kind.OTHER or len(ROLES.get(kind, ())) < len(blobs):
            ws.note(
                f"layer {definition.name!r} ({definition.type}): "
                f"{len(extra)} blob(s) with no known role kept as {', '.join(extra)}"
            )
    tensors: dict[str, Tensor] = {
        role: _normalise_blob(kind, role, blob) for role, blob in zip(roles, blobs, strict=False)
    }
    return Layer(
        name=definition.name,
        kind=kind,
        tensors=tensors,
        params=dict(definition.params),
        source_type=definition.type,
        layout=CAFFE,
        bottoms=tuple(definition.bottoms),
        tops=tuple(definition.tops),
    )


def _normalise_blob(kind: str, role: str, blob: np.ndarray) -> np.ndarray:
    """Drop the leading 1s of legacy 4-D blobs: V1 files store (1, 1, out, in) dense weights
    and (1, 1, 1, n) bias vectors."""
    if (
        kind == Kind.DENSE
        and role == "weights"
        and blob.ndim > 2
        and all(d == 1 for d in blob.shape[:-2])
    ):
        return blob.reshape(blob.shape[-2:])
    if role in _VECTOR_ROLES and blob.ndim > 1 and sum(d != 1 for d in blob.shape) <= 1:
        return blob.reshape(-1)
    return blob


def _dense_sizes(params: dict[str, Any], weights: Any) -> tuple[int, int] | None:
    """(outputs, inputs) of an InnerProduct's weight blob, legacy 4-D or not."""
    shape = tuple(int(d) for d in weights.shape)
    if len(shape) < 2 or any(d != 1 for d in shape[:-2]):
        return None
    rows, columns = shape[-2:]
    return (columns, rows) if params.get("transpose") else (rows, columns)


def _check_against_definition(layer: Layer, source: Path, basis: str, hint: str) -> None:
    weights = layer.tensors.get("weights")
    if weights is None:
        return
    p = layer.params
    where = f"{source}: layer {layer.name!r}"
    if layer.kind == Kind.CONV:
        if weights.ndim != 4:
            raise ShapeError(
                f"{where}: convolution weights must be 4-D, the blob is {_dims(weights.shape)}"
            )
        out, per_group, kh, kw = weights.shape
        expected_out = p.get("num_output") or out
        group = p.get("group") or 1
        kernel = tuple(p.get("kernel") or (kh, kw))
        in_channels = layer.input_shape[0] if layer.input_shape else per_group * group
        expected = (expected_out, in_channels // group, *kernel)
        if weights.shape != expected or in_channels % group:
            raise ShapeError(
                f"{where}: {basis} weights {_dims(expected)} (num_output {expected_out}, "
                f"{in_channels} input channels, group {group}, kernel "
                f"{kernel[0]}x{kernel[1]}), the caffemodel blob is "
                f"{_dims(weights.shape)}{hint}"
            )
    elif layer.kind == Kind.DENSE:
        if weights.ndim != 2:
            raise ShapeError(
                f"{where}: inner-product weights must be 2-D, the blob is {_dims(weights.shape)}"
            )
        outputs, inputs = weights.shape[::-1] if p.get("transpose") else weights.shape
        expected_out = p.get("num_output") or outputs
        expected_in = math.prod(layer.input_shape) if layer.input_shape else inputs
        if (outputs, inputs) != (expected_out, expected_in):
            blob_note = f" ({_dims(layer.input_shape)})" if layer.input_shape else ""
            raise ShapeError(
                f"{where}: {basis} {expected_out} outputs x {expected_in} inputs{blob_note}, "
                f"the caffemodel blob is {_dims(weights.shape)}{hint}"
            )
    biases = layer.tensors.get("biases")
    if biases is not None and layer.kind in (Kind.CONV, Kind.DENSE):
        outputs = (
            weights.shape[0]
            if layer.kind == Kind.CONV or not p.get("transpose")
            else weights.shape[1]
        )
        if biases.shape != (outputs,):
            raise ShapeError(
                f"{where}: biases are {_dims(biases.shape)} but the layer has {outputs} outputs"
            )


def _dims(shape: tuple[int, ...] | None, sep: str = "x") -> str:
    return sep.join(str(d) for d in shape) if shape else "()"


def _channel_order(ws: WeightSet) -> str | None:
    for layer in ws.layers:
        if layer.kind == Kind.CONV and "weights" in layer.tensors:
            if layer.tensors["weights"].shape[1] == 3 and (layer.params.get("group") or 1) == 1:
                ws.note(
                    "channel order of the first layer taken as BGR (Caffe's convention "
                    "for 3-channel image models)"
                )
                return "bgr"
            return None
    return None
