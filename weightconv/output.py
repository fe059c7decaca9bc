"""Writing output files safely: refuse to overwrite, never leave half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import OutputExistsError, UsageError


def check_writable(path: str | os.PathLike[str], force: bool) -> Path:
    """Raise unless `path` may be written: it must not exist (or `force`), its folder must."""
    target = Path(path)
    if target.exists() and not force:
        raise OutputExistsError(f"{target}: exists; pass --force to overwrite it")
    if target.is_dir():
        raise UsageError(f"{target}: is a directory")
    if not target.parent.exists():
        raise UsageError(f"{target}: folder {target.parent} does not exist")
    return target


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], force: bool = False) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`; rename it into place only if the block succeeds.

    Example::

        with atomic_output("out.npy", force=False) as f:
            f.write(data)
    """
    target = check_writable(path, force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial",
                                    dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.chmod(tmp_name, 0o644 & ~_umask())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def chunks(array: np.ndarray, limit: int) -> Iterator[np.ndarray]:
    """Pieces of `array` in C order, each at most `limit` bytes (or one element), so a writer
    can stream a tensor of any layout without materialising all of it."""
    if array.ndim == 0 or array.nbytes <= limit:
        yield array
        return
    row_bytes = array.nbytes // max(array.shape[0], 1)
    if row_bytes <= limit:
        step = max(1, limit // max(row_bytes, 1))
        for start in range(0, array.shape[0], step):
            yield array[start:start + step]
    else:
        for row in array:
            yield from chunks(row, limit)
