"""TensorFlow's DataType enum and the NumPy dtypes its tensor bytes are read as.

bfloat16 has no NumPy dtype of its own; it comes from `ml_dtypes` (the package
TensorFlow and JAX use), imported only when a bfloat16 tensor is met.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from weightconv.errors import FormatError

STRING = 7
BFLOAT16 = 14
RESOURCE = 20
VARIANT = 21

#: enum value -> (TensorFlow's name, NumPy little-endian dtype string or None).
DTYPES: dict[int, tuple[str, str | None]] = {
    1: ("float32", "<f4"),
    2: ("float64", "<f8"),
    3: ("int32", "<i4"),
    4: ("uint8", "|u1"),
    5: ("int16", "<i2"),
    6: ("int8", "|i1"),
    7: ("string", None),
    8: ("complex64", "<c8"),
    9: ("int64", "<i8"),
    10: ("bool", "|b1"),
    11: ("qint8", "|i1"),
    12: ("quint8", "|u1"),
    13: ("qint32", "<i4"),
    14: ("bfloat16", None),
    15: ("qint16", "<i2"),
    16: ("quint16", "<u2"),
    17: ("uint16", "<u2"),
    18: ("complex128", "<c16"),
    19: ("float16", "<f2"),
    20: ("resource", None),
    21: ("variant", None),
    22: ("uint32", "<u4"),
    23: ("uint64", "<u8"),
}

_FROM_NUMPY: dict[str, int] = {
    "float32": 1,
    "float64": 2,
    "int32": 3,
    "uint8": 4,
    "int16": 5,
    "int8": 6,
    "complex64": 8,
    "int64": 9,
    "bool": 10,
    "uint16": 17,
    "complex128": 18,
    "float16": 19,
    "uint32": 22,
    "uint64": 23,
    "bfloat16": BFLOAT16,
}


def name(enum_value: int) -> str:
    entry = DTYPES.get(enum_value)
    return entry[0] if entry else f"DataType({enum_value})"


def bfloat16() -> np.dtype[Any]:
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes is a dependency
        raise FormatError("bfloat16 tensors need the ml_dtypes package") from None
    return np.dtype(ml_dtypes.bfloat16)


def numpy_dtype(enum_value: int, what: str) -> np.dtype[Any]:
    """The NumPy dtype for a TensorFlow dtype; strings are object arrays of bytes."""
    if enum_value == STRING:
        return np.dtype(object)
    if enum_value == BFLOAT16:
        return bfloat16()
    entry = DTYPES.get(enum_value)
    if entry is None or entry[1] is None:
        raise FormatError(f"{what}: dtype {name(enum_value)} cannot be read as an array")
    return np.dtype(entry[1])


def from_numpy(dtype: np.dtype[Any], what: str) -> int:
    """The TensorFlow enum value for a NumPy dtype (object/bytes arrays are strings)."""
    if dtype.kind in "OSa":
        return STRING
    key = dtype.name
    if key not in _FROM_NUMPY:
        raise FormatError(f"{what}: dtype {dtype} has no TensorFlow equivalent")
    return _FROM_NUMPY[key]


def itemsize(enum_value: int) -> int | None:
    """Bytes per element of a fixed-width dtype; None for strings, resources and variants."""
    if enum_value == BFLOAT16:
        return 2
    entry = DTYPES.get(enum_value)
    if entry is None or entry[1] is None:
        return None
    return np.dtype(entry[1]).itemsize


def min_stored_bytes(enum_value: int) -> int:
    """The fewest bytes a V2 bundle can store one element of this dtype in: its item size,
    or 1 for a string (one byte of varint length at least); 0 when unknown."""
    if enum_value == STRING:
        return 1
    return itemsize(enum_value) or 0
