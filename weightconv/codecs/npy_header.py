"""The ``.npy`` header in front of a pickled weight dict, read without trusting it.

NumPy's reader takes the header's declared length at its word and reads that much, then
parses the text with ``ast.literal_eval`` and, when that fails, a fallback tokenizer: a
corrupt header can ask for 4 GiB or raise ``tokenize.TokenError``, ``SyntaxError`` or
``MemoryError`` rather than ``ValueError``. Here the length is checked first and every one
of those becomes a one-line FormatError naming the file.

Example::

    with open("det1.npy", "rb") as handle:
        read_weight_dict_header(handle, "det1.npy")   # now at the pickle
"""

from __future__ import annotations

import os
import tokenize
from typing import IO

import numpy as np
from numpy.lib import format as npformat

from weightconv.errors import FormatError

#: Longest header read (NumPy's own default limit); a weight dict's is about 100 bytes.
MAX_HEADER_BYTES = 10000
#: What NumPy's header parser lets out for a malformed header (its fallback tokenizer too).
_HEADER_ERRORS = (
    ValueError,
    SyntaxError,
    tokenize.TokenError,
    TypeError,
    MemoryError,
    RecursionError,
)


def read_weight_dict_header(handle: IO[bytes], name: str) -> None:
    """Read the magic and header of a ``.npy`` file declaring one 0-d object array; the
    handle is left at the pickle. FormatError for anything else."""
    try:
        version = npformat.read_magic(handle)
    except ValueError:
        raise FormatError(
            f"{name}: not a .npy file (it does not start with the NumPy magic string)"
        ) from None
    if version not in ((1, 0), (2, 0)):
        raise FormatError(
            f"{name}: .npy format version {version[0]}.{version[1]} is "
            f"not supported for weight dicts (1.0 and 2.0 are)"
        )
    # The declared length, checked before NumPy reads (and allocates) that much.
    width = 2 if version == (1, 0) else 4
    field = os.pread(handle.fileno(), width, handle.tell())
    declared = int.from_bytes(field, "little") if len(field) == width else 0
    remaining = os.fstat(handle.fileno()).st_size - handle.tell() - width
    if declared > min(remaining, MAX_HEADER_BYTES):
        there = (
            f"the file has {max(remaining, 0):,} after it"
            if declared > remaining
            else f"a header is {MAX_HEADER_BYTES:,} at most"
        )
        raise FormatError(f"{name}: .npy header declares {declared:,} bytes; {there}")
    try:
        if version == (1, 0):
            shape, _, dtype = npformat.read_array_header_1_0(handle, MAX_HEADER_BYTES)
        else:
            shape, _, dtype = npformat.read_array_header_2_0(handle, MAX_HEADER_BYTES)
    except _HEADER_ERRORS as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise FormatError(f"{name}: corrupt or truncated .npy header: {text[:200]}") from None
    if dtype != np.dtype(object) or shape != ():
        raise FormatError(
            f"{name}: holds one {dtype.name} array of shape {shape}, not a weight dict"
        )
