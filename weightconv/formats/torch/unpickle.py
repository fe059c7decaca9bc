"""Unpickling PyTorch's pickles without torch and without running code from the file.

A ``torch.save`` pickle names a few globals: ``collections.OrderedDict``, the tensor rebuilders
of ``torch._utils`` and the storage classes (``torch.FloatStorage``, ...), and points at each
storage's bytes with a persistent id. Here each admitted global is emulated: a storage class
is a dtype, a storage a `StorageRef` (its key, dtype and length), a tensor a `TensorRef` (its
storage, offset, size and stride), and nothing of torch is imported. Any other global is
refused before it is looked up, naming it; TorchScript archives name ``__torch__`` classes,
admitted only when asked (`load`'s `script`) as inert `ScriptModule`s that keep their state.

Example::

    refs = unpickle.load(data_pkl_bytes, name="model.pt:archive/data.pkl")
    refs["conv1.weight"]   # TensorRef(storage=StorageRef('0', float32, ...), ...)
"""

from __future__ import annotations

import io
import mmap
import pickle
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from weightconv.codecs import pickle_views
from weightconv.errors import FormatError, UnsafeInputError

#: ``torch.<Name>Storage`` -> the dtype of its elements.
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),
}
_MAX_DIMS = 64
_ERRORS = (
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    MemoryError,
    RecursionError,
    UnicodeDecodeError,
)


class _Refused(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@dataclass(frozen=True)
class StorageRef:
    """A storage the pickle points at: its bytes are the archive's ``data/<key>`` (zip format)
    or follow the pickles (legacy format)."""

    key: str
    dtype: np.dtype[Any]
    location: str
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor: `shape` elements of its storage from `offset`, `stride` apart (in elements)."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def __setstate__(self, state: Any) -> None:
        raise _Refused("set the state of a tensor")


class ScriptModule:
    """A TorchScript module as its archive pickles it: a class name and its attributes."""

    class_name = ""
    #: Set once, by BUILD (unpickling makes the object without calling __init__).
    attributes: dict[str, Any] = {}  # noqa: RUF012 - replaced, never changed in place

    def __setstate__(self, state: Any) -> None:
        if "attributes" in vars(self) or not isinstance(state, dict):
            raise _Refused(f"set the state of {self.class_name} to a {type(state).__name__}")
        self.attributes = dict(state)


class _StorageType:
    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: np.dtype[Any]) -> None:
        self.name, self.dtype = name, dtype

    def __setstate__(self, state: Any) -> None:
        raise _Refused(f"change torch.{self.name}")

    def __call__(self, *args: Any) -> Any:
        raise _Refused(f"call torch.{self.name}")


class _Global:
    """An admitted function as the pickle sees it: callable, but BUILD cannot change it."""

    __slots__ = ("call", "name")

    def __init__(self, name: str, call: Callable[..., Any]) -> None:
        self.name, self.call = name, call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise _Refused(f"change {self.name}")


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or len(value) > _MAX_DIMS:
        raise pickle.UnpicklingError(f"a tensor's {what} is a {type(value).__name__}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
        raise pickle.UnpicklingError(f"a tensor's {what} {tuple(value)!r:.80} is not sizes")
    return tuple(value)


def _rebuild(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> TensorRef:
    """``_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])``
    and ``_rebuild_tensor(storage, offset, size, stride)``."""
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError(f"a tensor's storage is a {type(storage).__name__}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise pickle.UnpicklingError(f"a tensor's storage offset is {offset!r:.40}")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise pickle.UnpicklingError(f"a tensor of size {shape} has stride {strides}")
    return TensorRef(storage, offset, shape, strides)


def _parameter(data: Any, *_rest: Any) -> Any:
    """``_rebuild_parameter(data, requires_grad, hooks[, state])``: a parameter is its data."""
    if not isinstance(data, TensorRef):
        raise pickle.UnpicklingError(f"a parameter's data is a {type(data).__name__}")
    return data


def _codecs_encode(text: Any, encoding: Any = "utf-8", *_rest: Any) -> bytes:
    # Python 3 writes bytes into protocol 2 pickles as _codecs.encode(text, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "ascii"):
        raise _Refused(f"call _codecs.encode with encoding {encoding!r:.40}")
    return text.encode(encoding)


_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _Global("collections.OrderedDict", OrderedDict),
    ("torch._utils", "_rebuild_tensor_v2"): _Global("_rebuild_tensor_v2", _rebuild),
    ("torch._utils", "_rebuild_tensor"): _Global("_rebuild_tensor", _rebuild),
    ("torch._utils", "_rebuild_parameter"): _Global("_rebuild_parameter", _parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Global("_rebuild_parameter", _parameter),
    ("_codecs", "encode"): _Global("_codecs.encode", _codecs_encode),
}
_FUNCTIONS.update(
    {("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()}
)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, *, script: bool, legacy: bool) -> None:
        super().__init__(file, encoding="utf-8")
        self.script = script
        self.legacy = legacy
        self.storages: dict[str, StorageRef] = {}
        self.classes: dict[str, type[ScriptModule]] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _FUNCTIONS.get((module, name))
        if found is not None:
            return found
        if self.script and (module == "__torch__" or module.startswith("__torch__.")):
            full = f"{module}.{name}"
            if full not in self.classes:
                self.classes[full] = type(name, (ScriptModule,), {"class_name": full})
            return self.classes[full]
        raise _Refused(f"load global {f'{module}.{name}'[:120]!r}")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            what = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise _Refused(f"load a persistent {str(what)[:40]!r}, not a storage")
        if len(pid) != (6 if self.legacy else 5):
            raise pickle.UnpicklingError(f"a storage id of {len(pid)} fields")
        kind, key, location, numel = pid[1:5]
        if self.legacy and pid[5] is not None:
            raise FormatError("a storage view (torch < 0.4 views) is not supported")
        if not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"a storage of type {type(kind).__name__}")
        if not isinstance(key, str) or not isinstance(location, str):
            raise pickle.UnpicklingError("a storage key or location is not a string")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise pickle.UnpicklingError(f"a storage of {numel!r:.40} elements")
        ref = StorageRef(key, kind.dtype, location, numel)
        known = self.storages.setdefault(key, ref)
        if known != ref:
            raise pickle.UnpicklingError(f"storage {key!r} is declared twice, differently")
        return known


def load(
    buffer: Any, start: int = 0, *, name: str, script: bool = False, legacy: bool = False
) -> tuple[Any, int]:
    """The object of the pickle at `start` of `buffer` (bytes or a memory map, read in place)
    with tensors as `TensorRef`s, and where the pickle ends. `legacy`: the persistent ids of
    the pre-1.6 format. Raises UnsafeInputError naming the global a pickle reaches for,
    FormatError when it is corrupt or truncated."""
    problem = pickle_views.length_problem(buffer, start)
    if problem is not None:
        raise FormatError(f"{name}: corrupt pickle: {problem}")
    stream: Any = buffer if isinstance(buffer, mmap.mmap) else io.BytesIO(buffer)
    stream.seek(start)
    try:
        loaded = _Unpickler(stream, script=script, legacy=legacy).load()
    except _Refused as refused:
        raise UnsafeInputError(
            f"{name}: refusing to {refused.what} from the pickle: a state dict holds only "
            f"tensors, containers, strings and numbers (nothing of it was run)"
        ) from None
    except FormatError as exc:
        raise FormatError(f"{name}: {exc}") from None
    except _ERRORS as exc:
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise FormatError(f"{name}: truncated or corrupt pickle: {text}") from None
    return loaded, stream.tell()
