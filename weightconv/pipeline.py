"""The library's verbs: load, save, convert, inspect and diff, each returning a typed report.

This is what `weightconv` exports and what the command line calls; a report's ``to_dict()``
is the command's ``--json`` document. Every option is checked before anything is read or
written: a reader or writer option the chosen format does not take is a `UsageError` that
lists the options it does take.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Mapping as MappingType
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightconv import formats
from weightconv._util.files import output_error
from weightconv._util.progress import Progress
from weightconv.errors import UsageError
from weightconv.formats import Format
from weightconv.formats.base import Options, WriteResult, describe_names
from weightconv.mapping import RULES, Mapping
from weightconv.model import WeightSet
from weightconv.model.canonical import canonical_layers, canonicalization_steps
from weightconv.reports import (
    SCHEMA_VERSION,
    ConversionReport,
    DiffReport,
    FileRef,
    Inventory,
    TensorReport,
    compare_tensors,
    inventory_of,
    tensor_report,
)

#: progress(done_bytes, total_bytes), called as a writer advances.
ProgressCallback = Callable[[int, int], None]

__all__ = [
    "SCHEMA_VERSION",
    "ConversionReport",
    "DiffReport",
    "DiffSide",
    "Inventory",
    "TensorReport",
    "convert",
    "default_output",
    "diff",
    "inspect",
    "inspect_tensor",
    "load",
    "save",
]


def load(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    options: MappingType[str, Any] | Options | None = None,
    **named: Any,
) -> WeightSet:
    """Read any supported weight file into a WeightSet (layers in the layout the file has).

    Reader options go in `options` or as keywords; one the format's reader does not take is
    refused with the list of those it does.

    Example::

        ws = weightconv.load("lenet.caffemodel", prototxt="lenet.prototxt")
        ws["conv1"].tensors["weights"].shape   # (20, 1, 5, 5): Caffe's OIHW, as stored
    """
    fmt = formats.detect(path, format)
    return fmt.read(path, _merged(options, named, f"the {fmt.name} reader"))


def save(
    weights: WeightSet,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    force: bool = False,
    progress: ProgressCallback | Progress | None = None,
    options: MappingType[str, Any] | Options | None = None,
    **named: Any,
) -> WriteResult:
    """Write a WeightSet; the format follows from the suffix unless `format` is given.

    Refuses to overwrite unless `force`; creates a missing folder as TensorFlow's Saver does;
    never leaves a partial file behind.

    Example::

        result = weightconv.save(ws, "out/lenet.ckpt", shards=2)
        result.files   # ['out/lenet.ckpt.index', 'out/lenet.ckpt.data-00000-of-00002', ...]
    """
    target = formats.for_output(path, format)
    write_options = target.writer_options(_merged(options, named, f"the {target.name} writer"))
    with _output_folder(path) as created:
        target.check_output(path, force)
        result = _write(target, weights, path, write_options, force, progress)
    if created:
        result.notes.append(f"created folder {created}")
    return result


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    src_format: str | None = None,
    dst_format: str | None = None,
    read_options: MappingType[str, Any] | Options | None = None,
    write_options: MappingType[str, Any] | Options | None = None,
    mapping: Mapping | None = None,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    force: bool = False,
    progress: ProgressCallback | Progress | None = None,
    **named: Any,
) -> ConversionReport:
    """Read `src`, select, map and write it to `dst`: what every conversion verb does.

    Keyword options not named here go to the reader or the writer, whichever takes them
    (``prototxt=`` to a Caffe reader, ``shards=`` to the checkpoint writer, ...); a name
    neither takes is refused before anything is read.

    Example::

        report = weightconv.convert("vgg16.caffemodel", "vgg_16.ckpt",
                                    prototxt="deploy.prototxt",
                                    mapping=Mapping(names="slim", net="vgg_16", fc_as_conv=True))
        report.tensors, report.transforms
    """
    source = formats.detect(src, src_format)
    target = formats.for_output(dst, dst_format)
    reading, writing = _route(source, target, read_options, write_options, named)
    plan = mapping or Mapping()
    with _output_folder(dst) as created:
        target.check_output(dst, force)
        weights, left_out = select(source.read(src, reading), only, skip)
        if not plan.is_identity():
            weights = plan.apply(weights)
        steps = transform_steps(weights)
        result = _write(target, weights, dst, writing, force, progress)
    written = result.detail.get("transforms")
    if written is not None:  # a writer that keeps the source's layout says what it did
        steps = (steps if not plan.is_identity() else []) + list(written)
    notes = list(weights.notes) + result.notes
    if created:
        notes.append(f"created folder {created}")
    return ConversionReport(
        input=FileRef(os.fspath(src), source.name),
        output=FileRef(os.fspath(dst), target.name),
        layers=result.layers,
        tensors=result.tensors,
        parameters=result.parameters,
        bytes=result.bytes,
        files=result.files,
        transforms=steps,
        skipped=left_out + result.skipped,
        channel_order=weights.channel_order,
        options={
            "read": reading.changed(),
            "write": writing.changed(),
            "mapping": plan.changed(),
            "only": list(only),
            "skip": list(skip),
            "force": force,
        },
        detail=result.detail,
        notes=notes,
    )


def inspect(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    options: MappingType[str, Any] | Options | None = None,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    canonical: bool = False,
    **named: Any,
) -> Inventory:
    """List every tensor a file holds (shape, dtype, size, where the file keeps it), as stored
    or, with `canonical`, as a conversion would write it. Nothing else is read.

    Example::

        inventory = weightconv.inspect("model.ckpt")
        [t.name for t in inventory.tensors]
    """
    fmt = formats.detect(path, format)
    weights, _ = select(
        fmt.read(path, _merged(options, named, f"the {fmt.name} reader")), only, skip
    )
    return inventory_of(weights, FileRef(os.fspath(path), fmt.name), fmt.title, canonical)


def inspect_tensor(
    path: str | os.PathLike[str],
    name: str,
    *,
    format: str | None = None,
    options: MappingType[str, Any] | Options | None = None,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    canonical: bool = False,
    **named: Any,
) -> TensorReport:
    """One tensor of a file, by its name (or ``layer/role``), with min/max/mean/std and the
    count of zeros, NaNs and Infs; ``.values`` holds the array.

    Example::

        report = weightconv.inspect_tensor("lenet.caffemodel", "ip2/biases")
        report.stats["mean"], report.values.shape
    """
    fmt = formats.detect(path, format)
    weights, _ = select(
        fmt.read(path, _merged(options, named, f"the {fmt.name} reader")), only, skip
    )
    layers = list(canonical_layers(weights)) if canonical else weights.weighted_layers()
    return tensor_report(layers, name, FileRef(os.fspath(path), fmt.name))


@dataclass(frozen=True)
class DiffSide:
    """What `diff` needs to know of one side that its file may not say.

    `channels` is the channel order its first convolution expects, for files that do not
    record it (.npy, checkpoints); `mapping` overrides the shared mapping for this side.
    """

    format: str | None = None
    options: MappingType[str, Any] | None = None
    channels: str | None = None
    mapping: Mapping | None = None


def diff(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    mapping: Mapping | None = None,
    read_options: MappingType[str, Any] | None = None,
    a_side: DiffSide | None = None,
    b_side: DiffSide | None = None,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    atol: float = 0.0,
    rtol: float = 0.0,
) -> DiffReport:
    """Compare two weight files of any formats tensor by tensor, each in the canonical layout.

    Each side is read with the shared `read_options` its reader takes (``prototxt`` goes to
    the Caffe side only; an option neither side takes is refused) plus its own, then mapped
    with its own or the shared `mapping`. When both sides' channel orders are known (recorded
    by the file or given in its `DiffSide`) and differ, b's first convolution is compared in
    a's order.

    Example::

        report = weightconv.diff("model.caffemodel", "model.npy",
                                 read_options={"prototxt": "deploy.prototxt"}, atol=1e-6)
        report.equal
    """
    sides_given = (a_side or DiffSide(), b_side or DiffSide())
    shared = dict(read_options or {})
    fmts = [
        formats.detect(path, side.format) for path, side in zip((a, b), sides_given, strict=True)
    ]
    taken = {name for fmt in fmts for name in fmt.read_options.names()}
    unused = sorted(set(shared) - taken)
    if unused:
        raise UsageError(
            f"read option {unused[0]!r} applies to neither {fmts[0].name} nor {fmts[1].name}"
        )
    loaded: list[WeightSet] = []
    unmatched = set(skip)
    for path, side, fmt in zip((a, b), sides_given, fmts, strict=True):
        own = {k: v for k, v in shared.items() if k in fmt.read_options.names()}
        own.update(side.options or {})
        weights = fmt.read(path, own)
        if side.channels is not None:
            weights.channel_order = side.channels
        unmatched = {p for p in unmatched if not weights.select((), [p])[1]}
        weights, _ = weights.select(only, skip)
        loaded.append(weights)
    if unmatched:
        raise UsageError(f"skip={sorted(unmatched)[0]}: matches no layer or tensor of {a} or {b}")
    notes: list[str] = []
    mapped = []
    unused_by_side = []
    order_a = loaded[0].channel_order
    for index, (weights, side) in enumerate(zip(loaded, sides_given, strict=True)):
        plan = side.mapping or mapping or Mapping()
        order = weights.channel_order
        if index == 1 and order_a and order and order != order_a:
            plan = plan.replace(input_channels=order_a, source_channels=order)
            notes.append(
                f"b's first convolution compared in a's channel order "
                f"({order.upper()} -> {order_a.upper()})"
            )
        result, unused = plan.plan(weights)
        mapped.append(result)
        unused_by_side.append(set(unused))
        if order is None:
            notes.append(
                f"{'ab'[index]}: the file does not record its channel order; compared as stored"
            )
    # a shared rule must change something on at least one side
    for name in sorted(unused_by_side[0] & unused_by_side[1]):
        raise UsageError(f"mapping rule {name}: {RULES[name]} in {a} or in {b}")
    rows = compare_tensors(mapped[0], mapped[1], atol, rtol)
    return DiffReport(
        a=FileRef(os.fspath(a), fmts[0].name),
        b=FileRef(os.fspath(b), fmts[1].name),
        atol=atol,
        rtol=rtol,
        tensors=rows,
        notes=notes,
    )


# -- the steps, shared by the verbs ----------------------------------------------------------


def select(
    weights: WeightSet, only: Sequence[str], skip: Sequence[str]
) -> tuple[WeightSet, list[str]]:
    """`weights` with `only`/`skip` applied; a pattern that matches nothing is refused."""
    if not only and not skip:
        return weights, []
    where = weights.source.path if weights.source else "the input"
    for pattern in skip:
        if not weights.select((), [pattern])[1]:
            raise UsageError(
                f"skip={pattern}: no layer or tensor of {where} matches it "
                f"(layers: {', '.join(weights.names()[:12])})"
            )
    selected, left_out = weights.select(only, skip)
    if only and not selected.weighted_layers():
        raise UsageError(
            f"only={' '.join(only)} matches no layer of {where} (layers: "
            f"{', '.join(weights.names()[:12])})"
        )
    return selected, left_out


def transform_steps(weights: WeightSet) -> list[dict[str, Any]]:
    """Each transform a conversion applies, with the layers it applies to."""
    steps: dict[str, list[str]] = {}
    for layer in weights.weighted_layers():
        if layer.origins:
            names = dict.fromkeys(
                step for origin in layer.origins.values() for step in origin.transforms
            )
        else:
            names = dict.fromkeys(canonicalization_steps(layer))
        for step in names:
            steps.setdefault(step, []).append(layer.name)
    return [{"step": step, "layers": layers} for step, layers in steps.items()]


def default_output(
    src: str | os.PathLike[str],
    target: str,
    write_options: MappingType[str, Any] | Options | None = None,
) -> Path:
    """The output a short verb writes when none is named: the input's name with the target
    format's suffix (``alexnet.caffemodel`` -> ``alexnet.npy``)."""
    fmt = formats.get(target)
    base = os.fspath(src).removesuffix(".index")
    known = sorted({s for f in formats.FORMATS for s in f.suffixes}, key=len, reverse=True)
    for suffix in known:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return Path(base + fmt.default_suffix(fmt.writer_options(write_options)))


def _route(
    source: Format, target: Format, read_options: Any, write_options: Any, named: dict[str, Any]
) -> tuple[Options, Options]:
    reading = dict(_as_mapping(read_options))
    writing = dict(_as_mapping(write_options))
    read_names, write_names = set(source.read_options.names()), set(target.writer_options().names())
    for name, value in named.items():
        if name in read_names and name in write_names:
            raise UsageError(
                f"option {name!r} is taken by both the {source.name} reader and "
                f"the {target.name} writer; pass it in read_options or "
                f"write_options"
            )
        if name in read_names:
            reading[name] = value
        elif name in write_names:
            writing[name] = value
        else:
            mapping_hint = (
                " (a mapping option: pass mapping=Mapping(...))"
                if name in Mapping.option_names()
                else ""
            )
            raise UsageError(
                f"option {name!r} is taken by neither the {source.name} reader "
                f"({describe_names(sorted(read_names))}) nor the {target.name} writer "
                f"({describe_names(sorted(write_names))}){mapping_hint}"
            )
    return source.reader_options(reading), target.writer_options(writing)


def _as_mapping(options: Any) -> MappingType[str, Any]:
    if options is None:
        return {}
    if isinstance(options, Options):
        return {name: getattr(options, name) for name in options.names()}
    return options


def _merged(options: Any, named: dict[str, Any], where: str) -> Any:
    if not named:
        return options
    if isinstance(options, Options):
        raise UsageError(f"{where}: give options either as an options object or as keywords")
    return {**(options or {}), **named}


def _write(
    target: Format,
    weights: WeightSet,
    path: str | os.PathLike[str],
    options: Options,
    force: bool,
    progress: ProgressCallback | Progress | None,
) -> WriteResult:
    with _progress(progress, weights.nbytes) as bar:
        return target.write(weights, path, options, force=force, progress=bar)


@contextlib.contextmanager
def _progress(
    progress: ProgressCallback | Progress | None, total: int
) -> Iterator[Progress | None]:
    if progress is None or isinstance(progress, Progress):
        yield progress
        return
    with _CallbackProgress(progress, total) as bar:
        yield bar


class _CallbackProgress(Progress):
    def __init__(self, callback: ProgressCallback, total: int) -> None:
        super().__init__(total=total, enabled=False)
        self.callback = callback

    def advance(self, amount: int) -> None:
        super().advance(amount)
        self.callback(self.done, self.total)


@contextlib.contextmanager
def _output_folder(path: str | os.PathLike[str]) -> Iterator[str | None]:
    """Create the output's folder when it is missing, as TensorFlow's Saver does; remove what
    was created if the block fails. Yields the folder created, or None."""
    folder = Path(path).parent
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    if not missing:
        yield None
        return
    if not probe.is_dir():
        raise UsageError(f"{path}: {probe} is not a folder")
    try:
        folder.mkdir(parents=True)
    except OSError as exc:  # a read-only file system, a full disk: OutputError
        problem = f"cannot create folder {folder}: {exc.strerror}"
        raise (output_error(folder, exc) or UsageError(f"{path}: {problem}")) from None
    try:
        yield os.fspath(folder)
    except BaseException:
        for created in missing:
            with contextlib.suppress(OSError):
                created.rmdir()
        raise
