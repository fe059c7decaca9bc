"""TensorFlow-1 checkpoints, read and written without TensorFlow.

V2 ("TensorBundle", every TensorFlow since 2016): ``PREFIX.index`` is a LevelDB-format
table (`sstable`) whose empty key holds a ``BundleHeaderProto`` and whose other keys
are tensor names holding ``BundleEntryProto``s: dtype, shape, which data shard, the
byte offset and size of the tensor there, and the masked CRC32C of those bytes. The
bytes live in ``PREFIX.data-00000-of-0000N``. A partitioned variable's entry lists
its slices instead; each slice is stored under a binary slice key (`ordered_code`).
V1 (older single-file checkpoints) is read by `ckpt_v1`.

Reading only parses the index: tensors are `LazyTensor`s whose bytes are mapped,
checked against their CRC32C and viewed as arrays when used. Writing streams each
tensor into its shard and writes the index last, all to temporary names renamed
into place at the end.

Example::

    ws = ckpt.read("model.ckpt-1000")             # or the .index, a .data file, the folder
    ckpt.write(ws, "out/model.ckpt")  # out/model.ckpt.index, .data-00000-of-00001
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from weightconv._util.files import chunks, open_input, publish, temporary_beside
from weightconv._util.memory import release_pages
from weightconv._util.progress import Progress
from weightconv.codecs import crc32c, ordered_code, protowire, sstable
from weightconv.errors import FormatError, MappingError, OutputExistsError, UsageError
from weightconv.formats.base import WriteResult
from weightconv.formats.ckpt import dtypes as tf_types
from weightconv.model import (
    CANONICAL,
    Kind,
    Layer,
    LazyTensor,
    Provenance,
    WeightSet,
    join_tensor_name,
    split_tensor_name,
)
from weightconv.model.canonical import canonical_layers

INDEX_SUFFIX = ".index"
STATE_FILE = "checkpoint"
DATA_RE = re.compile(r"^(?P<prefix>.+)\.data-(?P<shard>\d{5})-of-(?P<count>\d{5})$")
OBJECT_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
#: Written into the header, as TensorFlow's BundleWriter does.
BUNDLE_VERSION_PRODUCER = 1
WRITE_CHUNK_BYTES = 16 << 20
MAX_SHARDS = 99999

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


# Locating a checkpoint ---------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A checkpoint on disk: a V2 prefix (with ``.index``) or a V1 file."""

    version: int
    path: Path

    @property
    def index(self) -> Path:
        return Path(f"{self.path}{INDEX_SUFFIX}")


def _state_file_target(folder: Path) -> Path | None:
    state = folder / STATE_FILE
    if not state.is_file():
        return None
    from google.protobuf import text_format

    from weightconv._proto import tf_checkpoint_pb2

    message = tf_checkpoint_pb2.CheckpointState()
    try:
        text_format.Parse(state.read_text(encoding="utf-8", errors="replace"), message)
    except text_format.ParseError as exc:
        raise FormatError(f"{state}: not a checkpoint state file: {exc}") from None
    if not message.model_checkpoint_path:
        raise FormatError(f"{state}: names no model_checkpoint_path")
    named = Path(message.model_checkpoint_path)
    candidates = [named] if named.is_absolute() else [folder / named]
    candidates.append(folder / named.name)  # state files written elsewhere keep absolute paths
    for candidate in candidates:
        if Path(f"{candidate}{INDEX_SUFFIX}").is_file() or candidate.is_file():
            return candidate
    raise FormatError(
        f"{state}: its latest checkpoint {message.model_checkpoint_path!r} is not in {folder}"
    )


def locate(path: str | os.PathLike[str]) -> Location | None:
    """What checkpoint `path` names, or None when it names none.

    Accepts a V2 prefix, its ``.index`` or a ``.data-*`` file, a folder holding a
    ``checkpoint`` state file (its latest checkpoint) or a single ``*.index``, or a
    V1 checkpoint file.
    """
    target = Path(path)
    if target.is_dir():
        latest = _state_file_target(target)
        if latest is None:
            indexes = sorted(target.glob(f"*{INDEX_SUFFIX}"))
            if len(indexes) != 1:
                return None
            latest = Path(str(indexes[0])[: -len(INDEX_SUFFIX)])
        return locate(latest)
    text = str(target)
    if text.endswith(INDEX_SUFFIX) and target.is_file():
        return Location(2, Path(text[: -len(INDEX_SUFFIX)]))
    match = DATA_RE.match(text)
    if match and Path(match["prefix"] + INDEX_SUFFIX).is_file():
        return Location(2, Path(match["prefix"]))
    if Path(text + INDEX_SUFFIX).is_file():
        return Location(2, target)
    if target.is_file() and _ends_with_table_magic(target):
        return Location(1, target)
    return None


def _ends_with_table_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() < sstable.FOOTER_SIZE:
                return False
            handle.seek(-8, os.SEEK_END)
            return sstable.has_table_footer(handle.read(8))
    except OSError:
        return False


def claims(path: Path) -> bool:
    """True when `path` names a checkpoint (by location, not by its first bytes)."""
    return locate(path) is not None


def sniff(head: bytes, path: Path) -> bool:
    return False


def data_filename(prefix: str | os.PathLike[str], shard: int, count: int) -> Path:
    return Path(f"{os.fspath(prefix)}.data-{shard:05d}-of-{count:05d}")


# Reading -----------------------------------------------------------------------------------


@dataclass
class TensorInfo:
    """One tensor of a checkpoint: what the index says, and how to get its values."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]
    nbytes: int = 0
    slices: int = 0
    #: (shard, byte offset) of the tensor's data: the order it was written in.
    position: tuple[int, int] = (0, 0)
    release: Callable[[], Any] | None = None

    @property
    def dtype_name(self) -> str:
        return tf_types.name(self.dtype)


@dataclass
class Entry:
    name: str
    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int
    slices: list[list[tuple[int, int]]] = field(default_factory=list)


class BundleReader:
    """A V2 checkpoint: the parsed index, and data shards mapped on first use."""

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        from weightconv._proto import tf_checkpoint_pb2 as pb

        self.prefix = os.fspath(prefix)
        self.index_path = self.prefix + INDEX_SUFFIX
        self.entries: dict[str, Entry] = {}
        self.slice_entries: dict[tuple[str, tuple[tuple[int, int], ...]], Entry] = {}
        self._maps: dict[int, mmap.mmap | bytes] = {}
        label = self.index_path
        with sstable.TableReader(self.index_path, mapped=False) as table:
            items = table.items()
            first = next(items, None)
            if first is None or first[0] != b"":
                raise FormatError(
                    f"{label}: no bundle header (the table's first key is "
                    f"{first[0]!r} rather than empty)"
                    if first
                    else f"{label}: empty table, no bundle header"
                )
            header = pb.BundleHeaderProto()
            self._parse(header, first[1], f"{label}: bundle header")
            self.num_shards = header.num_shards
            self.big_endian = header.endianness == pb.BundleHeaderProto.BIG
            self.producer = header.version.producer
            if header.version.min_consumer > BUNDLE_VERSION_PRODUCER:
                raise FormatError(
                    f"{label}: written for readers of bundle version "
                    f">= {header.version.min_consumer}; this reader knows "
                    f"version {BUNDLE_VERSION_PRODUCER}"
                )
            if not 1 <= self.num_shards <= MAX_SHARDS:
                raise FormatError(f"{label}: header says {self.num_shards} data shards")
            for key, value in items:
                entry_pb = pb.BundleEntryProto()
                if ordered_code.is_slice_key(key):
                    name, extents = ordered_code.decode_slice_key(key)
                    self._parse(entry_pb, value, f"{label}: slice of {name!r}")
                    self.slice_entries[(name, tuple(extents))] = self._entry(name, entry_pb, label)
                    continue
                name = key.decode("utf-8", errors="surrogateescape")
                self._parse(entry_pb, value, f"{label}: entry {name!r}")
                self.entries[name] = self._entry(name, entry_pb, label)

    @staticmethod
    def _parse(message: Any, value: memoryview, what: str) -> None:
        from google.protobuf.message import DecodeError

        try:
            message.ParseFromString(bytes(value))
        except DecodeError as exc:
            raise FormatError(f"{what}: not a valid record ({exc})") from None

    def _entry(self, name: str, entry_pb: Any, label: str) -> Entry:
        shape = tuple(int(d.size) for d in entry_pb.shape.dim)
        if any(n < 0 for n in shape):
            raise FormatError(f"{label}: tensor {name!r} has shape {list(shape)}")
        slices = [
            [(int(e.start), int(e.length) if e.HasField("length") else -1) for e in s.extent]
            for s in entry_pb.slices
        ]
        if not slices and not 0 <= entry_pb.shard_id < self.num_shards:
            raise FormatError(
                f"{label}: tensor {name!r} is in shard {entry_pb.shard_id} of {self.num_shards}"
            )
        return Entry(
            name,
            int(entry_pb.dtype),
            shape,
            int(entry_pb.shard_id),
            int(entry_pb.offset),
            int(entry_pb.size),
            int(entry_pb.crc32c),
            slices,
        )

    def close(self) -> None:
        for mapping in self._maps.values():
            if isinstance(mapping, mmap.mmap):
                with contextlib.suppress(BufferError):
                    mapping.close()
        self._maps.clear()

    def _shard(self, shard: int, tensor: str) -> mmap.mmap | bytes:
        if shard not in self._maps:
            path = data_filename(self.prefix, shard, self.num_shards)
            if not path.exists():
                raise FormatError(f"{path}: missing; the index lists tensor {tensor!r} in it")
            with open_input(path) as handle:
                if os.fstat(handle.fileno()).st_size == 0:
                    self._maps[shard] = b""
                else:
                    self._maps[shard] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[shard]

    def tensors(self) -> list[TensorInfo]:
        """Every tensor, in key order; partitioned variables once, as whole tensors."""
        infos = []
        for entry in self.entries.values():
            nbytes = 0
            if entry.dtype != tf_types.STRING and entry.dtype in tf_types.DTYPES:
                itemsize = (
                    2
                    if entry.dtype == tf_types.BFLOAT16
                    else (np.dtype(tf_types.DTYPES[entry.dtype][1] or "u1").itemsize)
                )
                nbytes = int(np.prod(entry.shape, dtype=np.int64)) * itemsize
            position = (entry.shard, entry.offset)
            if entry.slices:
                pieces = [e for (name, _), e in self.slice_entries.items() if name == entry.name]
                position = min(((e.shard, e.offset) for e in pieces), default=(1 << 31, 0))
            infos.append(
                TensorInfo(
                    entry.name,
                    entry.dtype,
                    entry.shape,
                    _bind(self.read, entry.name),
                    nbytes,
                    len(entry.slices),
                    position,
                    _bind(self.release, entry.name),
                )
            )
        return infos

    def read(self, name: str) -> np.ndarray:
        """The values of tensor `name`, checked against the stored CRC32C."""
        entry = self.entries.get(name)
        if entry is None:
            raise MappingError(f"{self.index_path}: no tensor {name!r}")
        if entry.slices:
            return self._assemble(entry)
        return self._read_entry(entry)

    def _read_entry(self, entry: Entry) -> np.ndarray:
        what = f"{self.prefix}: tensor {entry.name!r}"
        dtype = tf_types.numpy_dtype(entry.dtype, what)
        mapping = self._shard(entry.shard, entry.name)
        data_path = data_filename(self.prefix, entry.shard, self.num_shards)
        if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > len(mapping):
            raise FormatError(
                f"{what}: bytes {entry.offset}..{entry.offset + entry.size} lie "
                f"outside {data_path} ({len(mapping)} bytes)"
            )
        raw = np.frombuffer(mapping, dtype=np.uint8, count=entry.size, offset=entry.offset)
        if entry.dtype == tf_types.STRING:
            strings, actual = _decode_strings(raw, entry.shape, what)
        else:
            actual = _crc_and_release(raw)
        if actual != crc32c.unmask(entry.crc):
            raise FormatError(
                f"{what}: checksum mismatch in {data_path} (stored "
                f"{crc32c.unmask(entry.crc):#010x}, computed {actual:#010x}); "
                f"the checkpoint is corrupt"
            )
        if entry.dtype == tf_types.STRING:
            return strings
        count = int(np.prod(entry.shape, dtype=np.int64))
        if count * dtype.itemsize != entry.size:
            raise FormatError(
                f"{what}: {entry.size} bytes stored for shape "
                f"{list(entry.shape)} of {tf_types.name(entry.dtype)} "
                f"({count * dtype.itemsize} expected)"
            )
        if self.big_endian:
            dtype = dtype.newbyteorder(">")
        return raw.view(dtype).reshape(entry.shape)

    def release(self, name: str) -> None:
        """Let the kernel drop the mapped pages of tensor `name` (values stay readable)."""
        entry = self.entries.get(name)
        if entry is None or entry.slices or entry.shard not in self._maps:
            return
        mapping = self._maps[entry.shard]
        if isinstance(mapping, mmap.mmap) and 0 <= entry.offset <= entry.offset + entry.size <= (
            len(mapping)
        ):
            release_pages(
                np.frombuffer(mapping, dtype=np.uint8, count=entry.size, offset=entry.offset)
            )

    def _assemble(self, entry: Entry) -> np.ndarray:
        what = f"{self.prefix}: partitioned tensor {entry.name!r}"
        dtype = tf_types.numpy_dtype(entry.dtype, what)
        full = np.empty(entry.shape, dtype=dtype)
        covered = 0
        for extents in entry.slices:
            if len(extents) != len(entry.shape):
                raise FormatError(
                    f"{what}: a slice has rank {len(extents)}, the tensor {len(entry.shape)}"
                )
            piece = self.slice_entries.get((entry.name, tuple(extents)))
            if piece is None:
                raise FormatError(
                    f"{what}: slice {_describe_extents(extents)} is listed but not stored"
                )
            region = _region(extents, entry.shape, what)
            values = self._read_entry(piece)
            target_shape = full[region].shape
            if values.shape != target_shape:
                raise FormatError(
                    f"{what}: slice {_describe_extents(extents)} holds shape "
                    f"{list(values.shape)}, expected {list(target_shape)}"
                )
            full[region] = values
            covered += values.size
        if covered != full.size:
            raise FormatError(f"{what}: its slices cover {covered} of {full.size} elements")
        full.flags.writeable = False
        return full


def _crc_and_release(raw: np.ndarray) -> int:
    """CRC32C of mapped bytes, dropping each piece's pages once summed, so checking a large
    tensor does not leave all of it resident (whoever uses it next maps it back in)."""
    crc = 0
    for start in range(0, raw.size, WRITE_CHUNK_BYTES):
        piece = raw[start : start + WRITE_CHUNK_BYTES]
        crc = crc32c.extend(crc, piece)
        release_pages(piece)
    return crc


def _bind(action: Callable[[str], Any], name: str) -> Callable[[], Any]:
    return lambda: action(name)


def _region(extents: list[tuple[int, int]], shape: tuple[int, ...], what: str) -> tuple[slice, ...]:
    region = []
    for (start, length), size in zip(extents, shape, strict=True):
        stop = size if length < 0 else start + length
        if not 0 <= start <= stop <= size:
            raise FormatError(
                f"{what}: slice {_describe_extents(extents)} lies outside shape {list(shape)}"
            )
        region.append(slice(start, stop))
    return tuple(region)


def _describe_extents(extents: list[tuple[int, int]]) -> str:
    return ":".join("-" if length < 0 else f"{start},{length}" for start, length in extents)


def _read_varint(raw: np.ndarray, pos: int, what: str) -> tuple[int, int]:
    try:
        return protowire.read_varint(memoryview(raw), pos, raw.size)
    except protowire.WireError:
        raise FormatError(f"{what}: string lengths are truncated or corrupt") from None


def _decode_strings(raw: np.ndarray, shape: tuple[int, ...], what: str) -> tuple[np.ndarray, int]:
    """``[varint64 length]*n [masked CRC32C of the lengths] [bytes]*n``; returns the strings
    and the tensor's CRC32C, which covers each length as a fixed-width integer (not its
    varint bytes), the 4-byte length checksum and the string bytes."""
    count = int(np.prod(shape, dtype=np.int64))
    lengths = []
    pos = 0
    crc = 0
    for _ in range(count):
        length, pos = _read_varint(raw, pos, what)
        lengths.append(length)
        crc = crc32c.extend(crc, struct.pack("<I" if length <= 0xFFFFFFFF else "<Q", length))
    if pos + 4 > raw.size:
        raise FormatError(f"{what}: string data is truncated")
    stored_bytes = raw[pos : pos + 4].tobytes()
    (stored,) = struct.unpack("<I", stored_bytes)
    if crc32c.unmask(stored) != crc:
        raise FormatError(f"{what}: checksum of the string lengths does not match")
    crc = crc32c.extend(crc, stored_bytes)
    pos += 4
    if pos + sum(lengths) > raw.size:
        raise FormatError(
            f"{what}: string data is truncated ({raw.size - pos} bytes for {sum(lengths)})"
        )
    out = np.empty(count, dtype=object)
    for i, length in enumerate(lengths):
        out[i] = raw[pos : pos + length].tobytes()
        pos += length
    crc = crc32c.extend(crc, raw[pos - sum(lengths) : pos])
    return out.reshape(shape), crc


def _encode_strings(values: np.ndarray) -> tuple[bytes, bytes, int]:
    """The string tensor layout TensorFlow writes: (lengths and their checksum, the bytes,
    the tensor's CRC32C as `_decode_strings` defines it)."""
    items = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values.reshape(-1)]
    prefix = bytearray()
    crc = 0
    for item in items:
        prefix += protowire.encode_varint(len(item))
        crc = crc32c.extend(crc, struct.pack("<I" if len(item) <= 0xFFFFFFFF else "<Q", len(item)))
    length_checksum = struct.pack("<I", crc32c.mask(crc))
    prefix += length_checksum
    payload = b"".join(items)
    return bytes(prefix), payload, crc32c.extend(crc32c.extend(crc, length_checksum), payload)


def list_tensors(path: str | os.PathLike[str]) -> tuple[Location, list[TensorInfo], dict[str, Any]]:
    """The tensors of the checkpoint at `path` (lazy) and facts about the file."""
    where = locate(path)
    if where is None:
        raise FormatError(
            f"{path}: not a TensorFlow checkpoint (no {path}{INDEX_SUFFIX}, no "
            f"checkpoint state file, not a V1 checkpoint file)"
        )
    if where.version == 1:
        from weightconv.formats.ckpt import v1 as ckpt_v1

        infos, detail = ckpt_v1.list_tensors(where.path)
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
    Training state (``global_step``, optimizer slots, the object graph) is left out
    with a note unless `flat`, which keeps every tensor as its own layer under its
    full name. `strip_scope` removes a leading scope such as ``"vgg_16/"``.
    """
    where, infos, detail = list_tensors(path)
    # Layers in the order their data was written (the network's order for files we write;
    # name order for TensorFlow's Saver, which sorts), not the index's name order.
    infos = sorted(infos, key=lambda info: info.position)
    weights = WeightSet(source=Provenance(path=str(where.path), format="ckpt", detail=detail))
    layers: dict[str, Layer] = {}
    skipped: list[str] = []
    unscoped: list[str] = []
    for info in infos:
        name = info.name
        if strip_scope:
            if name.startswith(strip_scope):
                name = name[len(strip_scope) :]
            else:
                unscoped.append(info.name)
        tensor = LazyTensor(info.shape, _lazy_dtype(info), info.load, info.release)
        if flat:
            layers[name] = Layer(
                name=name,
                tensors={"value": tensor},
                source_type="tensor",
                layout=CANONICAL,
                stored_names={"value": name},
            )
            continue
        if _is_training_state(info):
            skipped.append(info.name)
            continue
        base = name[: -len(OBJECT_SUFFIX)] if name.endswith(OBJECT_SUFFIX) else name
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
    if skipped:
        weights.note(
            f"left out {len(skipped)} training-state tensor(s) "
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


def _is_training_state(info: TensorInfo) -> bool:
    name = info.name
    leaf = name[: -len(OBJECT_SUFFIX)] if name.endswith(OBJECT_SUFFIX) else name
    return (
        info.dtype == tf_types.STRING
        or leaf in _TRAINING_STATE_NAMES
        or ".OPTIMIZER_SLOT" in name
        or leaf.startswith("optimizer/")
        or _OPTIMIZER_SLOTS.search(leaf) is not None
    )


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


# Writing -----------------------------------------------------------------------------------


@dataclass
class _Planned:
    layer_index: int
    role: str
    name: str
    nbytes: int
    shard: int = 0


def _plan(
    weights: WeightSet, shards: int, max_shard_bytes: int | None, target: str
) -> tuple[list[_Planned], int]:
    planned: list[_Planned] = []
    seen: dict[str, str] = {}
    for index, layer in enumerate(weights.layers):
        for role, tensor in layer.tensors.items():
            name = layer.tensor_name(role)
            if name in seen:
                raise MappingError(f"{target}: two tensors would both be named {name!r}")
            seen[name] = layer.name
            planned.append(_Planned(index, role, name, int(tensor.nbytes)))
    if not planned:
        raise MappingError(f"{target}: nothing to write (no tensors)")
    total = sum(p.nbytes for p in planned)
    if max_shard_bytes:
        shard, used = 0, 0
        for item in planned:
            if used and used + item.nbytes > max_shard_bytes:
                shard, used = shard + 1, 0
            item.shard = shard
            used += item.nbytes
        return planned, shard + 1
    shards = max(1, min(shards, len(planned)))
    share = total / shards
    done = 0
    previous = 0
    for position, item in enumerate(planned):
        by_size = min(shards - 1, int(done // share)) if share else 0
        needed = shards - (len(planned) - position)  # leave one tensor for each later shard
        item.shard = 0 if position == 0 else min(previous + 1, max(previous, by_size, needed))
        previous = item.shard
        done += item.nbytes
    return planned, shards


def output_paths(prefix: str | os.PathLike[str], shards: int = 1) -> list[Path]:
    base = os.fspath(prefix)
    return [Path(base + INDEX_SUFFIX)] + [data_filename(base, i, shards) for i in range(shards)]


def check_output(path: str | os.PathLike[str], force: bool) -> None:
    """Refuse when a checkpoint with this prefix exists (unless `force`)."""
    prefix = _prefix_of(path)
    folder = prefix.parent
    if not folder.is_dir():
        raise UsageError(f"{prefix}: folder {folder} does not exist")
    existing = [
        p
        for p in [
            Path(f"{prefix}{INDEX_SUFFIX}"),
            *folder.glob(f"{glob_escape(prefix.name)}.data-*-of-*"),
        ]
        if p.exists()
    ]
    if existing and not force:
        raise OutputExistsError(
            f"{prefix}: a checkpoint with this prefix exists "
            f"({existing[0].name}); pass --force to overwrite it"
        )


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _prefix_of(path: str | os.PathLike[str]) -> Path:
    text = os.fspath(path)
    if text.endswith(INDEX_SUFFIX):
        text = text[: -len(INDEX_SUFFIX)]
    return Path(text)


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

    Tensor names are ``layer/role`` (or the name the tensor was read under).
    Tensors go to `shards` data files of about equal size, or to as many as needed
    so that none exceeds `max_shard_size`. The ``checkpoint`` state file in the
    folder is pointed at the new prefix unless `write_state` is false.
    """
    from weightconv._proto import tf_checkpoint_pb2 as pb

    prefix = _prefix_of(path)
    check_output(prefix, force)
    planned, count = _plan(weights, shards, max_shard_size, str(prefix))
    temps: list[tuple[Path, Path]] = []
    entries: dict[bytes, bytes] = {}
    handles: dict[int, BinaryIO] = {}
    offsets = dict.fromkeys(range(count), 0)
    try:
        for shard in range(count):
            final = data_filename(prefix, shard, count)
            handles[shard] = _temp_beside(final, temps)
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
                array = np.asarray(layer.tensors[item.role])
                handle = handles[item.shard]
                entry = _write_tensor(handle, array, f"{prefix}: tensor {item.name!r}", progress)
                entry.shard_id = item.shard
                entry.offset = offsets[item.shard]
                offsets[item.shard] += entry.size
                entries[item.name.encode("utf-8")] = entry.SerializeToString()
        for handle in handles.values():
            handle.close()
        header = pb.BundleHeaderProto(num_shards=count, endianness=pb.BundleHeaderProto.LITTLE)
        header.version.producer = BUNDLE_VERSION_PRODUCER
        index_handle = _temp_beside(Path(f"{prefix}{INDEX_SUFFIX}"), temps)
        with index_handle:
            table = sstable.TableWriter(index_handle)
            table.add(b"", header.SerializeToString())
            for key in sorted(entries):
                table.add(key, entries[key])
            index_bytes = table.finish()
        _remove_stale_shards(prefix, count)
        for temp, final in temps:  # data first, the index last: it is what makes a checkpoint
            publish(temp, final)
        temps.clear()
    except BaseException:
        for handle in handles.values():
            handle.close()
        for temp, _ in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        raise
    if write_state:
        update_state_file(prefix)
    return WriteResult(
        layers=len(weights.weighted_layers()),
        tensors=len(planned),
        parameters=weights.parameter_count,
        bytes=sum(offsets.values()) + index_bytes,
        files=[str(p) for p in output_paths(prefix, count)],
        detail={"shards": count},
    )


def _temp_beside(final: Path, temps: list[tuple[Path, Path]]) -> BinaryIO:
    fd, temporary = temporary_beside(final)
    temps.append((temporary, final))
    return os.fdopen(fd, "wb")


def _remove_stale_shards(prefix: Path, count: int) -> None:
    """With --force, data files of an older checkpoint with another shard count go."""
    keep = {data_filename(prefix, i, count).name for i in range(count)}
    for stale in prefix.parent.glob(f"{glob_escape(prefix.name)}.data-*-of-*"):
        if stale.name not in keep and DATA_RE.match(str(stale)):
            stale.unlink()


def _write_tensor(handle: BinaryIO, array: np.ndarray, what: str, progress: Progress | None) -> Any:
    from weightconv._proto import tf_checkpoint_pb2 as pb

    entry = pb.BundleEntryProto()
    entry.dtype = tf_types.from_numpy(array.dtype, what)  # type: ignore[assignment]
    entry.shape.SetInParent()  # present even for scalars, as TensorFlow writes it
    for n in array.shape:
        entry.shape.dim.add(size=int(n))
    if entry.dtype == tf_types.STRING:
        lengths, payload, crc = _encode_strings(array)
        handle.write(lengths)
        handle.write(payload)
        entry.size = len(lengths) + len(payload)
        entry.crc32c = crc32c.mask(crc)
        return entry
    dtype = array.dtype.newbyteorder("<")
    crc = 0
    size = 0
    for chunk in chunks(array, WRITE_CHUNK_BYTES):
        data = np.ascontiguousarray(chunk, dtype=dtype).reshape(-1).view(np.uint8)
        handle.write(data)
        crc = crc32c.extend(crc, data)
        size += data.nbytes
        if progress is not None:
            progress.advance(data.nbytes)
        del data
        release_pages(chunk)
    entry.size = size
    entry.crc32c = crc32c.mask(crc)
    return entry


def update_state_file(prefix: Path) -> Path:
    """Point the folder's ``checkpoint`` state file at `prefix`, keeping earlier entries."""
    from google.protobuf import text_format

    from weightconv._proto import tf_checkpoint_pb2 as pb

    state_path = prefix.parent / STATE_FILE
    state = pb.CheckpointState()
    if state_path.is_file():
        with contextlib.suppress(text_format.ParseError, UnicodeDecodeError):
            text_format.Parse(state_path.read_text(encoding="utf-8"), state)
    name = prefix.name
    paths = [p for p in state.all_model_checkpoint_paths if p != name] + [name]
    fresh = pb.CheckpointState(model_checkpoint_path=name, all_model_checkpoint_paths=paths)
    fd, temp = temporary_beside(state_path)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text_format.MessageToString(fresh))
    publish(temp, state_path)
    return state_path
