"""Keras HDF5 weights: Keras 3 ``.weights.h5``, the legacy (Keras 2) ``.h5`` layouts, ``.keras``.

Read without Keras, all recognised by content:

- Keras 2 ``save_weights`` ``.h5``: root attrs ``layer_names`` (split into ``layer_names0``,
  ``layer_names1``... when long), ``backend``, ``keras_version``; one group per layer whose
  attr ``weight_names`` (``conv1/kernel:0``) names its datasets, nested at that path.
- The same under ``model_weights`` for a full ``model.save("m.h5")``, whose root attr
  ``model_config`` gives layer classes; ``optimizer_weights`` is training state, left out.
- Keras 3's legacy ``.h5`` (``weight_names`` are variable paths without ``:0``).
- Keras 3 ``.weights.h5``: ``layers/<path>/vars/<i>``, where a path is the snake-cased
  class name with ``_1``, ``_2``... counters in container order (``layers/conv2d_1``), not
  the layer's name; nested models recurse (``layers/functional/layers/dense``); ``vars`` holds
  the model's own variables and ``optimizer/vars`` the optimizer's (left out).
- ``.keras`` zip archives: ``config.json`` maps those paths back to layer names and classes;
  ``model.weights.h5`` is read in place from the archive (stored members, as Keras writes
  them, through a window on the zip file; compressed ones through memory).

Tensors are Keras's own layout, which is the canonical one; they are read lazily.

Writing lays a WeightSet out for a Keras model: given as a config (``config.json``, model
JSON, ``.keras`` or a full-model ``.h5``), or derived from the weights (one Conv2D, Dense,
BatchNormalization or DepthwiseConv2D per weighted layer, in order). ``keras3`` writes the
``.weights.h5`` Keras 3 would write for that model (byte for byte when the model is given);
``keras2`` the ``save_weights`` ``.h5`` that Keras 2 and Keras 3's legacy loader accept.

Example::

    ws = keras_h5.read("model.keras")                 # layers conv1, fc6... from config.json
    keras_h5.write(ws, "out.weights.h5", model="model.keras")
    keras_h5.write(ws, "out.h5", keras_layout="keras2")
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from weightconv._util.files import atomic_path
from weightconv._util.progress import Progress
from weightconv.errors import FormatError, MappingError, ShapeError, UsageError
from weightconv.formats.base import WriteResult
from weightconv.model import CANONICAL, Kind, Layer, LazyTensor, Provenance, WeightSet
from weightconv.model.canonical import canonical_layers

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
ARCHIVE_WEIGHTS = "model.weights.h5"
ARCHIVE_CONFIG = "config.json"
LAYOUTS = ("keras3", "keras2")
#: Written as ``keras_version`` in the keras2 layout. Keras 2 loaders take a file without a
#: version for Keras 1 and convert its weights; 2.15.0 is the last Keras 2 bundled with
#: TensorFlow (tf.keras), so every Keras 2 reads the file as its own, unconverted.
KERAS2_VERSION = "2.15.0"
#: Keras splits a name-list attribute whose fixed-width array would exceed this many bytes.
ATTRIBUTE_LIMIT = 64512

_MODEL_CLASSES = ("Sequential", "Functional", "Model")
_KERNEL_CLASSES = {
    "Conv1D": 1,
    "Conv2D": 2,
    "Conv3D": 3,
    "Conv1DTranspose": 1,
    "Conv2DTranspose": 2,
    "Conv3DTranspose": 3,
    "Dense": 0,
}
_WEIGHTLESS = (
    "InputLayer",
    "Flatten",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianDropout",
    "GaussianNoise",
    "AlphaDropout",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Softmax",
    "Reshape",
    "Permute",
    "RepeatVector",
    "Lambda",
    "Rescaling",
    "Identity",
    "ActivityRegularization",
    "Masking",
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAveragePooling3D",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    "UpSampling1D",
    "UpSampling2D",
    "UpSampling3D",
    "Add",
    "Subtract",
    "Multiply",
    "Average",
    "Maximum",
    "Minimum",
    "Concatenate",
    "Dot",
)
_WEIGHTED = (
    *_KERNEL_CLASSES,
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
    "BatchNormalization",
    "LayerNormalization",
    "Embedding",
    "PReLU",
)
_KINDS = {
    "Conv2D": Kind.CONV,
    "Conv2DTranspose": Kind.DECONV,
    "Dense": Kind.DENSE,
    "BatchNormalization": Kind.BATCHNORM,
    "PReLU": Kind.PRELU,
    "InputLayer": Kind.INPUT,
    "ReLU": Kind.RELU,
    "Softmax": Kind.SOFTMAX,
    "Dropout": Kind.DROPOUT,
    **{name: Kind.POOL for name in _WEIGHTLESS if "Pooling" in name},
}
#: Keras variable names (last part of a weight name) that are canonical roles under another name.
_ROLE_OF_VARIABLE = {"kernel": "weights", "bias": "biases"}
_VARIABLE_OF_ROLE = {"weights": "kernel", "biases": "bias"}
#: Roles a tensor may also have in a WeightSet, for each role a Keras layer needs.
_ROLE_ALIASES = {
    "weights": ("weights", "kernel"),
    "biases": ("biases", "bias"),
    "depthwise_kernel": ("depthwise_kernel", "weights", "kernel"),
    "moving_mean": ("moving_mean", "mean"),
    "moving_variance": ("moving_variance", "variance"),
}
_NON_TRAINABLE = ("moving_mean", "moving_variance")
_COUNTER = re.compile(r"_\d+$")
_NUMERIC_KINDS = "biufc"


def snake_case(class_name: str) -> str:
    """The name Keras 3 gives a class's objects in a weights file: ``Conv2D`` -> ``conv2d``,
    ``BatchNormalization`` -> ``batch_normalization``, ``ReLU`` -> ``re_lu``."""
    words = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", words).lower()


_CLASS_OF_SNAKE = {
    snake_case(name): name for name in (*_WEIGHTED, *_WEIGHTLESS, "Sequential", "Functional")
}


def sniff(head: bytes, path: Path) -> bool:
    """True for an HDF5 file in a Keras layout, or a zip holding ``model.weights.h5``."""
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (OSError, zipfile.BadZipFile):
            return False
        return ARCHIVE_WEIGHTS in names or {ARCHIVE_CONFIG, "metadata.json"} <= names
    if not head.startswith(HDF5_MAGIC):
        return False
    try:
        with h5py.File(path, "r") as handle:
            return _layout_of(handle) is not None
    except OSError:
        return False


def _layout_of(handle: h5py.File) -> str | None:
    """ "legacy", "keras3" or None (not a Keras weights file)."""
    if _has_names(handle.attrs, "layer_names") or "model_config" in handle.attrs:
        return "legacy"
    weights = handle.get("model_weights")
    if isinstance(weights, h5py.Group) and _has_names(weights.attrs, "layer_names"):
        return "legacy"
    roots = [
        key
        for key in ("layers", "vars", "_layer_checkpoint_dependencies")
        if isinstance(handle.get(key), h5py.Group)
    ]
    if not roots:
        return None
    outside: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and name.rpartition("/")[0].rpartition("/")[2] != "vars":
            outside.append(name)

    handle.visititems(visit)
    return None if outside else "keras3"


# Reading ---------------------------------------------------------------------------------


def read(path: str | os.PathLike[str]) -> WeightSet:
    """Read any Keras weights file (see the module docstring) into a canonical WeightSet.

    Layers come in the model's order, weightless ones included. Optimizer state is left out
    with a note; `list_datasets` names every dataset and where it went.
    """
    return _read(Path(path))[0]


def list_datasets(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Every dataset of a Keras file by its full HDF5 path, in reading order: ``weights``
    (the model's tensors, as `read` returns them), ``optimizer`` (training state, left out)
    and ``unlisted`` (in no Keras place, left out)."""
    return _read(Path(path))[1]


def _read(path: Path) -> tuple[WeightSet, dict[str, list[str]]]:
    source, config = _open_source(path)
    notes: list[str] = []
    with source.open() as handle:
        layout = _layout_of(handle)
        if layout is None:
            raise FormatError(
                f"{source}: an HDF5 file, but not Keras weights (no layer_names "
                f"attribute, no model_weights, no layers/.../vars groups)"
            )
        if config is None and layout == "legacy" and "model_config" in handle.attrs:
            config = _parse_config(_text(handle.attrs["model_config"]), f"{source} model_config")
        root = _node(config, str(source)) if config is not None else None
        if layout == "keras3":
            layers, detail, listing = _read_keras3(handle, source, root, notes)
        else:
            layers, detail, listing = _read_legacy(handle, source, root, notes)
    detail["has_config"] = root is not None
    if root is not None:
        detail["model_class"], detail["model_name"] = root.class_name, root.name
    detail["optimizer_tensors"] = len(listing["optimizer"])
    weights = WeightSet(
        layers=layers, source=Provenance(path=str(path), format="keras-h5", detail=detail)
    )
    for note in notes:
        weights.note(note)
    return weights, listing


class _Window(io.RawIOBase):
    """A read-only file object over `size` bytes of `raw` from `offset`: a stored zip member."""

    def __init__(self, raw: io.BufferedReader, offset: int, size: int) -> None:
        super().__init__()
        self._raw, self._offset, self._size, self._pos = raw, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._size - self._pos))
        if count == 0:
            return 0
        self._raw.seek(self._offset + self._pos)
        got = self._raw.readinto(view[:count]) or 0
        self._pos += got
        return got


@dataclass(frozen=True)
class _Source:
    """Where the HDF5 bytes are: a file, or a member of a ``.keras`` zip."""

    path: Path
    member: str | None = None
    offset: int = -1  # of a stored member's data in the zip; -1 when compressed
    size: int = 0

    def __str__(self) -> str:
        return f"{self.path}" if self.member is None else f"{self.path}:{self.member}"

    @contextlib.contextmanager
    def raw(self) -> Iterator[Any]:
        """The HDF5 file's bytes as a binary file object."""
        with open(self.path, "rb") as raw:
            if self.member is None:
                yield raw
            elif self.offset >= 0:
                yield _Window(raw, self.offset, self.size)
            else:
                with zipfile.ZipFile(raw) as archive:
                    yield io.BytesIO(archive.read(self.member))

    @contextlib.contextmanager
    def open(self) -> Iterator[h5py.File]:
        with contextlib.ExitStack() as stack:
            try:
                if self.member is None:
                    target: Any = str(self.path)
                elif self.offset >= 0:
                    raw = stack.enter_context(open(self.path, "rb"))
                    target = _Window(raw, self.offset, self.size)
                else:
                    with zipfile.ZipFile(self.path) as archive:
                        target = io.BytesIO(archive.read(self.member))
                handle = stack.enter_context(h5py.File(target, "r"))
            except FileNotFoundError:
                raise UsageError(f"{self.path}: no such file") from None
            except IsADirectoryError:
                raise UsageError(f"{self.path}: is a directory, not a weight file") from None
            except (OSError, zipfile.BadZipFile, KeyError) as exc:
                raise FormatError(f"{self}: not a readable HDF5 file ({_one_line(exc)})") from None
            yield handle


def _open_source(path: Path) -> tuple[_Source, dict[str, Any] | None]:
    """The HDF5 source of `path` and, for a ``.keras`` archive, its parsed config.json."""
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, not a weight file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(ZIP_MAGIC))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read: {exc.strerror}") from None
    if head != ZIP_MAGIC:
        return _Source(path), None
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if ARCHIVE_WEIGHTS not in names:
                other = sorted(n for n in names if n.startswith("model.weights"))
                raise FormatError(
                    f"{path}: a Keras archive without {ARCHIVE_WEIGHTS}"
                    + (f" (it holds {', '.join(other)}, which is not HDF5)" if other else "")
                )
            config = None
            if ARCHIVE_CONFIG in names:
                config = _parse_config(
                    archive.read(ARCHIVE_CONFIG).decode("utf-8", "replace"),
                    f"{path}:{ARCHIVE_CONFIG}",
                )
            info = archive.getinfo(ARCHIVE_WEIGHTS)
            offset = -1
            if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
                with open(path, "rb") as raw:
                    raw.seek(info.header_offset)
                    local = raw.read(30)
                if local[:4] == ZIP_MAGIC:
                    name_length = int.from_bytes(local[26:28], "little")
                    extra_length = int.from_bytes(local[28:30], "little")
                    offset = info.header_offset + 30 + name_length + extra_length
    except (zipfile.BadZipFile, OSError) as exc:
        raise FormatError(f"{path}: not a readable zip archive ({_one_line(exc)})") from None
    return _Source(path, ARCHIVE_WEIGHTS, offset, info.file_size), config


def _loader(source: _Source, dataset: str, bfloat16: bool) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        with source.open() as handle:
            try:
                array = np.asarray(handle[dataset][()])
            except (OSError, KeyError, ValueError, TypeError) as exc:
                raise FormatError(
                    f"{source}: dataset {dataset}: cannot be read ({_one_line(exc)})"
                ) from None
        if bfloat16:
            import ml_dtypes

            array = array.view(ml_dtypes.bfloat16)
        return array

    return load


def _lazy(source: _Source, dataset: h5py.Dataset) -> LazyTensor:
    """A dataset read on demand. Keras stores bfloat16 as 2-byte opaque data, marked by a
    ``dtype`` attribute in ``.weights.h5`` and unmarked by Keras 3's legacy writer; no other
    2-byte opaque type appears in Keras files, so both read as bfloat16."""
    opaque = (
        dataset.dtype.kind == "V"
        and dataset.dtype.itemsize == 2
        and not (dataset.dtype.names or dataset.id.get_type().get_tag())
    )
    marked = _text(dataset.attrs.get("dtype", "")) == "bfloat16"
    bfloat16 = opaque and (marked or "dtype" not in dataset.attrs)
    if bfloat16:
        import ml_dtypes

        dtype: Any = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = dataset.dtype
    return LazyTensor(dataset.shape or (), dtype, _loader(source, dataset.name, bfloat16))


def _read_keras3(
    handle: h5py.File, source: _Source, root: _Node | None, notes: list[str]
) -> tuple[list[Layer], dict[str, Any], dict[str, list[str]]]:
    """Layers of a ``.weights.h5``: one per ``<path>/vars`` group, in the model's order (the
    config's, else the order Keras created the groups in)."""
    entries: list[tuple[str, h5py.Group]] = []
    unlisted: list[str] = []
    with source.raw() as raw:
        heaps = _LinkOrder(raw)

        def walk(group: h5py.Group, path: str) -> None:
            for key in heaps.order(group):
                child = group.get(key)
                if isinstance(child, h5py.Group):
                    if key == "vars":
                        entries.append((path, child))
                    else:
                        walk(child, _join(path, key))
                elif isinstance(child, h5py.Dataset):
                    unlisted.append(child.name.lstrip("/"))

        walk(handle, "")
    by_path = dict(_keras3_paths(root)) if root is not None else {}
    rank = {path: index for index, path in enumerate(by_path)}
    entries.sort(key=lambda e: rank.get(_normal_path(e[0]), len(rank)))  # stable
    layers: list[Layer] = []
    datasets: list[str] = []
    optimizer: list[str] = []
    for path, group in entries:
        keys = sorted(group, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
        members = [group[k] for k in keys if isinstance(group.get(k), h5py.Dataset)]
        unlisted.extend(
            group[k].name.lstrip("/") for k in keys if not isinstance(group.get(k), h5py.Dataset)
        )
        if path.split("/")[0] == "optimizer":
            optimizer.extend(d.name.lstrip("/") for d in members)
            continue
        node = by_path.get(_normal_path(path))
        is_model = path == "" or isinstance(handle.get(_join(path, "layers")), h5py.Group)
        if is_model and not members:
            continue
        class_name = node.class_name if node is not None else _class_of_path(path)
        name = (
            node.name
            if node is not None
            else _text(group.attrs.get("name", "")) or _path_name(path) or "model"
        )
        config = node.config if node is not None else {}
        roles = _roles_for(class_name, config, len(members), node is not None)
        tensors = {role: _lazy(source, d) for role, d in zip(roles, members, strict=True)}
        stored = {role: f"{name}/{_VARIABLE_OF_ROLE.get(role, role)}" for role in roles}
        located = {role: d.name.lstrip("/") for role, d in zip(roles, members, strict=True)}
        datasets.extend(located.values())
        layers.append(_layer(name, class_name, config, tensors, stored, located))
    _unique_names(layers)
    if optimizer:
        notes.append(
            f"{source}: left out {len(optimizer)} optimizer tensors (optimizer/vars): "
            f"training state, not model weights"
        )
    if unlisted:
        notes.append(
            f"{source}: left out {len(unlisted)} entries outside any vars group: "
            f"{', '.join(unlisted[:5])}{'...' if len(unlisted) > 5 else ''}"
        )
    if root is None and any(not layer.source_type[:1].isupper() for layer in layers):
        notes.append(
            f"{source}: no model config; layer classes guessed from the file's "
            f"paths (layers/conv2d_1...)"
        )
    return (
        layers,
        {"layout": "keras3"},
        {"weights": datasets, "optimizer": optimizer, "unlisted": unlisted},
    )


class _LinkOrder:
    """The names in an HDF5 group in the order they were created.

    h5py lists names sorted. An old-style group (what h5py makes by default, and so what
    Keras writes) keeps its link names in a local heap, appended as links are made: its
    object header's symbol-table message (type 0x11) gives the heap, whose data segment
    holds the names NUL-terminated, each padded to 8 bytes. Groups of any other kind, or
    anything unexpected, fall back to natural order (``dense``, ``dense_1``, ``dense_2``).
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        try:
            self._base, self._offset_size, self._length_size = self._superblock()
        except (OSError, ValueError):
            self._base = -1

    def _read(self, at: int, size: int) -> bytes:
        self._raw.seek(at)
        data = self._raw.read(size)
        if len(data) != size:
            raise ValueError("short read")
        return data

    def _superblock(self) -> tuple[int, int, int]:
        at = 0
        while self._read(at, 8) != HDF5_MAGIC:
            at = 512 if at == 0 else at * 2
        head = self._read(at, 40)
        version = head[8]
        if version in (0, 1):
            sizes, base_at = head[13:15], 24 if version == 0 else 28
        else:
            sizes, base_at = head[9:11], 12
        base = int.from_bytes(head[base_at : base_at + sizes[0]], "little")
        return base, sizes[0], sizes[1]

    def order(self, group: h5py.Group) -> list[str]:
        names = sorted(group, key=_natural)
        if self._base < 0:
            return names
        try:
            created = self._heap_names(h5py.h5o.get_info(group.id).addr)
        except (OSError, ValueError, IndexError):
            return names
        present = set(names)
        ordered = [name for name in created if name in present]
        return ordered + [name for name in names if name not in set(ordered)]

    def _heap_names(self, address: int) -> list[str]:
        def number(data: bytes) -> int:
            return int.from_bytes(data, "little")

        o, length = self._offset_size, self._length_size
        header = self._read(self._base + address, 16)
        if header[0] != 1:
            raise ValueError("not a version 1 object header")
        messages, blocks = number(header[2:4]), [(address + 16, number(header[8:12]))]
        heap = -1
        while blocks and messages > 0 and heap < 0:
            start, size = blocks.pop(0)
            body, pos = self._read(self._base + start, size), 0
            while pos + 8 <= size and messages > 0:
                kind, length_of = number(body[pos : pos + 2]), number(body[pos + 2 : pos + 4])
                data = body[pos + 8 : pos + 8 + length_of]
                if kind == 0x11:
                    heap = number(data[o : 2 * o])
                    break
                if kind == 0x10:
                    blocks.append((number(data[:o]), number(data[o : o + length])))
                pos += 8 + length_of
                messages -= 1
        if heap < 0:
            raise ValueError("no symbol table message")
        head = self._read(self._base + heap, 8 + 2 * length + o)
        if head[:4] != b"HEAP":
            raise ValueError("no local heap")
        size = number(head[8 : 8 + length])
        free = number(head[8 + length : 8 + 2 * length])
        data = self._read(self._base + number(head[8 + 2 * length : 8 + 2 * length + o]), size)
        end, names, pos = min(free, size), [], 0
        while pos < end:
            stop = data.index(b"\0", pos)
            if stop > pos:
                names.append(data[pos:stop].decode("utf-8"))
            pos = (stop + 8) // 8 * 8
        return names


def _natural(name: str) -> tuple[str, int, str]:
    match = _COUNTER.search(name)
    return (name[: match.start()], int(match.group()[1:]), name) if match else (name, 0, name)


def _read_legacy(
    handle: h5py.File, source: _Source, root: _Node | None, notes: list[str]
) -> tuple[list[Layer], dict[str, Any], dict[str, list[str]]]:
    """Layers of a legacy ``.h5``: in ``layer_names`` order, tensors in ``weight_names`` order."""
    group = handle
    if not _has_names(handle.attrs, "layer_names"):
        weights = handle.get("model_weights")
        if not isinstance(weights, h5py.Group):
            raise FormatError(
                f"{source}: a Keras model file without weights (no layer_names "
                f"attribute and no model_weights group)"
            )
        group = weights
    names = _name_list(group.attrs, "layer_names")
    children = {child.name: child for child in root.children} if root is not None else {}
    layers: list[Layer] = []
    datasets: list[str] = []
    for layer_name in [*names, "top_level_model_weights"]:
        layer_group = group.get(layer_name)
        if layer_name == "top_level_model_weights" and layer_group is None:
            continue
        if not isinstance(layer_group, h5py.Group):
            raise FormatError(
                f"{source}: layer_names lists {layer_name!r} but the file has no "
                f"group {_join(group.name, layer_name)}"
            )
        members = []
        for weight_name in _name_list(layer_group.attrs, "weight_names"):
            dataset = layer_group.get(weight_name)
            if not isinstance(dataset, h5py.Dataset):
                raise FormatError(
                    f"{source}: layer {layer_name!r}: weight_names lists "
                    f"{weight_name!r} but there is no dataset "
                    f"{_join(layer_group.name, weight_name)}"
                )
            members.append((weight_name, dataset))
        if layer_name == "top_level_model_weights" and not members:
            continue
        node = children.get(layer_name)
        for owner, owner_node, owned in _owners(layer_name, node, members):
            class_name = owner_node.class_name if owner_node is not None else ""
            config = owner_node.config if owner_node is not None else {}
            roles = _legacy_roles(class_name, config, [name for name, _ in owned])
            tensors = {role: _lazy(source, d) for role, (_, d) in zip(roles, owned, strict=True)}
            stored = {
                role: name.removesuffix(":0") for role, (name, _) in zip(roles, owned, strict=True)
            }
            located = {role: d.name.lstrip("/") for role, (_, d) in zip(roles, owned, strict=True)}
            datasets.extend(located.values())
            layers.append(_layer(owner, class_name, config, tensors, stored, located))
    _unique_names(layers)
    optimizer: list[str] = []
    state = handle.get("optimizer_weights")
    if isinstance(state, h5py.Group):
        state.visititems(
            lambda name, obj: (
                optimizer.append(obj.name.lstrip("/")) if isinstance(obj, h5py.Dataset) else None
            )
        )
    if optimizer:
        notes.append(
            f"{source}: left out {len(optimizer)} optimizer tensors "
            f"(optimizer_weights): training state, not model weights"
        )
    listed = set(datasets) | set(optimizer)
    unlisted: list[str] = []
    handle.visititems(
        lambda name, obj: (
            unlisted.append(name) if isinstance(obj, h5py.Dataset) and name not in listed else None
        )
    )
    if unlisted:
        notes.append(
            f"{source}: left out {len(unlisted)} datasets no weight_names lists: "
            f"{', '.join(unlisted[:5])}{'...' if len(unlisted) > 5 else ''}"
        )
    if root is None and layers:
        notes.append(
            f"{source}: no model_config; layer kinds guessed from weight names and "
            f"shapes (a DepthwiseConv2D saved by Keras 3 reads as a convolution)"
        )
    version = _text(group.attrs.get("keras_version", handle.attrs.get("keras_version", "")))
    backend = _text(group.attrs.get("backend", handle.attrs.get("backend", "")))
    if not version or version.startswith("1."):
        notes.append(
            f"{source}: written by Keras 1 (keras_version {version or 'absent'}); "
            f"tensors are as stored, and Keras 1 kernels may be in Theano layout"
        )
    detail = {
        "layout": "legacy",
        "keras_version": version,
        "backend": backend,
        "full_model": group is not handle,
    }
    return layers, detail, {"weights": datasets, "optimizer": optimizer, "unlisted": unlisted}


def _owners(
    layer_name: str, node: _Node | None, members: list[tuple[str, h5py.Dataset]]
) -> Iterator[tuple[str, _Node | None, list[tuple[str, h5py.Dataset]]]]:
    """Split a legacy layer group into the layers owning its weights: one, or for a nested
    model each inner layer (``c1/kernel:0``, ``bn1/gamma:0``...) in order of first mention."""
    if not members:
        yield layer_name, node, []
        return
    owners = [name.split("/")[-2] if name.count("/") else layer_name for name, _ in members]
    nested = (
        node.is_model if node is not None else (len(set(owners)) > 1 and layer_name not in owners)
    )
    if not nested:
        yield layer_name, node, members
        return
    inner = {leaf.name: leaf for leaf, _ in node.leaves()} if node is not None else {}
    grouped: dict[str, list[tuple[str, h5py.Dataset]]] = {}
    for owner, member in zip(owners, members, strict=True):
        grouped.setdefault(owner, []).append(member)
    for owner, owned in grouped.items():
        yield owner, inner.get(owner), owned


def _roles_for(class_name: str, config: dict[str, Any], count: int, configured: bool) -> list[str]:
    """Roles of a Keras 3 layer's `count` variables: from its class (and config), else var<i>."""
    roles = _variable_roles(class_name, config) if configured else None
    if roles is None or len(roles) != count:
        candidates = {tuple(r) for r in _role_variants(class_name) if len(r) == count}
        roles = list(candidates.pop()) if len(candidates) == 1 else None
    return roles if roles is not None else [f"var{i}" for i in range(count)]


def _legacy_roles(class_name: str, config: dict[str, Any], names: list[str]) -> list[str]:
    roles = _variable_roles(class_name, config) if class_name else None
    if roles is not None and len(roles) == len(names):
        return roles
    out: list[str] = []
    for name in names:
        variable = re.sub(r":\d+$", "", name.rpartition("/")[2])
        role = _ROLE_OF_VARIABLE.get(variable, variable)
        if role in out:
            role = re.sub(r":\d+$", "", name)
        while role in out:
            role += "_"
        out.append(role)
    return out


def _variable_roles(class_name: str, config: dict[str, Any]) -> list[str] | None:
    """Canonical roles of a layer's variables in Keras's order (trainable, then not); None
    for classes this module does not know."""
    bias = ["biases"] if config.get("use_bias", True) else []
    if class_name in _KERNEL_CLASSES:
        return ["weights", *bias]
    if class_name in ("DepthwiseConv1D", "DepthwiseConv2D"):
        return ["depthwise_kernel", *bias]
    if class_name in ("SeparableConv1D", "SeparableConv2D"):
        return ["depthwise_kernel", "pointwise_kernel", *bias]
    scale = ["gamma"] if config.get("scale", True) else []
    center = ["beta"] if config.get("center", True) else []
    if class_name == "BatchNormalization":
        return [*scale, *center, *_NON_TRAINABLE]
    if class_name == "LayerNormalization":
        return [*scale, *([] if config.get("rms_scaling") else center)]
    if class_name == "Embedding":
        return ["embeddings"]
    if class_name == "PReLU":
        return ["alpha"]
    if class_name in _WEIGHTLESS or class_name in _MODEL_CLASSES:
        return []
    return None


def _role_variants(class_name: str) -> list[list[str]]:
    variants = []
    for use_bias in (True, False):
        for scale in (True, False):
            for center in (True, False):
                roles = _variable_roles(
                    class_name, {"use_bias": use_bias, "scale": scale, "center": center}
                )
                if roles is not None:
                    variants.append(roles)
    return variants


def _layer(
    name: str,
    class_name: str,
    config: dict[str, Any],
    tensors: dict[str, Any],
    stored: dict[str, str],
    located: dict[str, str],
) -> Layer:
    kind = _KINDS.get(class_name, Kind.OTHER)
    if not class_name:
        kind = _kind_from_tensors(tensors)
    elif kind == Kind.CONV and tensors.get("weights") is not None and tensors["weights"].ndim != 4:
        kind = Kind.OTHER
    params = {
        key: value
        for key, value in config.items()
        if not isinstance(value, dict) and key not in ("name", "trainable")
    }
    if "groups" in config:
        params["group"] = config["groups"]
    input_shape = None
    shape = _input_shape(config)
    if shape is not None and len(shape) == 4 and all(isinstance(n, int) for n in shape[1:]):
        first = config.get("data_format") == "channels_first"
        input_shape = tuple(shape[1:]) if first else (shape[3], shape[1], shape[2])
    return Layer(
        name=name,
        kind=kind,
        tensors=tensors,
        params=params,
        source_type=class_name,
        layout=CANONICAL,
        input_shape=input_shape,
        stored_names=stored,
        locations=located,
    )


def _kind_from_tensors(tensors: dict[str, Any]) -> str:
    roles = set(tensors)
    if "weights" in roles and roles <= {"weights", "biases"}:
        return {4: Kind.CONV, 2: Kind.DENSE}.get(tensors["weights"].ndim, Kind.OTHER)
    if {"moving_mean", "moving_variance"} <= roles:
        return Kind.BATCHNORM
    if roles == {"alpha"}:
        return Kind.PRELU
    return Kind.OTHER


def _class_of_path(path: str) -> str:
    """``layers/conv2d_1`` -> ``Conv2D``; an unknown snake name stays as it is."""
    snake = _COUNTER.sub("", path.rpartition("/")[2])
    return _CLASS_OF_SNAKE.get(snake, snake)


def _path_name(path: str) -> str:
    return "/".join(part for part in path.split("/") if part not in ("layers", "vars"))


def _normal_path(path: str) -> str:
    """Keras 2.13-era files name the layers group ``_layer_checkpoint_dependencies``."""
    return "/".join(
        "layers" if p == "_layer_checkpoint_dependencies" else p for p in path.split("/")
    )


def _unique_names(layers: list[Layer]) -> None:
    seen: set[str] = set()
    for layer in layers:
        base, n = layer.name, 1
        while layer.name in seen:
            layer.name = f"{base}_{n}"
            n += 1
        seen.add(layer.name)


# Model configs ------------------------------------------------------------------------------


@dataclass
class _Node:
    """One layer of a Keras model config; models hold their layers as children."""

    name: str
    class_name: str
    config: dict[str, Any]
    children: list[_Node] = field(default_factory=list)
    is_model: bool = False

    def container(self) -> list[_Node]:
        """The model's ``layers`` as Keras lists them: a Sequential's InputLayer is not one."""
        if (
            self.class_name == "Sequential"
            and self.children
            and (self.children[0].class_name == "InputLayer")
        ):
            return self.children[1:]
        return self.children

    def leaves(self, trail: tuple[str, ...] = ()) -> Iterator[tuple[_Node, tuple[str, ...]]]:
        """Every non-model layer under this model, in order, with the models above it."""
        for child in self.container():
            if child.is_model:
                yield from child.leaves((*trail, child.name))
            else:
                yield child, trail


def _parse_config(text: str, where: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise FormatError(f"{where}: not a Keras model config (a JSON {type(config).__name__})")
    return config


def _node(entry: dict[str, Any], where: str) -> _Node:
    class_name = entry.get("class_name")
    config = entry.get("config")
    if not isinstance(class_name, str):
        raise FormatError(f"{where}: not a Keras model config (no class_name)")
    if isinstance(config, list):  # Keras 2.0-2.2 Sequential: the config is the layer list
        config = {"name": "sequential", "layers": config}
    if not isinstance(config, dict):
        config = {}
    if isinstance(entry.get("build_config"), dict) and "build_config" not in config:
        config = {**config, "build_config": entry["build_config"]}  # Keras 3 keeps it beside
    name = config.get("name") or entry.get("name") or ""
    layers = config.get("layers")
    if isinstance(layers, list) and (
        class_name in _MODEL_CLASSES or "input_layers" in config or class_name not in _WEIGHTED
    ):
        children = [_node(child, where) for child in layers if isinstance(child, dict)]
        # Keras 3 rebuilds a Keras 2 "Model" config as Functional, and names its path so.
        return _Node(
            str(name),
            "Functional" if class_name == "Model" else class_name,
            config,
            children,
            is_model=True,
        )
    return _Node(str(name), class_name, config)


def _keras3_paths(root: _Node) -> Iterator[tuple[str, _Node]]:
    """(``.weights.h5`` path, layer) for the model and every layer under it, in save order."""

    def walk(node: _Node, path: str) -> Iterator[tuple[str, _Node]]:
        yield path, node
        if node.is_model:
            counters: dict[str, int] = {}
            for child in node.container():
                yield from walk(child, _join(path, "layers", _counted(child.class_name, counters)))

    yield from walk(root, "")


def _counted(class_name: str, counters: dict[str, int]) -> str:
    base = snake_case(class_name)
    count = counters.get(base, -1) + 1
    counters[base] = count
    return base if count == 0 else f"{base}_{count}"


def load_model_config(model: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """A Keras model config from a ``config.json`` or model JSON, a ``.keras`` archive, a
    full-model ``.h5`` (its ``model_config``), or the parsed dict itself."""
    if isinstance(model, dict):
        return model
    path = Path(model)
    if not path.is_file():
        raise UsageError(
            f"{path}: no such model config (expected config.json, a model JSON, "
            f"a .keras archive or a full-model .h5)"
        )
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                text = archive.read(ARCHIVE_CONFIG).decode("utf-8", "replace")
        except (zipfile.BadZipFile, KeyError) as exc:
            raise UsageError(
                f"{path}: not a .keras archive with a {ARCHIVE_CONFIG} ({_one_line(exc)})"
            ) from None
        return _parse_config(text, f"{path}:{ARCHIVE_CONFIG}")
    if head.startswith(HDF5_MAGIC):
        try:
            with h5py.File(path, "r") as h5:
                if "model_config" not in h5.attrs:
                    raise UsageError(
                        f"{path}: an HDF5 file without a model_config attribute; "
                        f"pass the model's config.json or .keras"
                    )
                text = _text(h5.attrs["model_config"])
        except OSError as exc:
            raise UsageError(f"{path}: not a readable HDF5 file ({_one_line(exc)})") from None
        return _parse_config(text, f"{path} model_config")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a Keras model config (not JSON, .keras or .h5)") from None
    try:
        return _parse_config(text, str(path))
    except FormatError as exc:
        raise UsageError(str(exc)) from None


# Writing ---------------------------------------------------------------------------------


@dataclass
class _Slot:
    """One Keras layer of the target model and the WeightSet layer that fills it."""

    path: str
    name: str
    class_name: str
    config: dict[str, Any]
    layer: Layer | None = None
    is_model: bool = False
    top: str = ""
    trainable: bool = True


class _Pending:
    """WeightSet layers converted one at a time, taken by name in the model's order."""

    def __init__(self, weights: WeightSet) -> None:
        self._layers = canonical_layers(weights)
        self._held: dict[str, Layer] = {}

    def take(self, name: str) -> Layer | None:
        if name in self._held:
            return self._held.pop(name)
        for layer in self._layers:
            if layer.name == name:
                return layer
            self._held[layer.name] = layer
        return None


def write(
    weights: WeightSet,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    keras_layout: str = "keras3",
    model: str | os.PathLike[str] | dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> WriteResult:
    """Write `weights` as a Keras weights file for `model` (a config, see `load_model_config`;
    None: derived from the weights). ``keras3``: the ``.weights.h5`` Keras 3 writes (the name
    must end in ``.weights.h5``); ``keras2``: Keras 2's ``save_weights`` ``.h5``.

    Layers are matched to the model's by name; a missing or extra layer, a tensor Keras would
    not build or a shape that does not fit raises before anything is left on disk. Returns
    counts (``layers, tensors, parameters, bytes, skipped, keras_layout, notes``).
    """
    if keras_layout not in LAYOUTS:
        raise UsageError(f"unknown Keras layout {keras_layout!r}; known: {', '.join(LAYOUTS)}")
    target = Path(path)
    _check_output_name(target, keras_layout)
    root = _node(load_model_config(model), str(model)) if model is not None else None
    if root is not None and not root.is_model:
        raise UsageError(f"{model}: the config is a {root.class_name} layer, not a model")
    if root is not None:
        _check_names(weights, root, target)
    elif not weights.weighted_layers():
        raise UsageError(f"{target}: nothing to write: no layer holds tensors")
    slots = _model_slots(root, weights) if root is not None else _derived_slots(weights, target)
    counts = {"layers": 0, "tensors": 0, "parameters": 0}
    notes: list[str] = []
    with atomic_path(target, force) as temporary, h5py.File(temporary, "w") as handle:
        if keras_layout == "keras3":
            _write_keras3(handle, slots, target, counts, notes, progress)
        else:
            _write_keras2(handle, slots, root, target, counts, notes, progress)
    return WriteResult(
        **counts,
        bytes=target.stat().st_size,
        files=[str(target)],
        notes=notes,
        detail={"keras_layout": keras_layout},
    )


def _check_output_name(target: Path, layout: str) -> None:
    lowered = target.name.lower()
    stem = re.sub(r"(\.weights)?\.(h5|hdf5|keras)$", "", target.name, flags=re.IGNORECASE)
    if lowered.endswith(".keras"):
        raise UsageError(
            f"{target}: writing .keras archives is not supported; write "
            f"{target.with_name(stem + '.weights.h5')} (Keras 3: "
            f"model.load_weights) instead"
        )
    if layout == "keras3" and not lowered.endswith(".weights.h5"):
        raise UsageError(
            f"{target}: Keras 3 loads weights only from a name ending in "
            f".weights.h5; write {target.with_name(stem + '.weights.h5')}, or "
            f"use the keras2 layout for a legacy .h5"
        )
    if layout == "keras2" and (
        lowered.endswith(".weights.h5") or not lowered.endswith((".h5", ".hdf5"))
    ):
        raise UsageError(
            f"{target}: Keras reads the legacy layout only from a name ending in "
            f".h5 but not .weights.h5; write {target.with_name(stem + '.h5')}"
        )


def _leaf_keys(root: _Node) -> list[tuple[str, _Node, tuple[str, ...]]]:
    """(the WeightSet name it takes, layer, models above it) for every leaf: its own name,
    or ``model/name`` where two nested models use the same name."""
    leaves = list(root.leaves())
    counts: dict[str, int] = {}
    for leaf, _ in leaves:
        counts[leaf.name] = counts.get(leaf.name, 0) + 1
    return [
        (leaf.name if counts[leaf.name] == 1 else "/".join((*trail, leaf.name)), leaf, trail)
        for leaf, trail in leaves
    ]


def _check_names(weights: WeightSet, root: _Node, target: Path) -> None:
    names = [layer.name for layer in weights.weighted_layers()]
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise MappingError(
            f"{target}: two layers of the weights are named {', '.join(map(repr, duplicates))}"
        )
    leaves = _leaf_keys(root)
    keys = {key for key, _, _ in leaves}
    extra = [n for n in names if n not in keys]
    if extra:
        weighted = [key for key, leaf, _ in leaves if _variable_roles(leaf.class_name, leaf.config)]
        raise MappingError(
            f"{target}: the model has no layer named {', '.join(extra[:10])} "
            f"(its weighted layers: {', '.join(weighted[:20]) or 'none'})"
        )
    have = set(names)
    for key, leaf, _ in leaves:
        roles = _variable_roles(leaf.class_name, leaf.config)
        if roles is None and key in have:
            raise MappingError(
                f"{target}: layer {key!r} is a {leaf.class_name} in the model; "
                f"writing its weights is not supported"
            )
        if roles and key not in have:
            raise MappingError(
                f"{target}: the model's {leaf.class_name} {key!r} has no "
                f"weights in the input (its layers: {', '.join(names[:20])})"
            )


def _model_slots(root: _Node, weights: WeightSet) -> Iterator[_Slot]:
    pending = _Pending(weights)
    key_of = {id(leaf): key for key, leaf, _ in _leaf_keys(root)}

    def walk(node: _Node, path: str, top: str, trainable: bool) -> Iterator[_Slot]:
        trainable = trainable and node.config.get("trainable", True) is not False
        if not node.is_model:
            wanted = bool(_variable_roles(node.class_name, node.config))
            layer = pending.take(key_of[id(node)]) if wanted else None
            yield _Slot(path, node.name, node.class_name, node.config, layer, False, top, trainable)
            return
        yield _Slot(path, node.name, node.class_name, node.config, None, True, top, trainable)
        counters: dict[str, int] = {}
        for child in node.container():
            child_path = _join(path, "layers", _counted(child.class_name, counters))
            yield from walk(child, child_path, top or child.name, trainable)

    yield from walk(root, "", "", True)


def _derived_slots(weights: WeightSet, target: Path) -> Iterator[_Slot]:
    """The model `model=None` stands for: a Sequential of one layer per weighted layer."""
    yield _Slot("", "", "Sequential", {}, None, True)
    counters: dict[str, int] = {}
    for layer in canonical_layers(weights):
        class_name, config = _derive_class(layer, target)
        path = _join("layers", _counted(class_name, counters))
        yield _Slot(path, layer.name, class_name, config, layer, False, layer.name)


def _derive_class(layer: Layer, target: Path) -> tuple[str, dict[str, Any]]:
    roles = set(layer.tensors)
    if "depthwise_kernel" in roles:
        return "DepthwiseConv2D", {"use_bias": "biases" in roles}
    if roles & {"moving_mean", "moving_variance", "mean", "variance"}:
        return "BatchNormalization", {"scale": "gamma" in roles, "center": "beta" in roles}
    kernel = layer.tensors.get("weights")
    if kernel is not None and layer.kind != Kind.DECONV and kernel.ndim in (2, 4):
        return ("Conv2D" if kernel.ndim == 4 else "Dense"), {"use_bias": "biases" in roles}
    shapes = ", ".join(f"{role} {tuple(t.shape)}" for role, t in layer.tensors.items())
    raise MappingError(
        f"{target}: layer {layer.name!r} ({layer.kind}: {shapes}) is not a "
        f"Conv2D, Dense, BatchNormalization or DepthwiseConv2D; pass the "
        f"Keras model (model=config.json or .keras) to write it"
    )


def _tensors_for(slot: _Slot, target: Path) -> list[tuple[str, np.ndarray]]:
    """(role, array) in the order Keras keeps the layer's variables, checked against the
    shapes Keras builds from the layer's config."""
    layer = slot.layer
    assert layer is not None
    roles = _variable_roles(slot.class_name, slot.config) or []
    left = dict(layer.tensors)
    taken: list[tuple[str, Any]] = []
    for role in roles:
        alias = next((a for a in _ROLE_ALIASES.get(role, (role,)) if a in left), None)
        if alias is None:
            raise MappingError(
                f"{target}: layer {layer.name!r}: the model's {slot.class_name} "
                f"{slot.name!r} needs {role}; the weights have "
                f"{', '.join(layer.tensors) or 'none'}"
            )
        taken.append((role, left.pop(alias)))
    if left:
        raise MappingError(
            f"{target}: layer {layer.name!r}: the model's {slot.class_name} "
            f"{slot.name!r} has no place for {', '.join(left)} (it holds "
            f"{', '.join(roles)})"
        )
    shapes = {role: tuple(int(n) for n in tensor.shape) for role, tensor in taken}
    for role, expected in _expected_shapes(slot.class_name, slot.config, shapes).items():
        actual = shapes[role]
        if len(expected) != len(actual) or any(
            e is not None and e != a for e, a in zip(expected, actual, strict=False)
        ):
            shown = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
            raise ShapeError(
                f"{target}: {layer.name}/{role}: the model's {slot.class_name} "
                f"{slot.name!r} expects {shown}, the weights are {actual}"
            )
    arrays = []
    for role, tensor in taken:
        array = np.asarray(tensor)
        if array.dtype.hasobject or (
            array.dtype.kind not in _NUMERIC_KINDS and array.dtype.name != "bfloat16"
        ):
            raise MappingError(
                f"{target}: {layer.name}/{role} has dtype {array.dtype}; Keras weights are numbers"
            )
        arrays.append((role, array))
    return arrays


def _input_shape(config: dict[str, Any]) -> list[Any] | None:
    build = config.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    shape = shape if shape is not None else config.get("batch_input_shape")
    if isinstance(shape, list) and shape and not isinstance(shape[0], list):
        return shape
    return None


def _expected_shapes(
    class_name: str, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int | None, ...]]:
    """The shape Keras builds for each role present; None where neither the config nor the
    layer's input fixes it. What the config leaves open (a derived model's) comes from the
    layer's kernel, so its other tensors must at least agree with it."""
    shape = _input_shape(config)
    axis = config.get("axis", 1 if config.get("data_format") == "channels_first" else -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    channels = None
    if shape is not None and isinstance(axis, int) and -len(shape) <= axis < len(shape):
        value = shape[axis]
        channels = value if isinstance(value, int) else None
    kernel = shapes.get("weights") or shapes.get("depthwise_kernel") or ()

    def dims(key: str, rank: int) -> tuple[int | None, ...]:
        value = config.get(key)
        if isinstance(value, int):
            return (value,) * rank
        if isinstance(value, list) and len(value) == rank:
            return tuple(value)
        return (None,) * rank

    def given(key: str, fallback: int | None) -> int | None:
        value = config.get(key)
        return value if isinstance(value, int) else fallback

    last = kernel[-1] if kernel else None
    expected: dict[str, tuple[int | None, ...]] = {}
    if class_name == "Dense":
        units = given("units", last)
        expected = {"weights": (channels, units), "biases": (units,)}
    elif class_name in _KERNEL_CLASSES:
        rank, filters = _KERNEL_CLASSES[class_name], given("filters", last)
        groups = config.get("groups", 1) or 1
        if class_name.endswith("Transpose"):
            filters = given("filters", kernel[-2] if len(kernel) > 1 else None)
            expected = {"weights": (*dims("kernel_size", rank), filters, channels)}
        else:
            per_group = channels // groups if channels is not None else None
            expected = {"weights": (*dims("kernel_size", rank), per_group, filters)}
        expected["biases"] = (filters,)
    elif class_name.startswith(("DepthwiseConv", "SeparableConv")):
        rank = 1 if class_name.endswith("1D") else 2
        channels = channels if channels is not None else (kernel[-2] if len(kernel) > 1 else None)
        multiplier = given("depth_multiplier", last)
        inner = channels * multiplier if channels is not None and multiplier else None
        expected = {
            "depthwise_kernel": (*dims("kernel_size", rank), channels, multiplier),
            "biases": (inner,),
        }
        if class_name.startswith("Separable"):
            pointwise = shapes.get("pointwise_kernel", ())
            filters = given("filters", pointwise[-1] if pointwise else None)
            expected["pointwise_kernel"] = (*(1,) * rank, inner, filters)
            expected["biases"] = (filters,)
    elif class_name in ("BatchNormalization", "LayerNormalization"):
        size = (
            channels
            if channels is not None
            else next((s[0] for s in shapes.values() if len(s) == 1), None)
        )
        expected = {role: (size,) for role in shapes}
    elif class_name == "Embedding":
        expected = {"embeddings": (config.get("input_dim"), config.get("output_dim"))}
    return {role: value for role, value in expected.items() if role in shapes}


def _write_keras3(
    handle: h5py.File,
    slots: Iterator[_Slot],
    target: Path,
    counts: dict[str, int],
    notes: list[str],
    progress: Progress | None,
) -> None:
    """The groups and datasets Keras 3's ``save_weights`` creates, in the order it does."""
    for slot in slots:
        if (
            slot.layer is None
            and not slot.is_model
            and _variable_roles(slot.class_name, slot.config) is None
        ):
            notes.append(f"assumed {slot.class_name} {slot.name!r} holds no weights")
        group = handle.create_group(_join(slot.path, "vars"))
        if slot.name:
            group.attrs["name"] = slot.name
        if slot.layer is None:
            continue
        arrays = _tensors_for(slot, target)
        for index, (_, array) in enumerate(arrays):
            if array.dtype.name == "bfloat16":
                dataset = group.create_dataset(str(index), data=array)
                dataset.attrs["dtype"] = "bfloat16"
            else:
                group[str(index)] = array
            _count(counts, array, progress)
        counts["layers"] += 1


def _write_keras2(
    handle: h5py.File,
    slots: Iterator[_Slot],
    root: _Node | None,
    target: Path,
    counts: dict[str, int],
    notes: list[str],
    progress: Progress | None,
) -> None:
    """Keras 2 ``save_weights``: a group per top-level layer, ``weight_names`` listing its
    datasets (a nested model's trainable variables first, as Keras orders them)."""
    order: list[str] = [child.name for child in root.container()] if root is not None else []
    names: dict[str, list[tuple[bool, str]]] = {name: [] for name in order}
    for slot in slots:
        if slot.is_model or slot.layer is None:
            continue
        top = slot.top or slot.name
        if top not in names:
            order.append(top)
            names[top] = []
        group = handle.require_group(top)
        for role, array in _tensors_for(slot, target):
            if array.dtype.name == "bfloat16":
                array = array.astype(np.float32)  # exact; Keras 2 has no bfloat16 datasets
                notes.append(f"{slot.layer.name}/{role}: bfloat16 written as exact float32")
            weight_name = f"{slot.name}/{_VARIABLE_OF_ROLE.get(role, role)}:0"
            trainable = slot.trainable and role not in _NON_TRAINABLE
            names[top].append((trainable, weight_name))
            dataset = group.create_dataset(weight_name, array.shape, dtype=array.dtype)
            dataset[()] = array
            _count(counts, array, progress)
        counts["layers"] += 1
    _write_name_list(handle.attrs, "layer_names", order, target)
    handle.attrs["backend"] = b"tensorflow"
    handle.attrs["keras_version"] = KERAS2_VERSION.encode()
    for name in order:
        group = handle.require_group(name)
        listed = [n for t, n in names[name] if t] + [n for t, n in names[name] if not t]
        _write_name_list(group.attrs, "weight_names", listed, target)
    _write_name_list(
        handle.create_group("top_level_model_weights").attrs, "weight_names", [], target
    )


def _count(counts: dict[str, int], array: np.ndarray, progress: Progress | None) -> None:
    counts["tensors"] += 1
    counts["parameters"] += int(array.size)
    if progress is not None:
        progress.advance(int(array.nbytes))


def _write_name_list(
    attrs: h5py.AttributeManager, name: str, values: Sequence[str], target: Path
) -> None:
    """A list of names as Keras stores it: one attribute, or ``name0``, ``name1``... holding
    consecutive runs when the list as a fixed-width array would pass ATTRIBUTE_LIMIT bytes."""
    encoded = [value.encode("utf-8") for value in values]
    if not encoded:
        attrs[name] = []
        return
    width = max(max(len(e) for e in encoded), 1)
    if width > ATTRIBUTE_LIMIT:
        raise UsageError(
            f"{target}: a name of {width} bytes cannot be stored in a Keras "
            f"HDF5 attribute (limit {ATTRIBUTE_LIMIT})"
        )
    parts = 1
    while -(-len(encoded) // parts) * width > ATTRIBUTE_LIMIT:
        parts += 1
    if parts == 1:
        attrs[name] = encoded
        return
    size, extra = divmod(len(encoded), parts)
    start = 0
    for index in range(parts):
        stop = start + size + (1 if index < extra else 0)
        attrs[f"{name}{index}"] = encoded[start:stop]
        start = stop


# Helpers -----------------------------------------------------------------------------------


def _has_names(attrs: h5py.AttributeManager, name: str) -> bool:
    return name in attrs or f"{name}0" in attrs


def _name_list(attrs: h5py.AttributeManager, name: str) -> list[str]:
    """A Keras name-list attribute, joined from ``name0``, ``name1``... when split."""
    if name in attrs:
        parts = [attrs[name]]
    else:
        parts, index = [], 0
        while f"{name}{index}" in attrs:
            parts.append(attrs[f"{name}{index}"])
            index += 1
    return [
        _text(item)
        for part in parts
        for item in np.asarray(part).reshape(-1)
        if isinstance(item, str | bytes | np.bytes_ | np.str_)
    ]


def _text(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


def _join(*parts: str) -> str:
    return "/".join(part.strip("/") for part in parts if part.strip("/"))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
