"""Unpickling weight dicts without running code from the file.

A pickle can call any global it names. `RestrictedUnpickler` admits only the few
globals a NumPy weight dict needs, and even those are not handed out as they are:
NumPy's own ``dtype.__setstate__`` trusts the flags stored in the pickle, so a
pickle that names nothing but ``numpy.dtype`` and ``_reconstruct`` can build an
object array from raw bytes and make NumPy dereference pointers of its choosing.
Here every dtype is rebuilt from its type string and byte order alone, and every
array is made from checked bytes (`np.frombuffer`, no copy) or a checked list.

Example::

    with open("det1.npy", "rb") as handle:
        numpy.lib.format.read_magic(handle)
        numpy.lib.format.read_array_header_1_0(handle)
        wrapper = safe_pickle.load(handle, name="det1.npy")
"""

from __future__ import annotations

import contextvars
import math
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import IO, Any

import numpy as np

from weightconv.errors import UnsafeInputError

#: Type strings a pickled weight dtype may have: a kind letter and an optional size.
_DTYPE_SPEC = re.compile(r"[?a-zA-Z][0-9]{0,3}")
_WEIGHT_KINDS = frozenset("biufcOSU")
_TEXT_CODECS = frozenset(
    {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1", "utf-8", "utf8", "ascii"}
)
#: Deeper nesting than this is not a weight dict.
_MAX_DEPTH = 64
#: Token -> mapped bytes, for payloads `pickle_views` left in the file during a `load`.
_VIEWS: contextvars.ContextVar[Mapping[bytes, memoryview] | None] = contextvars.ContextVar(
    "weightconv_pickle_views", default=None
)


class _Refused(Exception):
    """Raised inside unpickling; `load` turns it into an UnsafeInputError naming the file."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _Global:
    """An admitted global as the pickle sees it: callable, but BUILD cannot change it."""

    __slots__ = ("_call", "_name")
    _call: Callable[..., Any]
    _name: str

    def __init__(self, name: str, call: Callable[..., Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_call", call)

    def __call__(self, *args: Any) -> Any:
        return self._call(*args)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise _Refused(f"change {self._name}")

    def __setstate__(self, state: Any) -> None:
        raise _Refused(f"change {self._name}")

    def __repr__(self) -> str:
        return self._name


def _call_ndarray(*args: Any) -> Any:
    raise _Refused("call numpy.ndarray directly")


_NDARRAY = _Global("numpy.ndarray", _call_ndarray)


class _DtypeStub:
    """A ``numpy.dtype(spec)`` from the pickle; its pickled state is recorded, not trusted."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if isinstance(spec, bytes):
            spec = spec.decode("latin1")
        if not isinstance(spec, str) or not _DTYPE_SPEC.fullmatch(spec):
            raise pickle.UnpicklingError(f"unsupported dtype spec {spec!r:.40}")
        self.spec = spec
        self.state: tuple[Any, ...] | None = None
        self._dtype: np.dtype | None = None

    def __setstate__(self, state: Any) -> None:
        if self.state is not None or not isinstance(state, tuple) or not 5 <= len(state) <= 9:
            raise pickle.UnpicklingError(f"bad state for dtype {self.spec!r}")
        self.state = state

    def resolve(self) -> np.dtype:
        """A fresh dtype from the spec and the pickled byte order; nothing else is taken."""
        if self._dtype is None:
            try:
                dtype = np.dtype(self.spec)
            except (TypeError, ValueError) as exc:
                raise pickle.UnpicklingError(f"unknown dtype {self.spec!r}") from exc
            if dtype.kind not in _WEIGHT_KINDS or dtype.itemsize == 0:
                raise pickle.UnpicklingError(f"dtype {self.spec!r} is not a weight dtype")
            if self.state is not None:
                dtype = _with_byteorder(dtype, self.state)
            self._dtype = dtype
        return self._dtype


def _with_byteorder(dtype: np.dtype, state: tuple[Any, ...]) -> np.dtype:
    # Items 2.. up to elsize are subarray, names and fields (fewer in older versions);
    # any of them set means a structured dtype.
    structure = state[2 : {5: 3, 6: 4}.get(len(state), 5)]
    if any(item is not None for item in structure):
        raise pickle.UnpicklingError("structured dtypes are not weight dtypes")
    order = state[1]
    if isinstance(order, bytes):
        order = order.decode("latin1")
    if order not in ("<", ">", "=", "|"):
        raise pickle.UnpicklingError(f"bad byte order {order!r:.10} in a pickled dtype")
    return dtype.newbyteorder(order) if order in "<>" else dtype


def _dtype_of(value: Any) -> np.dtype:
    if not isinstance(value, _DtypeStub):
        raise pickle.UnpicklingError(f"expected a pickled dtype, got {type(value).__name__}")
    return value.resolve()


def _shape_of(value: Any) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
    ):
        raise pickle.UnpicklingError(f"bad array shape {value!r:.60}")
    return value


def _raw(data: Any) -> bytes | bytearray | memoryview:
    if isinstance(data, str):  # a Python 2 str, decoded latin1 by the unpickler
        data = data.encode("latin1")
    if isinstance(data, bytes | bytearray):
        views = _VIEWS.get()
        if views and isinstance(data, bytes) and data in views:
            return views[data]  # a payload left in the mapped file (pickle_views)
        return data
    raise pickle.UnpicklingError(f"array data is a {type(data).__name__}, not bytes")


class _ArrayStub:
    """What ``_reconstruct(ndarray, ...)`` returns; BUILD gives it its state once."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self) -> None:
        self.array: np.ndarray | None = None
        self.items: list[Any] | None = None
        self.shape: tuple[int, ...] = (0,)
        self.fortran = False

    def __setstate__(self, state: Any) -> None:
        if self.array is not None or self.items is not None:
            raise pickle.UnpicklingError("an array's state is set twice")
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # drop the version
        if not isinstance(state, tuple) or len(state) != 4:
            raise pickle.UnpicklingError("bad array state")
        shape, dtype, fortran, data = _shape_of(state[0]), _dtype_of(state[1]), state[2], state[3]
        count = math.prod(shape)
        self.shape, self.fortran = shape, bool(fortran)
        if dtype.hasobject:
            if not isinstance(data, list) or len(data) != count:
                raise pickle.UnpicklingError("object array data is not a list of its size")
            self.items = data
            return
        raw = _raw(data)
        if len(raw) != count * dtype.itemsize:
            raise pickle.UnpicklingError(
                f"array data holds {len(raw)} bytes, shape {shape} of {dtype} needs "
                f"{count * dtype.itemsize}"
            )
        flat = np.frombuffer(raw, dtype=dtype, count=count)
        self.array = flat.reshape(shape, order="F" if self.fortran else "C")


def _reconstruct(subtype: Any, shape: Any = None, dtype: Any = None) -> _ArrayStub:
    if subtype is not _NDARRAY:
        raise _Refused("reconstruct an array of a class other than numpy.ndarray")
    return _ArrayStub()


def _scalar(dtype: Any, data: Any = None) -> Any:
    resolved = _dtype_of(dtype)
    if resolved.hasobject:
        return data
    raw = _raw(data)
    if len(raw) != resolved.itemsize:
        raise pickle.UnpicklingError(f"a {resolved} scalar needs {resolved.itemsize} bytes")
    return np.frombuffer(raw, dtype=resolved, count=1)[0]


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> _ArrayStub:
    # NumPy's reduce for pickle protocol 5.
    resolved = _dtype_of(dtype)
    shape = _shape_of(shape)
    raw = _raw(buffer)
    if resolved.hasobject or len(raw) != math.prod(shape) * resolved.itemsize:
        raise pickle.UnpicklingError("protocol-5 array data does not match its shape")
    stub = _ArrayStub()
    stub.array = np.frombuffer(raw, dtype=resolved).reshape(
        shape, order="F" if order == "F" else "C"
    )
    return stub


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Python 3 writes bytes into protocol 0-2 pickles as _codecs.encode(text, "latin1").
    if (
        not isinstance(text, str)
        or not isinstance(encoding, str)
        or encoding.lower() not in _TEXT_CODECS
    ):
        raise _Refused(f"call _codecs.encode with encoding {encoding!r:.40}")
    return text.encode(encoding, "strict")


def _empty_bytes(*args: Any) -> bytes:
    # Python 3 writes b"" into protocol 0-2 pickles as bytes().
    if args:
        raise _Refused("call bytes() with arguments")
    return b""


_ADMITTED: list[tuple[str, str, Callable[..., Any]]] = [
    ("numpy.core.multiarray", "_reconstruct", _reconstruct),
    ("numpy._core.multiarray", "_reconstruct", _reconstruct),
    ("numpy.core.multiarray", "scalar", _scalar),
    ("numpy._core.multiarray", "scalar", _scalar),
    ("numpy.core.numeric", "_frombuffer", _frombuffer),
    ("numpy._core.numeric", "_frombuffer", _frombuffer),
    ("numpy", "dtype", _DtypeStub),
    ("_codecs", "encode", _codecs_encode),
    ("builtins", "bytes", _empty_bytes),
    ("__builtin__", "bytes", _empty_bytes),
    ("collections", "OrderedDict", OrderedDict),
]
_ALLOWED: dict[tuple[str, str], _Global] = {
    (module, name): _Global(f"{module}.{name}", call) for module, name, call in _ADMITTED
}
_ALLOWED["numpy", "ndarray"] = _NDARRAY


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that admits only the globals of a NumPy weight dict (exact names).

    What it returns may hold placeholders for arrays and dtypes; `load` replaces them.
    """

    def __init__(self, file: IO[bytes], *, encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is None:
            raise _Refused(f"load global {f'{module}.{name}'[:120]!r}")
        return target


def load(file: IO[bytes], *, name: str, views: Mapping[bytes, memoryview] | None = None) -> Any:
    """Unpickle one object from `file` admitting only arrays, numbers, strings and containers.

    Python 2 strings are decoded latin1. Raises UnsafeInputError naming `name` when
    the pickle reaches for anything else; a corrupt or truncated stream raises what
    `pickle` raises (EOFError, pickle.UnpicklingError, ValueError, ...). `views` maps the
    tokens of a `pickle_views.MappedPickle` stream to the array bytes they stand for.
    """
    reset = _VIEWS.set(views)
    try:
        loaded = RestrictedUnpickler(file).load()
    except _Refused as refused:
        raise UnsafeInputError(
            f"{name}: refusing to {refused.what} from the pickle: a weight dict holds only "
            f"dicts, lists, strings, numbers and arrays; pass trust_pickle=True only if you "
            f"trust this file"
        ) from None
    finally:
        _VIEWS.reset(reset)
    return _Resolver().resolve(loaded, 0)


class _Resolver:
    """Replaces placeholders by real arrays and dtypes, in place in lists and dicts."""

    def __init__(self) -> None:
        self.done: dict[int, Any] = {}

    def resolve(self, obj: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise pickle.UnpicklingError(f"objects nested more than {_MAX_DEPTH} deep")
        if not isinstance(obj, _ArrayStub | _DtypeStub | list | dict | tuple):
            return obj
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if isinstance(obj, _DtypeStub):
            self.done[key] = obj.resolve()
        elif isinstance(obj, _ArrayStub):
            self.done[key] = self._array(obj, depth)
        elif isinstance(obj, list):
            self.done[key] = obj
            obj[:] = [self.resolve(item, depth + 1) for item in obj]
        elif isinstance(obj, dict):
            self.done[key] = obj
            for item_key in list(obj):
                obj[item_key] = self.resolve(obj[item_key], depth + 1)
        else:
            self.done[key] = tuple(self.resolve(item, depth + 1) for item in obj)
        return self.done[key]

    def _array(self, stub: _ArrayStub, depth: int) -> np.ndarray:
        if stub.array is not None:
            return stub.array
        if stub.items is None:
            raise pickle.UnpicklingError("an array was reconstructed but never given data")
        items = [self.resolve(item, depth + 1) for item in stub.items]
        if len(items) != math.prod(stub.shape):
            raise pickle.UnpicklingError("object array data changed size after it was set")
        flat = np.empty(len(items), dtype=object)
        for index, item in enumerate(items):
            flat[index] = item
        return flat.reshape(stub.shape, order="F" if stub.fortran else "C")
