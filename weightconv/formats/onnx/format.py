"""ONNX models read for their weights and written into a given model, through the ``onnx``
package (the reference schema).

Reading parses the model through protobuf without its large initializers' bytes, which stay
in the memory-mapped file (`wire`), reads each initializer (`tensors`: raw, typed or external,
the large raw and the external ones as views of mapped files) and gives each the role the
node consuming it says (`graph`). A template to write into is parsed the same way, without
its large or external data.

Writing (`write`) needs the model to write into (``model=template.onnx``): the graph is kept
as it is and the initializers that hold weights are replaced, each by name and shape, our
layers paired with the template's in order (`weightconv.formats.torch.template`): a weight the
template has and ours lack, or a shape that does not fit, is refused naming both. The other
initializers (shape constants and such) are kept. The data goes in the model or, past
protobuf's 2 GB or when asked, in a data file beside it; either way a tensor at a time
(`inline`, `output`). The output passes ``onnx.checker.check_model``.

Example::

    ws = read("mnist.onnx")                       # conv OIHW, Gemm weights as stored
    write(ws, "out.onnx", model="template.onnx")  # the template's graph, our weights
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from weightconv._util.files import check_writable, open_input, publish, remove_files
from weightconv._util.progress import Progress
from weightconv.errors import FormatError, OutputExistsError, UsageError
from weightconv.formats.base import WriteResult
from weightconv.formats.onnx import EXTERNAL_DATA, inline, output
from weightconv.formats.onnx.graph import SMALL_BYTES, inferred_shapes, layers_of
from weightconv.formats.onnx.tensors import (
    DTYPES,
    ExternalFiles,
    dtype_name,
    external_files,
    refuse_other_external,
    tensor_of,
)
from weightconv.formats.onnx.wire import hollowed
from weightconv.formats.torch.names import torch_key, torch_layers
from weightconv.formats.torch.template import WEIGHT_KINDS, Pair, Slot, pair
from weightconv.model import VALUE_ROLE, Kind, LazyTensor, Provenance, SetAside, WeightSet
from weightconv.model.caffe_layout import steps

#: ModelProto's field tags (number << 3 | wire type) that may follow ir_version.
_MODEL_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}


def sniff(head: bytes, path: Path) -> bool:
    """A ModelProto: ir_version (field 1, a small varint) first, then one of its fields."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in _MODEL_TAGS


def load_model(
    path: str | os.PathLike[str],
) -> tuple[onnx.ModelProto, ExternalFiles, dict[str, tuple[int, int]]]:
    """The model parsed without its large initializers' bytes (`wire`), the files its data is
    mapped from, and where each of those bytes lies in the model's file; one clear line when
    it is not an ONNX model."""
    target = Path(path)
    files = ExternalFiles(target)
    with open_input(target) as handle:
        if not handle.read(1):
            raise FormatError(f"{target}: file is empty")
    try:
        hollow, spans = hollowed(memoryview(files.mapping(target)), DTYPES)
        model = onnx.ModelProto.FromString(hollow)
    except Exception as exc:  # WireError, DecodeError, or what a damaged message makes onnx raise
        raise FormatError(f"{target}: not a readable ONNX model ({_one_line(exc)})") from None
    if model.ir_version < 1 or not model.HasField("graph"):
        raise FormatError(
            f"{target}: not an ONNX model (ir_version {model.ir_version}, "
            f"{'a' if model.HasField('graph') else 'no'} graph)"
        )
    return model, files, spans


def read(path: str | os.PathLike[str], *, dense_inputs: Any = None) -> WeightSet:
    """Read the initializers of an ONNX model as layers in Caffe's (PyTorch's) layout, the
    large ones as views of the mapped model."""
    target = Path(path)
    model, files, spans = load_model(target)
    weights, _ = _weights_of(model, target, dense_inputs, files, spans)
    return weights


def _weights_of(
    model: onnx.ModelProto,
    target: Path,
    dense_inputs: Any,
    files: ExternalFiles,
    spans: Mapping[str, tuple[int, int]],
) -> tuple[WeightSet, ExternalFiles]:
    tensors: dict[str, LazyTensor] = {}
    set_aside = []
    for initializer in model.graph.initializer:
        if initializer.name in tensors or not initializer.name:
            raise FormatError(
                f"{target}: two initializers are named {initializer.name!r}"
                if initializer.name
                else f"{target}: an initializer without a name"
            )
        tensor = tensor_of(initializer, files, spans.get(initializer.name))
        if isinstance(tensor, str):
            dims = tuple(int(n) for n in initializer.dims)
            set_aside.append(
                SetAside(initializer.name, dims, dtype_name(initializer.data_type), 0, tensor)
            )
            continue
        tensors[initializer.name] = tensor
    if not tensors and not set_aside:
        raise FormatError(
            f"{target}: the model holds no initializers (its weights may be Constant nodes, "
            f"which are not read here)"
        )
    graph = layers_of(
        model.graph, tensors, inferred_shapes(model), dense_inputs=dense_inputs, where=str(target)
    )
    weights = WeightSet(
        layers=graph.layers,
        source=Provenance(path=str(target), format="onnx", detail=_detail(model)),
        set_aside=set_aside,
    )
    for note in graph.notes:
        weights.note(note)
    if set_aside:
        weights.note(
            f"initializers not read: {', '.join(f'{s.name} ({s.reason})' for s in set_aside[:6])}"
        )
    if len(model.graph.sparse_initializer):
        weights.note(f"{len(model.graph.sparse_initializer)} sparse initializers not read")
    return weights, files


def _detail(model: onnx.ModelProto) -> dict[str, Any]:
    return {
        "ir_version": int(model.ir_version),
        "opsets": {entry.domain or "ai.onnx": int(entry.version) for entry in model.opset_import},
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p),
        "graph": model.graph.name,
        "nodes": len(model.graph.node),
    }


def template_slots(weights: WeightSet) -> list[Slot]:
    """The weight slots of an ONNX model read by `read`: the initializers of its layers."""
    slots = []
    for layer in weights.weighted_layers():
        if layer.kind not in WEIGHT_KINDS or VALUE_ROLE in layer.tensors:
            continue
        for role, tensor in layer.tensors.items():
            transposed = (
                role == "weights" and layer.kind == Kind.DENSE and layer.params.get("transpose")
            )
            slots.append(
                Slot(
                    name=layer.location(role),
                    layer=layer.name,
                    role=role,
                    shape=tuple(int(n) for n in tensor.shape),
                    dtype=str(tensor.dtype),
                    transposed=bool(transposed),
                )
            )
    return slots


def read_template(path: str | os.PathLike[str]) -> list[Slot]:
    """The weight slots of the ONNX model at `path`."""
    target = Path(path)
    model, files, spans = load_model(target)
    weights, _ = _weights_of(model, target, None, files, spans)
    return template_slots(weights)


# Writing ---------------------------------------------------------------------------------------


def check_output(path: str | os.PathLike[str], force: bool) -> None:
    """Raise unless `path` may be written: without `force` neither it nor its data file
    ``NAME.data`` may exist (a model written inline with `force` removes that file)."""
    target = check_writable(path, force)
    data = output.companion(target)
    if data.exists() and not force:
        raise OutputExistsError(
            f"{data}: exists (the external data file of {target.name}); pass force=True "
            f"to overwrite it"
        )


def write(
    weights: WeightSet,
    path: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    external_data: str = "auto",
    external_data_file: str | None = None,
    torch_dense_inputs: Mapping[str, tuple[int, ...]] | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> WriteResult:
    """Write `weights` into a copy of the ONNX model `model`: its graph, our initializers.

    Their data goes in the model, or in a data file beside it (`external_data_file`, default
    ``NAME.data``): ``external_data="auto"`` when the model would pass protobuf's 2 GB,
    ``"always"``, or ``"never"`` (a model over the limit refused); naming the data file
    asks for it. In a data file go all our weights and the template's other initializers of
    1 kB or more, one at a time.

    Example::

        write(ws, "big.onnx", model="exported.onnx", external_data="always")
        onnx.load("big.onnx")   # its initializers read from big.onnx.data
    """
    where = os.fspath(path)
    if model is None:
        raise UsageError(
            f"{where}: writing ONNX needs the model to put the weights in: give "
            f"model=TEMPLATE.onnx (its graph is kept, its weight initializers replaced)"
        )
    if external_data not in EXTERNAL_DATA:
        raise UsageError(
            f"the onnx writer: option external_data must be one of {', '.join(EXTERNAL_DATA)}, "
            f"got {external_data!r}"
        )
    target, template = Path(path), Path(model)
    data_path = output.data_path(target, external_data, external_data_file)
    check_output(target, force)
    if external_data_file is not None:
        check_writable(data_path, force)
    proto, files, spans = load_model(template)
    read_back, _ = _weights_of(proto, template, None, files, spans)
    refuse_other_external(proto, template)
    protected = set() if output.same_file(target, template) else external_files(proto, template)
    if data_path.resolve() in protected:
        raise UsageError(
            f"{data_path}: is the template's external data file; writing it would change "
            f"{template}: give another external_data_file"
        )
    pairs = pair(
        weights,
        template_slots(read_back),
        dense_inputs=torch_dense_inputs,
        where=where,
        template=str(template),
    )
    by_layer = {layer.name: layer for layer in weights.weighted_layers()}
    slot_of = {torch_key(by_layer[p.layer], p.role): p.slot for p in pairs if p.layer}
    dense = _dense_inputs(pairs, read_back, torch_dense_inputs, where)
    plan = _plan(
        proto, read_back, slot_of, set(spans), external_data, external_data_file, data_path, where
    )
    del read_back
    external, notes = plan.external, plan.notes
    targets = [target, data_path] if external else [target]
    with output.temporaries(targets, force, notes) as temporaries:
        with open(temporaries[1 if external else 0], "r+b") as handle:
            spliced = None
            if external:
                sink: output.Sink = output.DataFile(handle, temporaries[1].name)
            else:
                sizes = {n: output.nbytes_of(plan.initializers[n]) for n in plan.pending}
                sink = spliced = inline.Spliced(handle, proto, sizes, where)
            parameters, transforms = _put_ours(plan, weights, dense, slot_of, sink, progress, where)
            _put_kept(plan, sink)
            model_bytes = spliced.finish() if spliced is not None else 0
        if spliced is not None:
            del proto, plan
            inline.check(temporaries[0], target, spliced.layout, where)
            publish(temporaries[0], target, replace=force)
        else:  # checked while the data file has the temporary's name it is given
            output.serialize(proto, temporaries[0], where)
            output.check(temporaries[0], where)
            output.point(proto, data_path.name)
            model_bytes = output.serialize(proto, temporaries[0], where)
            del proto, plan  # the checker reads a copy of its own: this one goes first
            output.publish_pair(temporaries, targets, replace=force)
    data_bytes = data_path.stat().st_size if external else 0
    if external:
        notes.append(f"{sink.count} initializers' data in {data_path.name} ({data_bytes:,} bytes)")
    stale = output.companion(target)
    if force and stale not in targets and stale.resolve() not in protected and stale.exists():
        remove_files([stale])
        notes.append(
            f"removed {stale.name}, the external data of the model replaced: this one "
            + (f"keeps its data in {data_path.name}" if external else "holds its data inline")
        )
    return WriteResult(
        layers=len({p.layer for p in pairs}),
        tensors=len(slot_of),
        parameters=parameters,
        bytes=model_bytes + data_bytes,
        files=[where, os.fspath(data_path)] if external else [where],
        notes=notes,
        detail={
            "template": str(template),
            "external_data": data_path.name if external else None,
            "transforms": [{"step": s, "layers": ls} for s, ls in transforms.items()],
        },
    )


@dataclass
class _Plan:
    """What a write does with each of the template's initializers."""

    initializers: dict[str, TensorProto]
    #: The template's values by initializer name (those of a dtype read here).
    values: dict[str, Any]
    #: The template's initializers not replaced by ours.
    kept: list[str]
    #: The initializers stripped of their values, to be given ours or the template's again.
    pending: set[str]
    external: bool
    notes: list[str]


def _plan(
    proto: onnx.ModelProto,
    read_back: WeightSet,
    slot_of: Mapping[str, Slot],
    hollow: set[str],
    external_data: str,
    external_data_file: str | None,
    data_path: Path,
    where: str,
) -> _Plan:
    """Strip the initializers that get ours and those whose data the template keeps
    elsewhere (in external files, or, `hollow`, left in its mapped file when it was parsed),
    and decide where the data goes: in the model while it fits protobuf's limit, unless the
    options say otherwise, else in the data file."""
    template = read_back.source.path if read_back.source else "the template"
    initializers = {init.name: init for init in proto.graph.initializer}
    values = {
        layer.location(role): tensor
        for layer in read_back.layers
        for role, tensor in layer.tensors.items()
    }
    replaced = {slot.name for slot in slot_of.values()}
    kept = [name for name in initializers if name not in replaced]
    copied = [
        n for n in kept if n in hollow or initializers[n].data_location == TensorProto.EXTERNAL
    ]
    for name in copied:
        if name not in values:
            raise FormatError(
                f"{template}: initializer {name!r} is of a dtype not read here and its data "
                f"is not in the parsed model ({'large' if name in hollow else 'external'}); "
                f"it cannot be copied"
            )
    pending = {name: output.nbytes_of(initializers[name]) for name in [*replaced, *copied]}
    for name in pending:
        output.strip(initializers[name])
    inline = output.inline_size(proto, pending)
    over = inline > output.MAX_BYTES
    if over and external_data == "never":
        raise FormatError(
            f"{where}: the model would be {inline:,} bytes with its data inline, over "
            f"protobuf's limit of {output.MAX_BYTES:,} (2 GB); external_data=never refuses "
            f"it (auto or always writes the data to {data_path.name})"
        )
    external = over or external_data == "always" or external_data_file is not None
    # onnx.checker refuses any location with "..", and the data file is checked under its
    # temporary's name, ".NAME.<pid>.<random>.partial".
    if external and ".." in f".{data_path.name}":
        reason = (
            "holds '..', which ONNX refuses in a location"
            if ".." in data_path.name
            else "starts with '.': onnx.checker, which checks it under a temporary name ('.' "
            "and its name), would refuse the '..' in that"
        )
        raise UsageError(
            f"{where}: the data file's name {data_path.name} {reason}; give external_data_file=NAME"
        )
    notes = [f"graph from {template}: {len(replaced)} initializers replaced"]
    if kept:
        notes.append(f"initializers kept from the template: {', '.join(kept[:8])}")
    if over and external_data == "auto":
        notes.append(
            f"with its data inline the model would be {inline:,} bytes, over protobuf's 2 GB: "
            f"its data is written to {data_path.name} beside it"
        )
    return _Plan(initializers, values, kept, set(pending), external, notes)


def _put_ours(
    plan: _Plan,
    weights: WeightSet,
    dense: Mapping[str, tuple[int, ...]],
    slot_of: Mapping[str, Slot],
    sink: output.Sink,
    progress: Progress | None,
    where: str,
) -> tuple[int, dict[str, list[str]]]:
    """Our tensors into their initializers, layer by layer; their count of values, and the
    layout steps taken per layer."""
    advance = progress.advance if progress is not None else None
    unwritten = {slot.name for slot in slot_of.values()}
    transforms: dict[str, list[str]] = {}
    parameters = 0
    for layer, shape, named in torch_layers(weights, dense, where):
        for step in steps(layer, shape):
            transforms.setdefault(step, []).append(layer.name)
        parameters += output.put_layer(named, slot_of, plan.initializers, sink, advance, where)
        unwritten -= {slot_of[key].name for key, _ in named}
        del named  # before the next layer's tensors are made
    if unwritten:  # cannot happen unless the pairing is wrong
        raise FormatError(f"{where}: initializer {sorted(unwritten)[0]!r} not written")
    return parameters, transforms


def _put_kept(plan: _Plan, sink: output.Sink) -> None:
    """The template's own initializers that go to the data file, or come back from theirs."""
    for name in plan.kept:
        initializer = plan.initializers[name]
        if name not in plan.values:
            continue
        if not plan.external and name in plan.pending:
            into: output.Sink = sink
        elif plan.external and output.nbytes_of(initializer) >= SMALL_BYTES:
            into = sink
        elif name in plan.pending:
            into = output.Inline()
        else:
            continue
        array = np.asarray(plan.values[name]).reshape(tuple(initializer.dims))
        into.put(initializer, array, None)
        del array  # before the next is read


def _dense_inputs(
    pairs: list[Pair], template: WeightSet, given: Mapping[str, tuple[int, ...]] | None, where: str
) -> dict[str, tuple[int, ...]]:
    """The C,H,W each of our dense layers reads: given, or what the template's graph says its
    paired layer reads; the two must agree."""
    found: dict[str, tuple[int, ...]] = {}
    for p in pairs:
        theirs = template[p.slot.layer]
        if p.role == "weights" and theirs.kind == Kind.DENSE and theirs.input_shape:
            found[p.layer] = tuple(theirs.input_shape)
    for name, shape in (given or {}).items():
        if name in found and found[name] != tuple(shape):
            raise UsageError(
                f"torch_dense_inputs={name}={','.join(map(str, shape))}: the template's graph "
                f"feeds its paired layer a {'x'.join(map(str, found[name]))} input"
            )
        found[name] = tuple(shape)
    return found


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
