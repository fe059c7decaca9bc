"""NumPy ``.npy`` weight dicts: ``np.save`` of ``{layer: [W, b]}`` or ``{layer: {role: W}}``.

The file is a ``.npy`` header declaring a 0-d object array, then a pickle of that
array holding the dict. Reading goes through `safe_pickle` unless the caller trusts
the file. Writing emits the pickle stream by hand, so each tensor goes to disk in
chunks of at most `CHUNK_BYTES` straight from the (possibly memory-mapped, possibly
transposed) array, never as one ``tobytes()`` copy.

Example::

    ws = npy.read("det1.npy")
    npy.write(ws, "out.npy", flavour="list")
    d = np.load("out.npy", allow_pickle=True, encoding="latin1").item()
    W, b = d["conv1"]
"""

from __future__ import annotations

import functools
import mmap
import os
import pickle
import pickletools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from numpy.lib import format as npformat

from weightconv._util.files import atomic_output, chunks, open_input
from weightconv._util.memory import release_pages
from weightconv._util.progress import Progress
from weightconv._util.regions import (
    COPY_BLOCK_BYTES,
    copy_gap,
    copy_to_handle,
    file_region,
    map_input,
    region_at_handle,
)
from weightconv.codecs import npy_header, pickle_views, safe_pickle
from weightconv.errors import FormatError, MappingError, UsageError, WeightconvError
from weightconv.formats.base import Options, WriteResult, option
from weightconv.model import (
    CANONICAL,
    CheckedTensor,
    FilledTensor,
    Kind,
    Layer,
    Provenance,
    WeightSet,
)
from weightconv.model import canonical as layout

MAGIC = b"\x93NUMPY"
FLAVOURS = ("list", "dict", "flat")
#: Largest piece of a tensor converted and written at once.
CHUNK_BYTES = 16 << 20
#: Tensors larger than this need BINBYTES8 (pickle protocol 4).
BINBYTES_LIMIT = (1 << 32) - 1


@dataclass(frozen=True)
class NpyReadOptions(Options):
    trust_pickle: bool = option(
        False,
        help="let the pickle load any Python object: this runs code, so only for files you trust",
    )


@dataclass(frozen=True)
class NpyWriteOptions(Options):
    flavour: Literal["list", "dict", "flat"] | None = option(
        None,
        choices=FLAVOURS,
        help="list: {layer: [W, b]}; dict: {layer: {'weights': W, 'biases': b}}; flat: "
        "{tensor name: array}. Default: flat when the input was read flat, else list",
    )


_POSITIONAL_ROLES = ("weights", "biases")
_NUMERIC_KINDS = "biufc"
_UNPICKLING_ERRORS = (
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    ImportError,
    OverflowError,
    MemoryError,
    RecursionError,
)


def sniff(head: bytes, path: Path) -> bool:
    """True when `head` starts with the NumPy magic string."""
    return head.startswith(MAGIC)


# Reading ---------------------------------------------------------------------------------


def read(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> WeightSet:
    """Read a pickled weight dict saved with ``np.save``; layers keep the dict's order.

    Without `trust_pickle` the pickle may name only NumPy array globals; anything
    else raises UnsafeInputError before it runs.
    """
    name = str(path)
    with open_input(path) as handle:
        npy_header.read_weight_dict_header(handle, name)
        pickle_views.check_lengths(handle, name)
        first = handle.peek(2)[:2]
        protocol = first[1] if first[:1] == pickle.PROTO and len(first) == 2 else None
        mapped = None if trust_pickle else _mapped_pickle(handle)
        wrapper = _unpickle(mapped or handle, name, trust_pickle, mapped.views if mapped else None)
    content = _weight_dict(wrapper, name)
    layers, flavour = _layers(content, name)
    return WeightSet(
        layers=layers,
        source=Provenance(
            path=name, format="npy", detail={"flavour": flavour, "pickle_protocol": protocol}
        ),
    )


def _mapped_pickle(handle: IO[bytes]) -> pickle_views.MappedPickle | None:
    """The pickle after the header with its large payloads left in a memory map (so arrays
    are views of the file, not copies), or None for small or unusual files."""
    start = handle.tell()
    size = os.fstat(handle.fileno()).st_size
    if size - start < 4 * pickle_views.MIN_BYTES:
        return None
    mapping = map_input(handle)
    scanned = pickle_views.MappedPickle.scan(mapping, start)
    mapping.madvise(mmap.MADV_DONTNEED)  # the walk touched every header; values come later
    return scanned


def _unpickle(
    handle: Any, name: str, trust_pickle: bool, views: dict[bytes, memoryview] | None = None
) -> Any:
    try:
        if trust_pickle:
            return pickle.Unpickler(handle, encoding="latin1").load()
        return safe_pickle.load(handle, name=name, views=views)
    except WeightconvError:
        raise
    except _UNPICKLING_ERRORS as exc:
        raise FormatError(
            f"{name}: truncated or corrupt pickle after the .npy header: {_one_line(exc)}"
        ) from None


def _weight_dict(wrapper: Any, name: str) -> dict[Any, Any]:
    if not (isinstance(wrapper, np.ndarray) and wrapper.dtype == object and wrapper.shape == ()):
        raise FormatError(
            f"{name}: the pickle holds {_describe(wrapper)}, not the 0-d "
            f"object array the .npy header declares"
        )
    content = wrapper[()]
    if not isinstance(content, dict):
        raise FormatError(f"{name}: holds a pickled {type(content).__name__}, not a weight dict")
    return content


def _layers(content: dict[Any, Any], name: str) -> tuple[list[Layer], str]:
    tensors_by_layer: dict[str, dict[str, np.ndarray]] = {}
    flavours: set[str] = set()
    for raw_key, value in content.items():
        key = _text(raw_key, name, "a key of the weight dict")
        if isinstance(value, np.ndarray | np.generic):
            flavours.add("flat")
            layer_name, slash, role = key.rpartition("/")
            if not (slash and layer_name and role):
                layer_name, role = key, "value"
            _add(tensors_by_layer, layer_name, role, value, name)
        elif isinstance(value, list | tuple):
            flavours.add("list")
            tensors_by_layer.setdefault(key, {})
            for index, item in enumerate(value):
                _add(tensors_by_layer, key, _positional_role(index), item, name)
        elif isinstance(value, dict):
            flavours.add("dict")
            tensors_by_layer.setdefault(key, {})
            for raw_role, item in value.items():
                role = _text(raw_role, name, f"a role name in entry {key!r}")
                _add(tensors_by_layer, key, role, item, name)
        else:
            raise FormatError(
                f"{name}: entry {key!r} holds {_describe(value)}; a weight dict "
                f"maps layer names to arrays, lists of arrays or dicts of arrays"
            )
    flavour = flavours.pop() if len(flavours) == 1 else "mixed" if flavours else "empty"
    layers = [
        Layer(
            name=layer_name,
            kind=_guess_kind(tensors),
            tensors=dict(tensors),
            source_type="npy",
            layout=CANONICAL,
        )
        for layer_name, tensors in tensors_by_layer.items()
    ]
    return layers, flavour


def _positional_role(index: int) -> str:
    return _POSITIONAL_ROLES[index] if index < len(_POSITIONAL_ROLES) else f"blob{index}"


def _add(
    tensors_by_layer: dict[str, dict[str, np.ndarray]], layer: str, role: str, value: Any, name: str
) -> None:
    where = f"{layer}/{role}"
    if not isinstance(value, np.ndarray | np.generic):
        raise FormatError(f"{name}: tensor {where!r} is {_describe(value)}, not an array")
    array = np.asarray(value)
    if array.dtype.hasobject:
        raise FormatError(f"{name}: tensor {where!r} is an object array, not numbers")
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise FormatError(f"{name}: tensor {where!r} has dtype {array.dtype}, not numbers")
    tensors = tensors_by_layer.setdefault(layer, {})
    if role in tensors:
        raise FormatError(f"{name}: tensor {where!r} appears twice")
    tensors[role] = array


def _guess_kind(tensors: dict[str, np.ndarray]) -> str:
    roles = set(tensors)
    if "weights" in roles and roles <= {"weights", "biases"}:
        return {4: Kind.CONV, 2: Kind.DENSE}.get(tensors["weights"].ndim, Kind.OTHER)
    if roles == {"alpha"}:
        return Kind.PRELU
    return Kind.OTHER


def _text(key: Any, name: str, what: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return key.decode("latin1")
    raise FormatError(f"{name}: {what} is {_describe(key)}, not a string")


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# Writing ---------------------------------------------------------------------------------

# Pickle opcodes written directly; the rest come from `_fragment`.
_MARK, _STOP, _TUPLE, _BUILD = b"(", b".", b"t", b"b"
_EMPTY_LIST, _EMPTY_DICT, _APPEND, _APPENDS = b"]", b"}", b"a", b"e"
_SETITEM, _SETITEMS, _NEWFALSE = b"s", b"u", b"\x89"
_STATE_VERSION_1 = b"K\x01"
# _reconstruct(ndarray, (0,), b"b"), spelled as NumPy 1.x spelled it (all files in the
# wild do, and NumPy 2 still loads it).
_NEW_ARRAY = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"


def write(
    weights: WeightSet,
    path: str | os.PathLike[str],
    *,
    flavour: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> WriteResult:
    """Write `weights` in the canonical layout as an ``np.save``-compatible weight dict.

    ``flavour="list"`` writes ``{layer: [W, b]}`` where a layer holds just weights
    (and biases), and ``{role: array}`` for any other layer; ``"dict"`` writes every
    layer as ``{role: array}``; ``"flat"`` writes ``{full tensor name: array}`` (the
    name the tensor had in its source file, else ``layer/role``); None: ``"flat"`` when
    every layer holds one unnamed tensor (a checkpoint read flat), else ``"list"``.
    """
    if flavour is None:
        flavour = "flat" if weights.is_flat() else "list"
    if flavour not in FLAVOURS:
        raise UsageError(f"unknown .npy flavour {flavour!r}; known: {', '.join(FLAVOURS)}")
    counts = {"layers": 0, "tensors": 0, "parameters": 0}
    names: set[str] = set()
    skipped: list[str] = []
    notes: list[str] = []
    with atomic_output(path, force, notes=notes) as handle:
        npformat.write_array_header_1_0(
            handle, {"descr": "|O", "fortran_order": False, "shape": ()}
        )
        # PROTO 4 without framing: the wrapping 0-d object array, its state up to the dict.
        handle.write(
            pickle.PROTO
            + b"\x04"
            + _NEW_ARRAY
            + _MARK
            + _STATE_VERSION_1
            + _fragment(())
            + _dtype_fragment("|O")
            + _NEWFALSE
            + _EMPTY_LIST
            + _EMPTY_DICT
        )
        for layer in layout.canonical_layers(weights):
            if flavour == "flat":
                for role in layer.tensors:
                    key = layer.tensor_name(role)
                    if layer.tensors[role].dtype.hasobject:
                        skipped.append(f"{key} (string tensor)")
                        continue
                    if key in names:
                        raise MappingError(f"{path}: two tensors are named {key!r}")
                    names.add(key)
                    handle.write(_fragment(key))
                    _write_tensor(handle, path, layer, role, progress)
                    handle.write(_SETITEM)
                counts["layers"] += 1
                counts["tensors"] += len(layer.tensors)
                counts["parameters"] += layer.parameter_count
                continue
            if layer.name in names:
                raise MappingError(
                    f"{path}: two layers are named {layer.name!r}; a weight dict needs unique names"
                )
            names.add(layer.name)
            handle.write(_fragment(layer.name))
            if flavour == "list" and set(layer.tensors) in ({"weights"}, {"weights", "biases"}):
                handle.write(_EMPTY_LIST + _MARK)
                for role in _POSITIONAL_ROLES:
                    if role in layer.tensors:
                        _write_tensor(handle, path, layer, role, progress)
                handle.write(_APPENDS)
            else:
                handle.write(_EMPTY_DICT + _MARK)
                for role in layer.tensors:
                    handle.write(_fragment(role))
                    _write_tensor(handle, path, layer, role, progress)
                handle.write(_SETITEMS)
            handle.write(_SETITEM)
            counts["layers"] += 1
            counts["tensors"] += len(layer.tensors)
            counts["parameters"] += layer.parameter_count
        handle.write(_APPEND + _TUPLE + _BUILD + _STOP)
        size = handle.tell()
    widened = [
        layer.tensor_name(role)
        for layer, role, tensor in weights.tensors()
        if np.dtype(tensor.dtype).name == "bfloat16"
    ]
    if widened:
        notes.append(
            f"bfloat16 tensors written as float32 (exactly; NumPy has no bfloat16): "
            f"{', '.join(widened[:8])}{' ...' if len(widened) > 8 else ''}"
        )
    return WriteResult(
        layers=counts["layers"],
        tensors=counts["tensors"],
        parameters=counts["parameters"],
        bytes=size,
        files=[os.fspath(path)],
        skipped=skipped,
        notes=notes,
        detail={"flavour": flavour},
    )


def _write_tensor(
    handle: IO[bytes],
    path: str | os.PathLike[str],
    layer: Layer,
    role: str,
    progress: Progress | None,
) -> None:
    """One ndarray pickled as NumPy pickles it, its bytes streamed in chunks, copied by the
    kernel from a mapped input, or, for a `FilledTensor`, converted in place in the file."""
    tensor = layer.tensors[role]
    given = np.dtype(tensor.dtype)
    if given.isbuiltin == 2 and given.name != "bfloat16":  # float8 and other ml_dtypes
        raise FormatError(
            f"{path}: tensor {layer.name}/{role} has dtype {given}, which NumPy has no dtype "
            f"for (np.load could not read it back); a .npy weight dict holds NumPy's numeric "
            f"dtypes, and bfloat16 widened to float32"
        )
    if isinstance(tensor, FilledTensor):
        _write_filled(handle, tensor, progress)
        return
    deferred = tensor.deferred() if isinstance(tensor, CheckedTensor) else None
    check: Callable[[], None] | None = None
    if deferred is not None:
        array, check = deferred  # checked alongside the kernel's copy, or before any other use
    else:
        array = np.asarray(tensor)
    if check is not None and not (
        array.dtype.kind in _NUMERIC_KINDS and array.dtype == array.dtype.newbyteorder("<")
    ):
        check()  # converted or refused below: checked first
        check = None
    if array.dtype.name == "bfloat16":  # no NumPy dtype: np.load could not read it back
        array = array.astype(np.float32)  # exact: every bfloat16 is a float32
    if array.dtype.kind not in _NUMERIC_KINDS or array.dtype.hasobject:
        raise FormatError(
            f"{path}: tensor {layer.name}/{role} has dtype {array.dtype}; only "
            f"numeric tensors can be written to a .npy weight dict"
        )
    dtype = array.dtype.newbyteorder("<")
    nbytes = array.size * dtype.itemsize
    head = (
        _NEW_ARRAY
        + _MARK
        + _STATE_VERSION_1
        + _fragment(tuple(int(n) for n in array.shape))
        + _dtype_fragment(dtype.str)
        + _NEWFALSE
    )
    region = file_region(array) if array.dtype == dtype else None
    if region is not None:
        data_at = handle.tell() + len(head) + len(_bytes_opcode(nbytes))
        head += _padding(copy_gap(region[1], data_at, nbytes))
    handle.write(head + _bytes_opcode(nbytes))
    advance = progress.advance if progress is not None else None
    # A pending check is run by copy_to_handle, alongside the copy or, failing that, first.
    if array.dtype == dtype and copy_to_handle(array, handle, advance, check):
        handle.write(_TUPLE + _BUILD)
        return
    written = 0
    for chunk in chunks(array, CHUNK_BYTES):
        data = np.ascontiguousarray(chunk, dtype=dtype).reshape(-1).view(np.uint8)
        handle.write(data.data)
        written += data.nbytes
        if progress is not None:
            progress.advance(data.nbytes)
        del data  # before the next chunk is made, so only one is alive
        release_pages(chunk)  # a mapped input's pages, once written, need not stay resident
    if written != nbytes:  # cannot happen unless chunks() is wrong; the file would be corrupt
        raise FormatError(f"{path}: tensor {layer.name}/{role}: wrote {written} of {nbytes} bytes")
    handle.write(_TUPLE + _BUILD)


def _write_filled(handle: IO[bytes], tensor: FilledTensor, progress: Progress | None) -> None:
    """The array's pickle header, then its bytes made by `fill` right in the file (no
    intermediate array, no copy through write())."""
    shape, fill = tensor.shape, tensor.fill
    dtype = tensor.dtype.newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    handle.write(
        _NEW_ARRAY
        + _MARK
        + _STATE_VERSION_1
        + _fragment(tuple(shape))
        + _dtype_fragment(dtype.str)
        + _NEWFALSE
        + _bytes_opcode(nbytes)
    )
    if nbytes:
        with region_at_handle(handle, nbytes) as region:
            fill(region.view(dtype).reshape(shape))
            del region  # no view may outlive the block, or the mapping cannot close
        if progress is not None:
            progress.advance(nbytes)
    handle.write(_TUPLE + _BUILD)


def _padding(gap: int) -> bytes:
    """Opcodes that push zeros and pop them, `gap` bytes long (plus a block when `gap` is
    too short for them; nothing when it is 0): what puts a copied tensor's bytes where
    `copy_gap` says the kernel copies them fastest. The unpickler's stack is as before."""
    if gap == 0:
        return b""
    if gap < 3:
        gap += COPY_BLOCK_BYTES
    if gap <= 258:
        return pickle.SHORT_BINBYTES + bytes([gap - 3]) + bytes(gap - 3) + pickle.POP
    return pickle.BINBYTES + struct.pack("<I", gap - 6) + bytes(gap - 6) + pickle.POP


def _bytes_opcode(nbytes: int) -> bytes:
    if nbytes < 256:
        return pickle.SHORT_BINBYTES + bytes([nbytes])
    if nbytes <= BINBYTES_LIMIT:
        return pickle.BINBYTES + struct.pack("<I", nbytes)
    return pickle.BINBYTES8 + struct.pack("<Q", nbytes)


def _fragment(obj: Any) -> bytes:
    """The pickle opcodes that push `obj`, with no PROTO, STOP or memo PUTs."""
    data = pickletools.optimize(pickle.dumps(obj, protocol=3))
    assert data[:2] == pickle.PROTO + b"\x03" and data[-1:] == _STOP
    return data[2:-1]


@functools.lru_cache(maxsize=64)
def _dtype_fragment(dtype_str: str) -> bytes:
    return _fragment(np.dtype(dtype_str))
