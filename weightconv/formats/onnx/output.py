"""The files of a written ONNX model: its initializers' data inline or in a data file beside
it, the size protobuf would give it, its temporaries and their publishing.

With external data the output is two files::

    out.onnx       the ModelProto; an initializer in the data file has data_location EXTERNAL
                   and external_data {location: "out.onnx.data", offset, length}
    out.onnx.data  the initializers' raw little-endian bytes one after another, each at an
                   offset that is a multiple of 64 bytes, or of 64 KiB for one of 1 MiB or
                   more; zeros between

64 KiB is Windows' allocation granularity and a multiple of every page size, so ONNX Runtime
can map such a tensor instead of reading it (ONNX's ExternalData.md asks for offsets that are
multiples of the page size, or of the allocation granularity on Windows, for mmap;
onnxruntime aligns what it saves over 1 MiB). The optional ``checksum`` is not written:
nothing checks it, and it would cost reading the file again.

A tensor goes to the data file in one pass: copied by the kernel from a mapped input, else
converted and written in chunks, so only the tensor in hand is in memory. Both files are
temporaries beside their targets until both are complete and checked (`check`);
`publish_pair` then renames the data file first, having removed an old model, so a kill
between the two renames leaves no model, never a model paired with another run's data.
``out.onnx.data`` (`companion`) belongs to ``out.onnx`` however that is written (see
``format.check_output``).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Protocol

import numpy as np
import onnx
from onnx import TensorProto, checker

from weightconv._util.files import (
    check_writable,
    chunks,
    output_errors,
    publish,
    remove_files,
    stale_temporaries_of,
    temporary_beside,
)
from weightconv._util.memory import release_pages
from weightconv._util.regions import copy_to_handle
from weightconv.errors import FormatError, UsageError
from weightconv.formats.onnx.tensors import DTYPES, TYPED_FIELDS
from weightconv.formats.torch.template import Slot, check_dtype

#: protobuf's limit on one serialized message.
MAX_BYTES = (2 << 30) - 1
#: The data file's name is the model's and this.
DATA_SUFFIX = ".data"
#: A tensor in the data file starts at a multiple of ALIGNMENT, or of LARGE_ALIGNMENT when it
#: is LARGE_BYTES or more.
ALIGNMENT = 64
LARGE_ALIGNMENT = 64 << 10
LARGE_BYTES = 1 << 20
#: Largest piece of a tensor converted and written at once.
CHUNK_BYTES = 16 << 20

Advance = Callable[[int], None] | None


class Sink(Protocol):
    """Where a write puts each initializer's values: inline, in a data file, ..."""

    count: int

    def put(self, initializer: TensorProto, array: np.ndarray, advance: Advance) -> None: ...


class Inline:
    """Initializers given their values as inline ``raw_data``."""

    count = 0

    def put(self, initializer: TensorProto, array: np.ndarray, advance: Advance) -> None:
        check_shape(initializer, array)
        strip(initializer)
        little = array.dtype.newbyteorder("<")
        initializer.raw_data = np.ascontiguousarray(array, dtype=little).tobytes()
        if advance is not None:
            advance(int(array.nbytes))


class DataFile:
    """The data file being written: each tensor at the next aligned offset, its initializer
    pointed there (at `location`, the file's name)."""

    def __init__(self, handle: IO[bytes], location: str) -> None:
        self.handle = handle
        self.location = location
        self.end = 0
        self.count = 0

    def put(self, initializer: TensorProto, array: np.ndarray, advance: Advance) -> None:
        check_shape(initializer, array)
        little = array.dtype.newbyteorder("<")
        nbytes = array.size * little.itemsize
        if nbytes == 0:  # an empty external tensor would point past the end of the file
            Inline().put(initializer, array, advance)
            return
        step = LARGE_ALIGNMENT if nbytes >= LARGE_BYTES else ALIGNMENT
        offset = -(-self.end // step) * step
        self.handle.seek(offset)
        stream(array, little, self.handle, advance)
        if self.handle.tell() != offset + nbytes:  # the file would be corrupt
            raise FormatError(
                f"initializer {initializer.name!r}: wrote {self.handle.tell() - offset:,} of "
                f"{nbytes:,} bytes"
            )
        self.end = offset + nbytes
        self.count += 1
        strip(initializer)
        initializer.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", offset), ("length", nbytes)):
            entry = initializer.external_data.add()
            entry.key, entry.value = key, str(value)


def put_layer(
    named: list[tuple[str, np.ndarray]],
    slot_of: Mapping[str, Slot],
    initializers: Mapping[str, TensorProto],
    sink: Sink,
    advance: Advance,
    where: str,
) -> int:
    """One layer's tensors into their initializers, in the template's layout; their count of
    values."""
    parameters = 0
    for key, array in named:
        slot = slot_of[key]
        check_dtype(array, slot, where)
        initializer = initializers[slot.name]
        if slot.transposed:
            array = array.T
        elif slot.role == "alpha":  # the (C,) read from a (C, 1, 1) slope goes back so
            array = array.reshape(tuple(initializer.dims))
        sink.put(initializer, array, advance)
        parameters += int(array.size)
    return parameters


def stream(array: np.ndarray, little: np.dtype, handle: IO[bytes], advance: Advance) -> None:
    if array.dtype == little and copy_to_handle(array, handle, advance):
        return
    for chunk in chunks(array, CHUNK_BYTES):
        data = np.ascontiguousarray(chunk, dtype=little).reshape(-1).view(np.uint8)
        handle.write(data.data)
        if advance is not None:
            advance(data.nbytes)
        del data  # before the next chunk is made, so only one is alive
        release_pages(chunk)


def check_shape(initializer: TensorProto, array: np.ndarray) -> None:
    if tuple(initializer.dims) != tuple(array.shape):  # the pairing checked it; be sure
        raise FormatError(f"initializer {initializer.name!r}: shape {list(array.shape)} differs")


def strip(initializer: TensorProto) -> None:
    """The initializer without its values, wherever they were."""
    for name in (*TYPED_FIELDS, "raw_data", "external_data", "data_location"):
        initializer.ClearField(name)


def nbytes_of(initializer: TensorProto) -> int:
    """The bytes of an initializer of a dtype `tensors` reads."""
    return math.prod(initializer.dims) * DTYPES[initializer.data_type][0].itemsize


def inline_size(proto: onnx.ModelProto, pending: Mapping[str, int]) -> int:
    """The model's serialized size once each stripped initializer named in `pending` holds its
    bytes (the count given) as ``raw_data``: what protobuf would make, without making it."""
    growth = 0
    for initializer in proto.graph.initializer:
        nbytes = pending.get(initializer.name)
        if nbytes is None:
            continue
        bare = initializer.ByteSize()
        full = bare + 1 + _varint_size(nbytes) + nbytes  # raw_data: a 1-byte tag, a length
        growth += _varint_size(full) + full - _varint_size(bare) - bare
    graph = proto.graph.ByteSize()
    return proto.ByteSize() + growth + _varint_size(graph + growth) - _varint_size(graph)


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


# The files ----------------------------------------------------------------------------------


def companion(target: Path) -> Path:
    """The default data file of the model `target`: its name and ``.data``."""
    return target.with_name(target.name + DATA_SUFFIX)


def data_path(target: Path, external_data: str, name: str | None) -> Path:
    """Where the data file goes: `name` beside the model, or the model's name + ``.data``."""
    if name is None:
        return companion(target)
    if external_data == "never":
        raise UsageError(
            f"external_data_file={name}: names a data file, and external_data=never writes none"
        )
    if not name or Path(name).name != name or ".." in name or name == target.name:
        raise UsageError(
            f"external_data_file={name!r}: give a file name for beside {target.name}, without "
            f"a folder or '..', other than the model's own"
        )
    return target.with_name(name)


def same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def temporaries(targets: list[Path], force: bool, notes: list[str]) -> Iterator[list[Path]]:
    """A locked temporary beside each of `targets`, the model first (stale ones of earlier
    runs removed first, the default data file's too, in `notes`); each removed on leaving
    unless the block published it. An OSError that says the output cannot be written is an
    OutputError naming the model."""
    for target in targets:
        check_writable(target, force)
    for target in dict.fromkeys([*targets, companion(targets[0])]):
        notes.extend(stale_temporaries_of(target))
    opened: list[tuple[int, Path]] = []
    try:
        with output_errors(targets[0]):
            for target in targets:
                opened.append(temporary_beside(target))
            yield [temporary for _, temporary in opened]
    finally:
        remove_files([temporary for _, temporary in opened])
        for fd, _ in opened:
            os.close(fd)


def serialize(proto: onnx.ModelProto, temporary: Path, where: str) -> int:
    """Write the model to `temporary`; its size."""
    data = proto.SerializeToString()
    if len(data) > MAX_BYTES:  # inline_size said otherwise: be sure
        raise FormatError(f"{where}: the model would be {len(data):,} bytes, over protobuf's 2 GB")
    temporary.write_bytes(data)
    return len(data)


def check(temporary: Path, where: str) -> None:
    """``onnx.checker.check_model`` on the file (the form that follows external data, at any
    size). An external initializer's data file must be beside it under the name it gives."""
    try:
        checker.check_model(os.fspath(temporary))
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise FormatError(
            f"{where}: the written model fails onnx.checker.check_model: {text[:200]}"
        ) from None


def point(proto: onnx.ModelProto, location: str) -> None:
    """Every external initializer's data in the file `location`."""
    for initializer in proto.graph.initializer:
        if initializer.data_location == TensorProto.EXTERNAL:
            for entry in initializer.external_data:
                if entry.key == "location":
                    entry.value = location


def publish_pair(temporaries: list[Path], targets: list[Path], *, replace: bool) -> None:
    """Rename the model's and the data file's temporaries into place, the data first, an old
    model removed before it: between the renames there is no model rather than one whose data
    is another run's."""
    (model_temporary, data_temporary), (model, data) = temporaries, targets
    if replace:
        remove_files([model])
    publish(data_temporary, data, replace=replace)
    try:
        publish(model_temporary, model, replace=replace)
    except BaseException:
        remove_files([data])  # ours: renamed in a moment ago
        raise
