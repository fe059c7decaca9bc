"""Writing V2 checkpoints, and planning which data file each tensor goes to.

Tensors are written in the order of the weight set's layers, each into its data file in
one pass (checksummed as it goes); the index is written last, its keys sorted as a table
needs. Everything goes to temporary names, renamed into place at the end by
`naming.commit`, the index last, under a journal: a kill at any moment leaves the old
checkpoint or the new one, or a journal from which the next run on the prefix (a read or a
write) restores one of them. A full disk or a read-only folder is an `OutputError`.

Which data file each tensor goes to is planned by `shards.plan_shards`: runs of
consecutive tensors, as even in size as whole tensors allow.

Example::

    write(ws, "out/model.ckpt", shards=4)   # out/model.ckpt.index, .data-0000{0..3}-of-00004
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from weightconv._util.files import chunks, output_errors, temporary_beside
from weightconv._util.memory import release_pages
from weightconv._util.progress import Progress
from weightconv._util.regions import copy_gap, copy_while, file_region, region_at_handle
from weightconv.codecs import crc32c, sstable
from weightconv.errors import MappingError, OutputExistsError, UsageError
from weightconv.formats.base import WriteResult
from weightconv.formats.ckpt import dtypes as tf_types
from weightconv.formats.ckpt.bundle import BUNDLE_VERSION_PRODUCER
from weightconv.formats.ckpt.naming import (
    checkpoint_files,
    commit,
    data_filename,
    index_filename,
    output_paths,
    prefix_of,
    recover,
    stage_state_file,
    take_notes,
)
from weightconv.formats.ckpt.shards import plan_shards
from weightconv.formats.ckpt.strings import encode_strings
from weightconv.model import FilledTensor, WeightSet
from weightconv.model.canonical import canonical_layers, canonical_shapes

#: Tensors are converted and written in pieces of this size.
WRITE_CHUNK_BYTES = 16 << 20


@dataclass
class _Planned:
    layer_index: int
    role: str
    name: str
    nbytes: int
    shard: int = 0


def check_output(path: str | os.PathLike[str], force: bool) -> None:
    """Refuse when a checkpoint with this prefix exists (unless `force`), once an interrupted
    earlier write of it is settled (see `naming.recover`; its notes go to `write`'s result)."""
    prefix = prefix_of(path)
    folder = prefix.parent
    if not folder.is_dir():
        raise UsageError(f"{prefix}: folder {folder} does not exist")
    recover(prefix)
    existing = checkpoint_files(prefix)
    if existing and not force:
        raise OutputExistsError(
            f"{prefix}: a checkpoint with this prefix exists "
            f"({existing[0].name}); pass force=True to overwrite it"
        )


def write(
    weights: WeightSet,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    shards: int = 1,
    max_shard_size: int | None = None,
    write_state: bool = True,
    progress: Progress | None = None,
) -> WriteResult:
    """Write `weights` as a V2 checkpoint with prefix `path`, in the canonical layout.

    Tensor names are ``layer/role`` (or the name the tensor was read under). Tensors go to
    `shards` data files of sizes as even as whole tensors in order allow, or, with
    `max_shard_size`, to as many files as keep each under that size (at least `shards`);
    a tensor larger than `max_shard_size` gets a file of its own and a note. The folder's
    ``checkpoint`` state file is pointed at the new prefix unless `write_state` is false.

    Example::

        result = write(ws, "out/model.ckpt", shards=2)
        result.files   # [out/model.ckpt.index, out/model.ckpt.data-00000-of-00002, ...]
    """
    prefix = prefix_of(path)
    check_output(prefix, force)
    planned = _list_tensors(weights, str(prefix))
    sizes = [item.nbytes for item in planned]
    assignment = plan_shards(sizes, shards, max_shard_size, str(prefix))
    count = assignment[-1] + 1
    if count < shards:
        raise UsageError(
            f"{prefix}: shards={shards}, but there are only {len(planned)} tensors to spread "
            f"over them; give at most shards={count}"
        )
    for item, shard in zip(planned, assignment, strict=True):
        item.shard = shard
    notes = take_notes(prefix) + _plan_notes(planned, shards, max_shard_size, count)
    temps: list[tuple[Path, Path]] = []
    try:
        with output_errors(prefix):
            align = max_shard_size is None  # padding would stretch a size limit
            size = _write_files(weights, prefix, planned, count, temps, progress, align)
        after = [stage_state_file(prefix)] if write_state else []
    except BaseException:
        for temp, _ in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        raise
    with output_errors(prefix):
        commit(prefix, temps, after, replace=force)  # consumes the temporaries
    return WriteResult(
        layers=len(weights.weighted_layers()),
        tensors=len(planned),
        parameters=weights.parameter_count,
        bytes=size,
        files=[str(p) for p in output_paths(prefix, count)],
        notes=notes,
        detail={"shards": count},
    )


def _write_files(
    weights: WeightSet,
    prefix: Path,
    planned: list[_Planned],
    count: int,
    temps: list[tuple[Path, Path]],
    progress: Progress | None,
    align: bool,
) -> int:
    """The data files, then the index, each in a temporary added to `temps`; their bytes.
    With `align`, a large tensor copied from a mapped input is placed where the kernel copies
    it fastest (`copy_gap`), zeros filling the gap before it (readers go by the index's
    offsets, and TensorFlow's own writer pads so when asked to align)."""
    from weightconv._proto import tf_checkpoint_pb2 as pb

    entries: dict[bytes, bytes] = {}
    offsets = dict.fromkeys(range(count), 0)
    handles: dict[int, BinaryIO] = {}
    try:
        for shard in range(count):
            handles[shard] = _temp_beside(data_filename(prefix, shard, count), temps)
        by_layer: dict[int, list[_Planned]] = {}
        for item in planned:
            by_layer.setdefault(item.layer_index, []).append(item)
        position = 0
        for layer in canonical_layers(weights):
            while position < len(weights.layers) and position not in by_layer:
                position += 1
            items = by_layer[position]
            position += 1
            for item in items:
                handle = handles[item.shard]
                what = f"{prefix}: tensor {item.name!r}"
                tensor = layer.tensors[item.role]
                if isinstance(tensor, FilledTensor):
                    entry = _place_tensor(handle, tensor, what, progress)
                else:
                    array = np.asarray(layer.tensors[item.role])
                    entry = _write_tensor(handle, array, what, progress, align)
                entry.shard_id = item.shard
                offsets[item.shard] = handle.tell()
                entry.offset = offsets[item.shard] - entry.size
                entries[item.name.encode("utf-8")] = entry.SerializeToString()
    finally:
        for handle in handles.values():
            handle.close()
    header = pb.BundleHeaderProto(num_shards=count, endianness=pb.BundleHeaderProto.LITTLE)
    header.version.producer = BUNDLE_VERSION_PRODUCER
    with _temp_beside(index_filename(prefix), temps) as index_handle:
        table = sstable.TableWriter(index_handle)
        table.add(b"", header.SerializeToString())
        for key in sorted(entries):
            table.add(key, entries[key])
        index_bytes = table.finish()
    return sum(offsets.values()) + index_bytes


def _list_tensors(weights: WeightSet, target: str) -> list[_Planned]:
    planned: list[_Planned] = []
    seen: set[str] = set()
    for index, layer in enumerate(weights.layers):
        # The tensors as written: the canonical layout's (a Caffe BatchNorm's scale factor,
        # say, is divided into its moments and not written).
        for role, (shape, dtype) in canonical_shapes(layer).items():
            name = layer.tensor_name(role)
            if name in seen:
                raise MappingError(f"{target}: two tensors would both be named {name!r}")
            seen.add(name)
            planned.append(_Planned(index, role, name, math.prod(shape) * dtype.itemsize))
    if not planned:
        raise MappingError(f"{target}: nothing to write (no tensors)")
    return planned


def _plan_notes(
    planned: list[_Planned], shards: int, max_shard_size: int | None, count: int
) -> list[str]:
    notes = []
    if max_shard_size is not None:
        for item in planned:
            if item.nbytes > max_shard_size:
                notes.append(
                    f"tensor {item.name!r} is {item.nbytes:,} bytes, more than "
                    f"max_shard_size={max_shard_size:,}; it gets a data file of its own "
                    f"(data-{item.shard:05d}-of-{count:05d})"
                )
    return notes


# Writing tensors ---------------------------------------------------------------------------


def _temp_beside(final: Path, temps: list[tuple[Path, Path]]) -> BinaryIO:
    fd, temporary = temporary_beside(final)
    temps.append((temporary, final))
    return os.fdopen(fd, "wb")


def _entry(dtype: np.dtype[Any], shape: tuple[int, ...], what: str) -> Any:
    """A ``BundleEntryProto`` with dtype and shape; size, CRC, shard and offset to come."""
    from weightconv._proto import tf_checkpoint_pb2 as pb

    entry = pb.BundleEntryProto()
    entry.dtype = tf_types.from_numpy(dtype, what)  # type: ignore[assignment]
    entry.shape.SetInParent()  # present even for scalars, as TensorFlow writes it
    for n in shape:
        entry.shape.dim.add(size=int(n))
    return entry


def _write_tensor(
    handle: BinaryIO, array: np.ndarray, what: str, progress: Progress | None, align: bool
) -> Any:
    """Write one tensor's bytes; its ``BundleEntryProto`` without shard and offset. A view of
    a mapped input is checksummed from its file and copied file to file by the kernel,
    after zeros that place it as `copy_gap` says when `align`."""
    entry = _entry(array.dtype, array.shape, what)
    if entry.dtype == tf_types.STRING:
        lengths, payload, crc = encode_strings(array)
        handle.write(lengths)
        handle.write(payload)
        entry.size = len(lengths) + len(payload)
        entry.crc32c = crc32c.mask(crc)
        return entry
    dtype = array.dtype.newbyteorder("<")
    advance = progress.advance if progress is not None else None
    region = file_region(array) if array.dtype == dtype else None
    if region is not None:
        if align:
            handle.write(bytes(copy_gap(region[1], handle.tell(), array.nbytes)))
        copied, crc = _copy_and_checksum(array, handle, advance)
        if copied:
            entry.size = array.nbytes
            entry.crc32c = crc32c.mask(crc)
            return entry
    crc = 0
    size = 0
    for chunk in chunks(array, WRITE_CHUNK_BYTES):
        data = np.ascontiguousarray(chunk, dtype=dtype).reshape(-1).view(np.uint8)
        handle.write(data.data)
        crc = crc32c.extend(crc, data)
        size += data.nbytes
        if advance is not None:
            advance(data.nbytes)
        del data
        release_pages(chunk)
    entry.size = size
    entry.crc32c = crc32c.mask(crc)
    return entry


def _copy_and_checksum(
    array: np.ndarray, handle: BinaryIO, advance: Callable[[int], None] | None
) -> tuple[bool, int]:
    """Copy a mapped tensor into `handle` by the kernel while this thread checksums it from
    the file (neither needs mapped pages nor the other's output); (copied, CRC32C)."""
    region = file_region(array)
    assert region is not None  # the caller checked
    handle.flush()
    position = handle.tell()
    copied, crc = copy_while(
        array, handle.fileno(), position, lambda: crc32c.of_file(*region, array.nbytes), advance
    )
    if copied:
        handle.seek(position + array.nbytes)
    return copied, crc


def _place_tensor(
    handle: BinaryIO, tensor: FilledTensor, what: str, progress: Progress | None
) -> Any:
    """A Caffe-layout tensor converted straight into its place in the data file, then
    checksummed there; its ``BundleEntryProto`` without shard and offset."""
    shape, fill = tensor.shape, tensor.fill
    dtype = tensor.dtype.newbyteorder("<")
    entry = _entry(dtype, shape, what)
    nbytes = math.prod(shape) * dtype.itemsize
    crc = 0
    if nbytes:
        with region_at_handle(handle, nbytes) as region:
            fill(region.view(dtype).reshape(shape))
            crc = crc32c.value_parallel(region)
            del region  # no view may outlive the block, or the mapping cannot close
        if progress is not None:
            progress.advance(nbytes)
    entry.size = nbytes
    entry.crc32c = crc32c.mask(crc)
    return entry
