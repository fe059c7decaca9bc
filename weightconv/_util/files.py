"""Writing output files safely: refuse to overwrite, never leave half a file."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from weightconv.errors import FormatError, OutputExistsError, UsageError


def check_writable(path: str | os.PathLike[str], force: bool) -> Path:
    """Raise unless `path` may be written: it must not exist (or `force`), its folder must."""
    target = Path(path)
    if target.exists() and not force:
        raise OutputExistsError(f"{target}: exists; pass force=True to overwrite it")
    if target.is_dir():
        raise UsageError(f"{target}: is a directory")
    if not target.parent.exists():
        raise UsageError(f"{target}: folder {target.parent} does not exist")
    return target


def temporary_beside(target: Path) -> tuple[int, Path]:
    """A new hidden temporary file in `target`'s folder (same file system, so the final
    rename is atomic): its open descriptor and path."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    return fd, Path(name)


def publish(temporary: Path, target: Path) -> None:
    """Give a finished temporary file the usual permissions and rename it into place."""
    os.chmod(temporary, 0o644 & ~_umask())
    os.replace(temporary, target)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], force: bool = False) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`; rename it into place only if the block succeeds.

    Example::

        with atomic_output("out.npy", force=False) as f:
            f.write(data)
    """
    with atomic_path(path, force) as temporary, open(temporary, "r+b") as handle:
        yield handle


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """`atomic_output` for writers that need a path rather than a file object (h5py): a
    temporary file beside `path`, renamed into place when the block succeeds, removed when
    it fails."""
    target = check_writable(path, force)
    fd, temporary = temporary_beside(target)
    os.close(fd)
    try:
        yield temporary
        publish(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
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
            yield array[start : start + step]
    else:
        for row in array:
            yield from chunks(row, limit)


@contextlib.contextmanager
def open_input(path: str | os.PathLike[str]) -> Iterator[io.BufferedReader]:
    """Open a weight file for reading; a missing, folder or unreadable path is one clear line."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, errors translated here
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a weight file") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read: {exc.strerror}") from None
    with handle:
        yield handle
