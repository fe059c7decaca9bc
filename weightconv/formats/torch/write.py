"""Writing PyTorch state dicts in the zip format of ``torch.save``, without torch.

The archive holds ``archive/data/<i>`` (each tensor's bytes, stored, aligned to 64 bytes as
torch aligns them), then ``archive/data.pkl``: a protocol-2 pickle of a
``collections.OrderedDict`` of ``torch._utils._rebuild_tensor_v2`` calls over persistent
storage ids, the globals ``torch.load(..., weights_only=True)`` admits; then ``byteorder`` and
``version``. Tensors are written layer by layer as they are put in Caffe's layout (which
PyTorch keeps), so memory stays near one layer: one that is a view of a mapped input (a Caffe
blob, a .npy array) is copied into place by the kernel while its CRC-32 is summed from the same
file; any other is streamed in chunks (`weightconv.codecs.zip_writer` lays out the archive).
"""

from __future__ import annotations

import os
import pickle
import pickletools
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from weightconv._util.files import atomic_output
from weightconv._util.progress import Progress
from weightconv.codecs.zip_writer import StoredZipWriter, array_member
from weightconv.errors import FormatError, UsageError
from weightconv.formats.base import WriteResult
from weightconv.formats.torch.names import torch_layers
from weightconv.formats.torch.template import Slot, check_dtype, template_pairs
from weightconv.model import WeightSet
from weightconv.model.caffe_layout import steps

ARCHIVE = "archive"
ALIGNMENT = 64
#: Written as ``version``: the zip format torch.save writes since 1.6.
FORMAT_VERSION = b"3\n"
#: dtype name -> the storage class torch pickles it with.
STORAGE_CLASSES = {
    "float64": "DoubleStorage",
    "float32": "FloatStorage",
    "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "int16": "ShortStorage",
    "int8": "CharStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
    "complex64": "ComplexFloatStorage",
    "complex128": "ComplexDoubleStorage",
}
_PROTO, _STOP, _MARK, _TUPLE, _REDUCE = b"\x80\x02", b".", b"(", b"t", b"R"
_EMPTY_TUPLE, _SETITEMS, _BINPERSID, _NEWFALSE = b")", b"u", b"Q", b"\x89"
_ORDERED_DICT = b"ccollections\nOrderedDict\n" + _EMPTY_TUPLE + _REDUCE
_REBUILD = b"ctorch._utils\n_rebuild_tensor_v2\n"
_BATCH = 1000


def write(
    weights: WeightSet,
    path: str | os.PathLike[str],
    *,
    torch_dense_inputs: Mapping[str, tuple[int, ...]] | None = None,
    model: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> WriteResult:
    """Write `weights` as a PyTorch state dict that ``torch.load(path, weights_only=True)``
    loads: keys ``layer.weight``, ``layer.bias``, ``bn.running_mean``... (or the keys they were
    read under), tensors in PyTorch's layout. `torch_dense_inputs` gives the C,H,W of a dense
    layer's input where the weights do not record it (``{"fc6": (256, 6, 6)}``). `model`, a
    state dict of the target model, gives the keys instead: our layers are paired with its
    tensors in order, by role and shape (`weightconv.formats.torch.template`)."""
    entries: list[tuple[str, str, int, tuple[int, ...]]] = []
    counts = {"layers": 0, "tensors": 0, "parameters": 0}
    skipped: list[str] = []
    notes: list[str] = []
    transforms: dict[str, list[str]] = {}
    where = os.fspath(path)
    slots: dict[str, Slot] = {}
    carried: list[Slot] = []
    if model is not None:
        slots, carried = template_pairs(weights, model, torch_dense_inputs, where)
        notes.append(f"tensor names from {os.fspath(model)}: {len(slots)} tensors paired")
        if carried:
            listed = ", ".join(slot.name for slot in carried)
            notes.append(f"not in the weights, written as the template has them: {listed}")
    with atomic_output(path, force, notes=notes) as handle:
        archive = StoredZipWriter(handle, ALIGNMENT)
        for layer, shape, pairs in torch_layers(weights, torch_dense_inputs, where):
            for step in steps(layer, shape):
                transforms.setdefault(step, []).append(layer.name)
            for key, array in pairs:
                if array.dtype.hasobject or array.dtype.kind in "SU":
                    skipped.append(f"{key} (not numbers)")
                else:
                    if slots:
                        check_dtype(array, slots[key], where)
                        key = slots[key].name
                    storage = _storage_class(array, where, key)
                    index = len(entries)
                    _member(archive, f"{ARCHIVE}/data/{index}", array, progress)
                    entries.append((key, storage, int(array.size), tuple(array.shape)))
                    counts["tensors"] += 1
                    counts["parameters"] += int(array.size)
                del array
            counts["layers"] += 1
            del pairs  # before the next layer is converted: one layer alive at a time
        for slot in carried:  # not in our weights: the template's own value
            array = np.asarray(slot.value)
            storage = _storage_class(array, where, slot.name)
            _member(archive, f"{ARCHIVE}/data/{len(entries)}", array, progress)
            entries.append((slot.name, storage, int(array.size), tuple(array.shape)))
            counts["tensors"] += 1
        if not entries:
            raise UsageError(f"{where}: nothing to write: no layer holds numeric tensors")
        archive.add(f"{ARCHIVE}/data.pkl", _pickle(entries))
        archive.add(f"{ARCHIVE}/byteorder", b"little")
        archive.add(f"{ARCHIVE}/version", FORMAT_VERSION)
        archive.finish()
        size = handle.tell()
    return WriteResult(
        layers=counts["layers"],
        tensors=counts["tensors"],
        parameters=counts["parameters"],
        bytes=size,
        files=[where],
        skipped=skipped,
        notes=notes,
        detail={
            "layout": "torch",
            "transforms": [{"step": s, "layers": ls} for s, ls in transforms.items()],
        },
    )


def _storage_class(array: np.ndarray, where: str, key: str) -> str:
    name = "bfloat16" if array.dtype == np.dtype(ml_dtypes.bfloat16) else array.dtype.name
    storage = STORAGE_CLASSES.get(name)
    if storage is None:
        raise FormatError(
            f"{where}: tensor {key!r} has dtype {array.dtype}, which a PyTorch state dict "
            f"cannot store (it stores {', '.join(STORAGE_CLASSES)})"
        )
    return storage


def _member(
    archive: StoredZipWriter, name: str, array: np.ndarray, progress: Progress | None
) -> None:
    array_member(archive, name, array, advance=progress.advance if progress is not None else None)


def _pickle(entries: list[tuple[str, str, int, tuple[int, ...]]]) -> bytes:
    parts = [_PROTO, _ORDERED_DICT]
    for start in range(0, len(entries), _BATCH):
        parts.append(_MARK)
        for index, (key, storage, numel, shape) in enumerate(
            entries[start : start + _BATCH], start
        ):
            stride = tuple(int(np.prod(shape[axis + 1 :])) for axis in range(len(shape)))
            storage_id = (
                _MARK
                + _fragment("storage")
                + f"ctorch\n{storage}\n".encode()
                + _fragment(str(index))
                + _fragment("cpu")
                + _fragment(numel)
                + _TUPLE
                + _BINPERSID
            )
            arguments = storage_id + _fragment(0) + _fragment(shape) + _fragment(stride) + _NEWFALSE
            parts.append(
                _fragment(key) + _REBUILD + _MARK + arguments + _ORDERED_DICT + _TUPLE + _REDUCE
            )
        parts.append(_SETITEMS)
    parts.append(_STOP)
    return b"".join(parts)


def _fragment(value: Any) -> bytes:
    """The protocol-2 opcodes that push `value` (a str, an int or a tuple of ints)."""
    data = pickletools.optimize(pickle.dumps(value, protocol=2))
    return data[2:-1]
