"""Writing output files safely: refuse to overwrite, never leave half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

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
