"""Reading PyTorch files without torch: the zip format of ``torch.save`` (1.6 and later), the
legacy pickle format before it, and TorchScript archives whose pickle is simple.

Zip format: members under one folder, ``<folder>/data.pkl`` (the pickle), ``data/<key>`` (each
storage's raw bytes, stored uncompressed), ``byteorder`` and ``version``. Legacy format: five
pickles in a row (magic number, protocol 1001, system info, the object, the storage keys),
then each storage as an 8-byte element count and its bytes. Either way the pickle goes through
`unpickle` (nothing of it runs) and each tensor is a view of the memory-mapped file, read (and
its member's CRC-32 checked) when asked for.

A checkpoint that wraps its state dict (``{"state_dict": ..., "epoch": 5}``) is read for the
state dict; the rest is listed in a note and its tensors set aside.
"""

from __future__ import annotations

import math
import mmap
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from weightconv._util.files import open_input
from weightconv._util.regions import map_input
from weightconv.codecs import zipped
from weightconv.errors import FormatError, UnsafeInputError
from weightconv.formats.torch import unpickle
from weightconv.formats.torch.names import describe, layers_from_state_dict
from weightconv.formats.torch.unpickle import ScriptModule, StorageRef, TensorRef
from weightconv.model import CheckedTensor, Provenance, SetAside, WeightSet

#: A storage's values, and the check of its CRC-32 still to run on them (None: none is due).
Storage = tuple[np.ndarray, Callable[[], None] | None]

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
#: The pickle of the legacy magic number as torch.save writes it (protocol 2).
LEGACY_HEAD = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
#: Entries of a checkpoint that hold its state dict, in the order they are looked for.
WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "network", "module")
_PICKLE_LIMIT = 1 << 30
_ZIP_MEMBERS = ("data.pkl", "version", "byteorder", "constants.pkl", ".format_version")


def sniff(head: bytes, path: Path) -> bool:
    """A zip whose first member is a ``torch.save`` record, or the legacy magic pickle."""
    if head.startswith(LEGACY_HEAD):
        return True
    if not head.startswith(ZIP_MAGIC) or len(head) < 30:
        return False
    length = int.from_bytes(head[26:28], "little")
    first = head[30 : 30 + length].decode("utf-8", "replace")
    folder, slash, rest = first.partition("/")
    return bool(folder and slash) and (
        rest in _ZIP_MEMBERS or rest.startswith(("data/", ".data/", "code/"))
    )


def read(path: str | os.PathLike[str], *, dense_inputs: Any = None) -> WeightSet:
    """Read a PyTorch state dict (or a checkpoint holding one) into layers in Caffe's layout."""
    target = Path(path)
    with open_input(target) as handle:
        head = handle.read(4)
    if head == ZIP_MAGIC:
        content, storage_of, detail = _zip(target)
    else:
        content, storage_of, detail = _legacy(target)
    tensors, set_aside, notes = _state_dict(content, str(target), detail)
    lazy = {key: _lazy(ref, storage_of, str(target), key) for key, ref in tensors.items()}
    layers = layers_from_state_dict(lazy, dense_inputs=dense_inputs, where=str(target))
    weights = WeightSet(
        layers=layers,
        source=Provenance(path=str(target), format="pt", detail=detail),
        set_aside=set_aside,
    )
    for note in notes:
        weights.note(note)
    return weights


# The zip format ------------------------------------------------------------------------------


def _zip(path: Path) -> tuple[Any, Callable[[StorageRef], Storage], dict[str, Any]]:
    size = path.stat().st_size
    with zipped.open_archive(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        if not infos:
            raise FormatError(f"{path}: an empty zip archive, not a PyTorch file")
        folder = next(iter(infos)).partition("/")[0]
        pkl = infos.get(f"{folder}/data.pkl")
        if pkl is None:
            raise FormatError(
                f"{path}: a zip without {folder}/data.pkl: not a PyTorch file"
                + (" (a NumPy .npz?)" if any(n.endswith(".npy") for n in infos) else "")
            )
        script = f"{folder}/constants.pkl" in infos or any(
            n.startswith(f"{folder}/code/") for n in infos
        )
        name = f"{path}:{pkl.filename}"
        data = zipped.read_member(archive, pkl, size, _PICKLE_LIMIT, name)
        byteorder = _record(archive, infos, f"{folder}/byteorder", size) or "little"
        version = _record(archive, infos, f"{folder}/version", size) or _record(
            archive, infos, f"{folder}/.data/version", size
        )
        try:
            content, _ = unpickle.load(data, name=name, script=script)
        except UnsafeInputError as exc:
            if not script:
                raise
            raise FormatError(
                f"{path}: a TorchScript archive (torch.jit.save) that is not a plain module "
                f"tree: {str(exc).partition(': ')[2].partition(' from the pickle')[0]}; load it "
                f"with torch.jit.load and save model.state_dict()"
            ) from None
        compressed = {
            n: zipped.read_member(archive, i, size, 8 * size, f"{path}:{n}")
            for n, i in infos.items()
            if n.startswith(f"{folder}/data/") and i.compress_type != zipfile.ZIP_STORED
        }
    if byteorder not in ("little", "big"):
        raise FormatError(f"{path}:{folder}/byteorder: {byteorder[:20]!r}, not little or big")
    detail = {
        "container": "torchscript" if script else "zip",
        "archive": folder,
        "version": version,
        "byteorder": byteorder,
    }
    mapping: list[mmap.mmap] = []
    checked: set[str] = set()

    def storage_of(ref: StorageRef) -> Storage:
        member = f"{folder}/data/{ref.key}"
        info = infos.get(member)
        where = f"{path}:{member}"
        if info is None:
            raise FormatError(f"{where}: missing; the pickle declares storage {ref.key!r}")
        nbytes = ref.numel * ref.dtype.itemsize
        if info.file_size != nbytes:
            raise FormatError(
                f"{where}: holds {info.file_size:,} bytes, the pickle declares {ref.numel:,} "
                f"{ref.dtype} elements ({nbytes:,} bytes)"
            )
        check: Callable[[], None] | None = None
        if member in compressed:  # checked as it was inflated
            buffer: Any = compressed[member]
            start = 0
        else:
            start = zipped.stored_offset(path, info, size)
            if not mapping:
                with open_input(path) as handle:
                    mapping.append(map_input(handle))
            buffer = mapping[0]

            def check() -> None:
                if member not in checked:
                    zipped.check_stored_crc(path, start, info, where)  # maps none of it
                    checked.add(member)

        dtype = ref.dtype.newbyteorder(">" if byteorder == "big" else "<")
        return np.frombuffer(buffer, dtype=dtype, count=ref.numel, offset=start), check

    return content, storage_of, detail


def _record(
    archive: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], name: str, size: int
) -> str | None:
    info = infos.get(name)
    if info is None:
        return None
    return zipped.read_member(archive, info, size, 1024, name).decode("utf-8", "replace").strip()


# The legacy format ---------------------------------------------------------------------------


def _legacy(path: Path) -> tuple[Any, Callable[[StorageRef], Storage], dict[str, Any]]:
    with open_input(path) as handle:
        head = handle.read(512)
        if len(head) >= 262 and head[257:262] == b"ustar":
            raise FormatError(
                f"{path}: a tar archive (torch < 0.4); load it with an old torch and save it again"
            )
        try:
            mapping = map_input(handle)
        except ValueError:
            raise FormatError(f"{path}: file is empty") from None
    name = str(path)
    magic, at = _plain(mapping, 0, name, "its magic number")
    if magic != LEGACY_MAGIC:
        raise FormatError(f"{path}: not a PyTorch file (no torch.save magic number)")
    protocol, at = _plain(mapping, at, name, "its protocol version")
    if protocol != LEGACY_PROTOCOL:
        raise FormatError(f"{path}: legacy protocol {protocol!r:.20}, not {LEGACY_PROTOCOL}")
    info, at = _plain(mapping, at, name, "its system info")
    little = info.get("little_endian", True) if isinstance(info, dict) else True
    content, at = unpickle.load(mapping, at, name=name, legacy=True)
    keys, at = _plain(mapping, at, name, "its list of storages")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise FormatError(f"{path}: the list of storages is a {type(keys).__name__}")
    refs = _storages_of(content)
    order: Literal["<", ">"] = "<" if little else ">"
    places: dict[str, int] = {}
    for key in keys:
        ref = refs.get(key)
        if ref is None:
            raise FormatError(f"{path}: storage {key!r} is listed but no tensor uses it")
        if at + 8 > len(mapping):
            raise FormatError(f"{path}: truncated: storage {key!r} is missing")
        count = int(np.frombuffer(mapping, dtype=order + "i8", count=1, offset=at)[0])
        nbytes = ref.numel * ref.dtype.itemsize
        if count != ref.numel or at + 8 + nbytes > len(mapping):
            raise FormatError(
                f"{path}: storage {key!r} at byte {at:,} declares {count:,} elements, the "
                f"pickle {ref.numel:,}, and {len(mapping) - at - 8:,} bytes remain"
            )
        places[key] = at + 8
        at += 8 + nbytes
    missing = sorted(set(refs) - set(places))
    if missing:
        raise FormatError(f"{path}: storage {missing[0]!r} is used but not in the file")

    def storage_of(ref: StorageRef) -> Storage:
        dtype = ref.dtype.newbyteorder(order)
        return np.frombuffer(mapping, dtype=dtype, count=ref.numel, offset=places[ref.key]), None

    detail = {"container": "legacy", "byteorder": "little" if little else "big"}
    return content, storage_of, detail


def _plain(buffer: Any, start: int, name: str, what: str) -> tuple[Any, int]:
    if start >= len(buffer):
        raise FormatError(f"{name}: truncated before {what}")
    try:
        return unpickle.load(buffer, start, name=name, legacy=True)
    except UnsafeInputError:
        raise
    except FormatError:
        if start == 0:
            raise FormatError(f"{name}: not a PyTorch file (no torch.save magic number)") from None
        raise


def _storages_of(content: Any) -> dict[str, StorageRef]:
    found: dict[str, StorageRef] = {}
    for _, ref in _walk(content, ""):
        found[ref.storage.key] = ref.storage
    return found


# The state dict ------------------------------------------------------------------------------


def _walk(value: Any, prefix: str) -> list[tuple[str, TensorRef]]:
    """Every tensor in `value` with its dotted path (dict keys, list indices, attributes)."""
    found: list[tuple[str, TensorRef]] = []
    stack: list[tuple[str, Any, int]] = [(prefix, value, 0)]
    while stack:
        where, item, depth = stack.pop()
        if depth > 64:
            raise FormatError(f"objects nested more than 64 deep at {where!r}")
        if isinstance(item, TensorRef):
            found.append((where, item))
            continue
        if isinstance(item, ScriptModule):
            item = item.attributes
        if isinstance(item, dict):
            children = [(str(k), v) for k, v in item.items()]
        elif isinstance(item, list | tuple):
            children = [(str(i), v) for i, v in enumerate(item)]
        else:
            continue
        for key, child in reversed(children):
            stack.append((f"{where}.{key}" if where else key, child, depth + 1))
    return found


def _state_dict(
    content: Any, name: str, detail: dict[str, Any]
) -> tuple[dict[str, TensorRef], list[SetAside], list[str]]:
    if isinstance(content, ScriptModule):
        content = content.attributes
    if not isinstance(content, dict):
        raise FormatError(
            f"{name}: holds a {type(content).__name__}, not a state dict (a dict of tensors)"
        )
    wrapper = next(
        (key for key in WRAPPERS if isinstance(content.get(key), dict) and _walk(content[key], "")),
        None,
    )
    notes: list[str] = []
    set_aside: list[SetAside] = []
    if wrapper is None:
        part = content
    else:
        detail["state_dict"] = wrapper
        part = content[wrapper]
        others = [(str(k), v) for k, v in content.items() if k != wrapper]
        if others:
            listed = ", ".join(f"{k} ({describe(v)})" for k, v in others)
            notes.append(f"read the state dict under {wrapper!r}; left out: {listed}")
        for key, value in others:
            for tensor_name, ref in _walk(value, key):
                set_aside.append(_aside(tensor_name, ref, f"checkpoint entry {key!r}"))
    tensors: dict[str, TensorRef] = {}
    skipped = []
    for key, value in part.items():
        if not isinstance(key, str):
            raise FormatError(f"{name}: a state dict key is a {type(key).__name__}, not a name")
        found = _walk(value, key)
        plain = not isinstance(value, dict | list | tuple | ScriptModule)
        if not found and plain and detail.get("container") != "torchscript":
            skipped.append(f"{key} ({describe(value)})")
        for tensor_name, ref in found:
            tensors[tensor_name] = ref
    if skipped:
        notes.append(f"not tensors, left out: {', '.join(skipped[:12])}")
    if not tensors and not set_aside:
        raise FormatError(f"{name}: holds no tensors")
    return tensors, set_aside, notes


def _aside(name: str, ref: TensorRef, reason: str) -> SetAside:
    count = math.prod(ref.shape)
    return SetAside(
        name, ref.shape, str(ref.storage.dtype), count * ref.storage.dtype.itemsize, reason
    )


def _lazy(
    ref: TensorRef, storage_of: Callable[[StorageRef], Storage], path: str, key: str
) -> CheckedTensor:
    count = math.prod(ref.shape)
    if count:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
        if last >= ref.storage.numel:
            raise FormatError(
                f"{path}: tensor {key!r} of size {list(ref.shape)}, stride {list(ref.stride)} "
                f"from offset {ref.offset} reaches element {last:,} of a storage of "
                f"{ref.storage.numel:,}"
            )

    def view(flat: np.ndarray) -> np.ndarray:
        if not count:
            return np.zeros(ref.shape, dtype=flat.dtype)
        contiguous = all(
            size == 1 or stride == math.prod(ref.shape[axis + 1 :])
            for axis, (size, stride) in enumerate(zip(ref.shape, ref.stride, strict=True))
        )
        if contiguous:
            return flat[ref.offset : ref.offset + count].reshape(ref.shape)
        item = flat.dtype.itemsize
        return np.lib.stride_tricks.as_strided(
            flat[ref.offset :],
            shape=ref.shape,
            strides=tuple(s * item for s in ref.stride),
            writeable=False,
        )

    def load() -> np.ndarray:
        flat, check = storage_of(ref.storage)
        if check is not None:
            check()
        return view(flat)

    def deferred() -> tuple[np.ndarray, Callable[[], None]] | None:
        flat, check = storage_of(ref.storage)
        return (view(flat), check) if check is not None else None

    return CheckedTensor(ref.shape, ref.storage.dtype, load, None, deferred)
