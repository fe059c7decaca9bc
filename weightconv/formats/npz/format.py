"""NumPy ``.npz`` weight archives: ``np.savez`` / ``np.savez_compressed`` of ``{name: array}``.

An ``.npz`` is a zip of ``.npy`` members named ``<key>.npy``; a key ``conv1/weights`` is layer
``conv1``, role ``weights``, in the canonical (TensorFlow) layout, as in a flat ``.npy`` weight
dict. Reading lists each member's shape and dtype from its ``.npy`` header (a pickled member
is refused, never run); the values, when asked for, are a read-only view of the mapped file for
a stored member, after its CRC-32 is checked, and ``np.load(..., allow_pickle=False)``'s for a
deflated one. Writing lays out stored members one tensor at a time, each a ``.npy``
file: a tensor that is a view of a mapped input is copied by the kernel, a converted one is
made in place in the output (`weightconv.codecs.zip_writer`); with `compressed` it goes
through ``np.savez_compressed``, one array converted at a time as it asks for them.

Example::

    write(weights, "model.npz", compressed=True)
    np.load("model.npz")["conv1/weights"].shape   # (5, 5, 1, 20): HWIO
"""

from __future__ import annotations

import io
import math
import mmap
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from numpy.lib import format as npformat

from weightconv._util.files import atomic_output, open_input
from weightconv._util.memory import release_pages
from weightconv._util.progress import Progress
from weightconv._util.regions import map_input
from weightconv.codecs import zipped
from weightconv.codecs.zip_writer import StoredZipWriter, array_member, filled_member
from weightconv.errors import FormatError, MappingError, UsageError
from weightconv.formats.base import WriteResult
from weightconv.model import (
    CANONICAL,
    CheckedTensor,
    FilledTensor,
    Kind,
    Layer,
    LazyTensor,
    Provenance,
    Tensor,
    WeightSet,
    split_tensor_name,
)
from weightconv.model.canonical import canonical_layers, canonical_shapes, to_canonical

ZIP_MAGIC = b"PK\x03\x04"
#: np.savez_compressed's own keywords, which no array given it can be named.
_RESERVED = ("file", "allow_pickle")
_HEADER_LIMIT = 1 << 20
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def sniff(head: bytes, path: Path) -> bool:
    """A zip whose first member is a ``.npy`` file."""
    if not head.startswith(ZIP_MAGIC) or len(head) < 30:
        return False
    length = int.from_bytes(head[26:28], "little")
    return head[30 : 30 + length].endswith(b".npy")


def read(path: str | os.PathLike[str]) -> WeightSet:
    """Read an ``.npz`` archive: its members' shapes and dtypes now, their values on demand
    (a stored member's as a view of the mapped file, a deflated one's through ``np.load``)."""
    target = Path(path)
    size = target.stat().st_size if target.is_file() else 0
    tensors: dict[str, dict[str, Tensor]] = {}
    stored = _StoredMembers(target, size)
    with zipped.open_archive(target) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise FormatError(
                    f"{target}:{info.filename}: not a .npy member; an .npz holds only .npy files"
                )
            zipped.check_sizes(info, size, max(size, 1) * zipped.MAX_DEFLATE_RATIO, str(target))
            key = info.filename[: -len(".npy")]
            where = f"{target}:{info.filename}"
            header = _header(archive, info, where)
            layer, role = split_tensor_name(key)
            roles = tensors.setdefault(layer, {})
            if role in roles:
                raise FormatError(f"{target}: tensor {key!r} appears twice")
            if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
                roles[role] = stored.tensor(info, header, where)
            else:
                shape, dtype = header.shape, header.dtype
                roles[role] = LazyTensor(shape, dtype, _loader(target, key, shape, dtype))
    if not tensors:
        raise FormatError(f"{target}: an .npz archive holding no arrays")
    layers = [
        Layer(name=name, kind=_kind(roles), tensors=roles, source_type="npz", layout=CANONICAL)
        for name, roles in tensors.items()
    ]
    return WeightSet(layers=layers, source=Provenance(path=str(target), format="npz"))


@dataclass(frozen=True)
class _Header:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran_order: bool
    length: int  # of the magic and header, before the array's bytes


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> _Header:
    try:
        with archive.open(info) as member:
            version = npformat.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = npformat.read_array_header_1_0(
                    member, max_header_size=_HEADER_LIMIT
                )
            else:
                shape, fortran, dtype = npformat.read_array_header_2_0(
                    member, max_header_size=_HEADER_LIMIT
                )
            length = member.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError) as exc:
        raise FormatError(f"{where}: not a readable .npy member ({_one_line(exc)})") from None
    if dtype.hasobject:
        raise FormatError(
            f"{where}: holds pickled Python objects, not numbers; refused (allow_pickle=False)"
        )
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if count * dtype.itemsize > info.file_size - length:
        raise FormatError(
            f"{where}: declares {list(shape)} of {dtype} ({count * dtype.itemsize:,} bytes), "
            f"the member holds {info.file_size - length:,} after its header"
        )
    return _Header(tuple(int(n) for n in shape), dtype, bool(fortran), length)


class _StoredMembers:
    """The stored members of one archive as read-only views of the mapped file (no copy, so
    a writer can copy them file to file in the kernel). A member's CRC-32 is summed from the
    file (none of it mapped) and checked before its values are first used, or alongside a
    kernel copy of them, which then fails if it does not match."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._mapping: mmap.mmap | None = None
        self._checked: set[str] = set()

    def tensor(self, info: zipfile.ZipInfo, header: _Header, where: str) -> CheckedTensor:
        start = zipped.stored_offset(self.path, info, self.size)
        count = math.prod(header.shape)

        def view() -> np.ndarray:
            if not count:
                return np.empty(header.shape, header.dtype)
            flat = np.frombuffer(self._map(), header.dtype, count, start + header.length)
            if header.fortran_order:
                return flat.reshape(header.shape[::-1]).T
            return flat.reshape(header.shape)

        def check() -> None:
            if info.filename not in self._checked:
                zipped.check_stored_crc(self.path, start, info, where)
                self._checked.add(info.filename)

        def load() -> np.ndarray:
            check()
            return view()

        def release() -> None:
            if self._mapping is not None and count:
                release_pages(view())

        return CheckedTensor(header.shape, header.dtype, load, release, lambda: (view(), check))

    def _map(self) -> mmap.mmap:
        if self._mapping is None:
            with open_input(self.path) as handle:
                self._mapping = map_input(handle)
        return self._mapping


def _loader(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
    def load() -> np.ndarray:
        try:
            with np.load(path, allow_pickle=False) as archive:
                array = archive[key]
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise FormatError(f"{path}:{key}.npy: cannot be read ({_one_line(exc)})") from None
        if array.shape != shape or array.dtype != dtype:
            raise FormatError(f"{path}:{key}.npy: changed while it was read")
        return array

    return load


def _kind(tensors: dict[str, Tensor]) -> str:
    if "weights" in tensors and set(tensors) <= {"weights", "biases"}:
        return {4: Kind.CONV, 2: Kind.DENSE}.get(len(tensors["weights"].shape), Kind.OTHER)
    return Kind.OTHER


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# Writing ---------------------------------------------------------------------------------------


def write(
    weights: WeightSet,
    path: str | os.PathLike[str],
    *,
    compressed: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> WriteResult:
    """Write `weights` in the canonical layout as ``{layer/role: array}``, an archive
    ``np.load`` reads back: stored members written one tensor at a time (copied by the
    kernel from a mapped input, or converted in place in the file), or, with `compressed`,
    through ``np.savez_compressed``."""
    where = os.fspath(path)
    if compressed:
        return _write_compressed(weights, where, force, progress)
    advance = progress.advance if progress is not None else None
    counts = {"layers": 0, "parameters": 0}
    names: set[str] = set()
    skipped: list[str] = []
    widened: list[str] = []
    notes: list[str] = []
    with atomic_output(path, force, notes=notes) as handle:
        archive = StoredZipWriter(handle, alignment=1)
        for layer in canonical_layers(weights):
            counts["layers"] += 1
            for role, tensor in layer.tensors.items():
                key = layer.tensor_name(role)
                dtype = np.dtype(tensor.dtype)
                if _numbers(dtype, key, where, skipped):
                    if key in names:
                        raise MappingError(f"{where}: two tensors are named {key!r}")
                    names.add(key)
                    if dtype == _BFLOAT16:
                        widened.append(key)
                    _member(archive, f"{key}.npy", tensor, advance)
                    counts["parameters"] += int(np.prod(tensor.shape, dtype=np.int64))
        if not names:
            raise UsageError(f"{where}: nothing to write: no layer holds numeric tensors")
        archive.finish()
        size = handle.tell()
    return _result(counts, len(names), size, where, skipped, notes, widened, compressed)


def _numbers(dtype: np.dtype[Any], key: str, where: str, skipped: list[str]) -> bool:
    """Whether the tensor `key` is written: strings and objects are skipped (and listed);
    dtypes NumPy lacks are refused, bfloat16 excepted (widened to float32)."""
    if dtype.hasobject or dtype.kind in "SU":
        skipped.append(f"{key} (not numbers)")
        return False
    if dtype.isbuiltin == 2 and dtype != _BFLOAT16:
        raise FormatError(
            f"{where}: tensor {key!r} has dtype {dtype}, which NumPy has no dtype "
            f"for (np.load could not read it back); an .npz holds NumPy's numeric "
            f"dtypes, and bfloat16 widened to float32"
        )
    return True


def _member(
    archive: StoredZipWriter, name: str, tensor: Tensor, advance: Callable[[int], None] | None
) -> None:
    """One tensor as the ``.npy`` file `name`: its header, then its values."""
    if isinstance(tensor, FilledTensor) and tensor.dtype != _BFLOAT16:
        dtype = np.dtype(tensor.dtype).newbyteorder("<")
        head = _npy_header(tensor.shape, dtype)
        filled_member(archive, name, tensor.shape, dtype, tensor.fill, head=head)
        if advance is not None:
            advance(len(head) + int(np.prod(tensor.shape, dtype=np.int64)) * dtype.itemsize)
        return
    deferred = tensor.deferred() if isinstance(tensor, CheckedTensor) else None
    array, check = deferred if deferred is not None else (np.asarray(tensor), None)
    if array.dtype == _BFLOAT16:  # NumPy has no bfloat16: np.load would give raw bytes back
        if check is not None:
            check()
            check = None
        array = array.astype(np.float32)  # exact: every bfloat16 is a float32
    head = _npy_header(array.shape, array.dtype.newbyteorder("<"))
    array_member(archive, name, array, head=head, check=check, advance=advance)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype[Any]) -> bytes:
    """The ``.npy`` magic and header of a C-order array, in the version ``np.save`` picks."""
    described = {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    header = io.BytesIO()
    try:
        npformat.write_array_header_1_0(header, described)
    except ValueError:  # too long for a 2-byte length
        header = io.BytesIO()
        npformat.write_array_header_2_0(header, described)
    return header.getvalue()


def _result(
    counts: dict[str, int],
    tensors: int,
    size: int,
    where: str,
    skipped: list[str],
    notes: list[str],
    widened: list[str],
    compressed: bool,
) -> WriteResult:
    if widened:
        notes.append(
            f"bfloat16 tensors written as float32 (exactly; NumPy has no bfloat16): "
            f"{', '.join(widened[:8])}"
        )
    return WriteResult(
        layers=counts["layers"],
        tensors=tensors,
        parameters=counts["parameters"],
        bytes=size,
        files=[where],
        skipped=skipped,
        notes=notes,
        detail={"compressed": compressed},
    )


def _write_compressed(
    weights: WeightSet, where: str, force: bool, progress: Progress | None
) -> WriteResult:
    converted = _Converted(weights, progress)
    arrays = converted.plan(where)
    if not arrays:
        raise UsageError(f"{where}: nothing to write: no layer holds numeric tensors")
    notes: list[str] = []
    with atomic_output(where, force, notes=notes) as handle:
        np.savez_compressed(handle, allow_pickle=False, **arrays)
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
    counts = {"layers": converted.layers, "parameters": converted.parameters}
    return _result(
        counts, len(arrays), size, where, converted.skipped, notes, converted.widened, True
    )


class _Converted:
    """Canonical arrays by full tensor name, each converted when np.savez_compressed asks for
    it; only the source layer last converted is kept, so memory stays near one layer."""

    def __init__(self, weights: WeightSet, progress: Progress | None) -> None:
        self.weights = weights
        self.progress = progress
        self.layers = 0
        self.parameters = 0
        self.skipped: list[str] = []
        self.widened: list[str] = []
        self._last: tuple[Layer, Layer] | None = None

    def plan(self, where: str) -> dict[str, LazyTensor]:
        arrays: dict[str, LazyTensor] = {}
        for layer in self.weights.weighted_layers():
            self.layers += 1
            for role, (shape, dtype) in canonical_shapes(layer).items():
                key = layer.tensor_name(role)
                if not _numbers(dtype, key, where, self.skipped):
                    continue
                if key in arrays:
                    raise MappingError(f"{where}: two tensors are named {key!r}")
                if key in _RESERVED:
                    raise MappingError(
                        f"{where}: a tensor named {key!r} cannot be stored by "
                        f"np.savez_compressed (the name of one of its arguments); rename it "
                        f"with a map file, or write the archive uncompressed"
                    )
                arrays[key] = self._deferred(layer, role, key, shape, dtype)
                self.parameters += int(np.prod(shape, dtype=np.int64))
        return arrays

    def _canonical(self, layer: Layer) -> Layer:
        if self._last is None or self._last[0] is not layer:
            if self._last is not None and self.weights.release is not None:
                self.weights.release(self._last[0])
            self._last = None  # drop the previous layer before converting the next
            self._last = (layer, to_canonical(layer))
        return self._last[1]

    def _deferred(
        self, layer: Layer, role: str, key: str, shape: tuple[int, ...], dtype: np.dtype[Any]
    ) -> LazyTensor:
        bfloat = dtype == _BFLOAT16
        if bfloat:
            self.widened.append(key)

        def load() -> np.ndarray:
            array = np.asarray(self._canonical(layer).tensors[role])
            if bfloat:  # NumPy has no bfloat16: np.load would give raw bytes back
                array = array.astype(np.float32)  # exact: every bfloat16 is a float32
            if self.progress is not None:
                self.progress.advance(array.nbytes)
            return array

        return LazyTensor(shape, np.float32 if bfloat else dtype, load)
