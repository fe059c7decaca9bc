"""Writing output files safely: refuse to overwrite, never leave half a file, never lose one.

An output is written to a temporary beside it, ``.NAME.<pid>.<random>.partial`` (same folder,
so the final rename is atomic), which its writer holds locked (``lockf``) while it has it
open. `publish` renames it into place: with `replace`, over what is there; without, only if
nothing appeared at the name meanwhile (``renameat2(RENAME_NOREPLACE)``, else a hard link),
so two runs racing to create one output cannot both succeed. A temporary whose writer died
(killed, power cut) is *stale*: the next run on that output removes it and says so in a note
(`remove_stale_temporaries`). A temporary is never taken for stale while its writer lives.

A full disk, a read-only folder or a refused permission while writing is an `OutputError`
naming the output (`output_errors`), with the temporary removed.

Example::

    notes: list[str] = []
    with atomic_output("out.npy", force=False, notes=notes) as f:
        f.write(data)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from weightconv.errors import FormatError, OutputError, OutputExistsError, UsageError

TEMPORARY_SUFFIX = ".partial"
#: What a moved-aside old file is called: `.NAME.<pid>.<random>.old` (see ckpt `naming`).
ASIDE_SUFFIX = ".old"
#: A temporary whose writer cannot be told apart from a live one is stale after this long.
STALE_AFTER_SECONDS = 24 * 3600

_REASONS = {
    errno.ENOSPC: "the disk is full (no space left on the device)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file would be larger than the largest file allowed here",
    errno.EROFS: "its folder is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
_NOT_SUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


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


# Temporaries ---------------------------------------------------------------------------------


def temporary_beside(target: Path) -> tuple[int, Path]:
    """A new hidden temporary ``.NAME.<pid>.<random>.partial`` in `target`'s folder: its open
    (read-write, locked) descriptor and path. Closing the descriptor releases the lock."""
    for _ in range(8):
        temporary = target.with_name(
            f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}{TEMPORARY_SUFFIX}"
        )
        try:
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            continue
        except OSError as exc:
            raise (output_error(target, exc) or exc) from None
        if _lock(fd, temporary):
            return fd, temporary
        # A cleaner had it open for a moment (and may have removed it): anew.
        with contextlib.suppress(OSError):
            if os.stat(temporary).st_ino == os.fstat(fd).st_ino:
                os.unlink(temporary)
        os.close(fd)
    raise OutputError(f"{target}: cannot create a temporary file in {target.parent}")


def aside_beside(target: Path) -> Path:
    """A name ``.NAME.<pid>.<random>.old`` to keep an old file under while it is replaced."""
    return target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}{ASIDE_SUFFIX}")


def _lock(fd: int, path: Path) -> bool:
    """Lock the new file at `fd`; False unless it is locked and still at `path`."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:  # EAGAIN: a cleaner is probing it; else no locks here: the PID it is
        return exc.errno not in (errno.EAGAIN, errno.EACCES)
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def owner_alive(pid: int | None, path: Path) -> bool:
    """Whether the writer of `path` (PID `pid`, None when unknown) may still be running: it is
    this process, its lock on `path` is held, or the file is younger than a day and its PID
    is alive or unknown (after a day a live PID is taken for reused). A file that is gone
    has no owner."""
    if pid == os.getpid():
        return True
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return False
    if _locked(path):
        return True
    return age < STALE_AFTER_SECONDS and (pid is None or _pid_alive(pid))


def _locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    # A zombie is dead, only not yet reaped.
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    return True


def parse_temporary(name: str, belongs: Callable[[str], bool]) -> tuple[str, int | None] | None:
    """(target name, writer PID or None) when `name` is a temporary of a target `belongs`
    accepts: ``.NAME.<pid>.<random>.partial``, or ``.NAME.<random>.partial`` as written by
    weightconv before the PID was recorded."""
    if not (name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)):
        return None
    stem, dot, token = name[1 : -len(TEMPORARY_SUFFIX)].rpartition(".")
    if not dot or len(token) != 8:
        return None
    base, dot, pid = stem.rpartition(".")
    if dot and pid.isdigit() and belongs(base):
        return base, int(pid)
    return (stem, None) if belongs(stem) else None


def remove_stale_temporaries(folder: Path, belongs: Callable[[str], bool]) -> list[str]:
    """Remove the temporaries in `folder` of targets `belongs` accepts whose writer is gone;
    a note naming them, or none. What cannot be removed (a read-only folder) is left."""
    removed: list[str] = []
    total = 0
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except OSError:
        return []
    for name in names:
        parsed = parse_temporary(name, belongs)
        if parsed is None:
            continue
        path = folder / name
        if owner_alive(parsed[1], path):
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            continue
        removed.append(name)
        total += size
    if not removed:
        return []
    shown = ", ".join(removed[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5 else "")
    return [
        f"removed {len(removed)} temporary file{'s' if len(removed) > 1 else ''} "
        f"({_size(total)}) left in {folder} by an interrupted run: {shown}"
    ]


def stale_temporaries_of(target: Path) -> list[str]:
    """`remove_stale_temporaries` for the temporaries of one output file."""
    return remove_stale_temporaries(target.parent, lambda name: name == target.name)


# Publishing ----------------------------------------------------------------------------------


def publish(temporary: Path, target: Path, *, replace: bool) -> None:
    """Give a finished temporary file the usual permissions and rename it into place: over
    what is there when `replace`, else only while nothing is (OutputExistsError if a file
    appeared at `target` since the run checked)."""
    os.chmod(temporary, 0o644 & ~_umask())
    if replace:
        os.replace(temporary, target)
        return
    try:
        move_noreplace(temporary, target)
    except FileExistsError:
        raise OutputExistsError(
            f"{target}: appeared while this run was writing it (another run?); "
            f"pass force=True to overwrite it"
        ) from None


def move_noreplace(source: Path, target: Path) -> None:
    """Rename `source` to `target`, failing with FileExistsError if `target` exists: one
    ``renameat2(RENAME_NOREPLACE)``, or where the file system lacks it a hard link and an
    unlink (a kill between the two leaves `source` as well, a stale temporary)."""
    if _renameat2 is not None:
        done = _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), 1)
        if done == 0:
            return
        code = ctypes.get_errno()
        if code not in _NOT_SUPPORTED:
            raise OSError(code, os.strerror(code), os.fspath(target))
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (*_NOT_SUPPORTED, errno.EPERM, errno.EMLINK):
            raise
        if os.path.lexists(target):  # no hard links here: check, then rename
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target) from None
        os.rename(source, target)
        return
    os.unlink(source)


def _find_renameat2() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    path, directory = ctypes.c_char_p, ctypes.c_int
    function.argtypes = [directory, path, directory, path, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_AT_FDCWD = -100
_renameat2 = _find_renameat2()


def keep_aside(final: Path, aside: Path) -> None:
    """Keep the file at `final` also under `aside` while a new one replaces it: a hard link
    (`final` stays as it is), or where links are not supported a rename. Nothing to keep
    when `final` is absent."""
    try:
        os.link(final, aside)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (*_NOT_SUPPORTED, errno.EPERM, errno.EMLINK):
            raise
        os.replace(final, aside)


def remove_files(paths: list[Path]) -> None:
    """Remove each of `paths` that exists."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def reserve(fd: int, offset: int, length: int) -> None:
    """Allocate `length` bytes of the file at `offset` (extending it, never shrinking it), so
    that writing them through a memory map cannot fail (SIGBUS) on a full disk: the disk is
    full now, as an OSError, or not at all. Where the file system cannot allocate ahead the
    file is only extended."""
    if length <= 0:
        return
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno not in _NOT_SUPPORTED:
            raise
        if os.fstat(fd).st_size < offset + length:
            os.ftruncate(fd, offset + length)


# Errors --------------------------------------------------------------------------------------


def output_error(target: Path, exc: OSError) -> OutputError | None:
    """The one-line error for an OSError that says the output cannot be written (disk full,
    read-only, no permission), or None for any other OSError."""
    reason = _REASONS.get(exc.errno or 0)
    if reason is None:
        return None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        with contextlib.suppress(OSError):
            stat = os.statvfs(target.parent)
            reason += f"; {_size(stat.f_bavail * stat.f_frsize)} free in {target.parent}"
    return OutputError(f"{target}: cannot be written: {reason}")


@contextlib.contextmanager
def output_errors(target: Path) -> Iterator[None]:
    """Turn an OSError of writing `target` (or a file beside it named after it: its
    temporaries, a checkpoint's data files) into an `OutputError`. OSErrors naming another
    file (an input's) pass through."""
    try:
        yield
    except OSError as exc:
        names = [n for n in (exc.filename, exc.filename2) if n is not None]
        error = output_error(target, exc) if all(_beside(n, target) for n in names) else None
        if error is None:
            raise
        raise error from None


def _beside(name: str | bytes | int, target: Path) -> bool:
    if isinstance(name, int):
        return False
    path = Path(os.fsdecode(name))
    return path.parent == target.parent and path.name.lstrip(".").startswith(target.name)


def _size(count: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


# Whole files ---------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], force: bool = False, *, notes: list[str] | None = None
) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`; rename it into place only if the block succeeds.
    Stale temporaries of `path` are removed first, noted in `notes`.

    Example::

        with atomic_output("out.npy", force=False) as f:
            f.write(data)
    """
    with atomic_path(path, force, notes=notes) as temporary, open(temporary, "r+b") as handle:
        yield handle


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], force: bool = False, *, notes: list[str] | None = None
) -> Iterator[Path]:
    """`atomic_output` for writers that need a path rather than a file object (h5py): a
    temporary file beside `path`, renamed into place when the block succeeds, removed when
    it fails. Without `force`, a file that appears at `path` meanwhile is not replaced."""
    target = check_writable(path, force)
    removed = stale_temporaries_of(target)
    if notes is not None:
        notes.extend(removed)
    fd, temporary = temporary_beside(target)
    try:
        with output_errors(target):
            try:
                yield temporary
                publish(temporary, target, replace=force)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
    finally:
        os.close(fd)


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
