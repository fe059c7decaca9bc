"""The names of a checkpoint's files, and finding a checkpoint from any way of naming it.

A V2 checkpoint with prefix ``P`` is ``P.index`` and ``P.data-00000-of-0000N`` ..
``P.data-{N-1}-of-{N}`` (five digits each, so at most 99999 data files). A V1 checkpoint is
one table file. A folder's ``checkpoint`` file (a text ``CheckpointState``) names its latest
checkpoint, by a path relative to the folder or absolute.

Replacing a checkpoint goes through a journal, ``.P.weightconv-journal``, published before
the first rename and removed after the last (`commit`): a kill at any moment leaves the old
checkpoint, the new one, or the journal, from which the next read or write of ``P``
finishes the new one (its index is in place) or restores the old one (`recover`).

Example::

    where = locate("run/")            # Location(2, run/model.ckpt-1000)
    data_filename(where.path, 0, 2)   # run/model.ckpt-1000.data-00000-of-00002
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from weightconv._util.files import (
    aside_beside,
    keep_aside,
    move_noreplace,
    output_errors,
    owner_alive,
    publish,
    remove_files,
    remove_stale_temporaries,
    temporary_beside,
)
from weightconv.codecs import sstable
from weightconv.errors import FormatError, OutputError, OutputExistsError, WeightconvError

INDEX_SUFFIX = ".index"
STATE_FILE = "checkpoint"
DATA_RE = re.compile(r"^(?P<prefix>.+)\.data-(?P<shard>\d{5})-of-(?P<count>\d{5})$")
#: The most data files a name of five digits can count.
MAX_SHARDS = 99999


def data_filename(prefix: str | os.PathLike[str], shard: int, count: int) -> Path:
    """The data file `shard` (from 0) of `count` of the checkpoint with this prefix."""
    return Path(f"{os.fspath(prefix)}.data-{shard:05d}-of-{count:05d}")


def index_filename(prefix: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(prefix)}{INDEX_SUFFIX}")


def output_paths(prefix: str | os.PathLike[str], shards: int = 1) -> list[Path]:
    """The files a checkpoint of `shards` data files consists of, the index first."""
    return [index_filename(prefix)] + [data_filename(prefix, i, shards) for i in range(shards)]


def prefix_of(path: str | os.PathLike[str]) -> Path:
    """The prefix an output path names: itself, or its ``.index`` without the suffix."""
    text = os.fspath(path)
    return Path(text.removesuffix(INDEX_SUFFIX))


def data_files(prefix: Path) -> list[Path]:
    """The data files on disk under `prefix`, of any shard count."""
    pattern = f"{glob_escape(prefix.name)}.data-*-of-*"
    return sorted(p for p in prefix.parent.glob(pattern) if DATA_RE.match(str(p)))


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


# Locating a checkpoint ---------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A checkpoint on disk: a V2 prefix (with ``.index``) or a V1 file."""

    version: int
    path: Path

    @property
    def index(self) -> Path:
        return index_filename(self.path)


def locate(path: str | os.PathLike[str]) -> Location | None:
    """What checkpoint `path` names, or None when it names none.

    Accepts a V2 prefix, its ``.index`` or a ``.data-*`` file, a folder holding a
    ``checkpoint`` state file (its latest checkpoint) or a single ``*.index``, or a
    V1 checkpoint file.
    """
    target = Path(path)
    _recover_before_reading(target)
    if target.is_dir():
        latest = latest_in_state_file(target)
        if latest is None:
            indexes = sorted(target.glob(f"*{INDEX_SUFFIX}"))
            if len(indexes) != 1:
                return None
            latest = Path(str(indexes[0])[: -len(INDEX_SUFFIX)])
        return locate(latest)
    text = str(target)
    if text.endswith(INDEX_SUFFIX) and target.is_file():
        return Location(2, Path(text[: -len(INDEX_SUFFIX)]))
    match = DATA_RE.match(text)
    if match and index_filename(match["prefix"]).is_file():
        return Location(2, Path(match["prefix"]))
    if index_filename(text).is_file():
        return Location(2, target)
    if target.is_file() and _ends_with_table_magic(target):
        return Location(1, target)
    return None


def _ends_with_table_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() < sstable.FOOTER_SIZE:
                return False
            handle.seek(-8, os.SEEK_END)
            return sstable.has_table_footer(handle.read(8))
    except OSError:
        return False


# The state file ----------------------------------------------------------------------------


def latest_in_state_file(folder: Path) -> Path | None:
    """The latest checkpoint the folder's state file names; None when it has none."""
    state = folder / STATE_FILE
    if not state.is_file():
        return None
    from google.protobuf import text_format

    from weightconv._proto import tf_checkpoint_pb2

    message = tf_checkpoint_pb2.CheckpointState()
    try:
        text_format.Parse(state.read_text(encoding="utf-8", errors="replace"), message)
    except text_format.ParseError as exc:
        raise FormatError(f"{state}: not a checkpoint state file: {exc}") from None
    if not message.model_checkpoint_path:
        raise FormatError(f"{state}: names no model_checkpoint_path")
    named = Path(message.model_checkpoint_path)
    candidates = [named] if named.is_absolute() else [folder / named]
    candidates.append(folder / named.name)  # state files written elsewhere keep absolute paths
    for candidate in candidates:
        if index_filename(candidate).is_file() or candidate.is_file():
            return candidate
    raise FormatError(
        f"{state}: its latest checkpoint {message.model_checkpoint_path!r} is not in {folder}"
    )


def update_state_file(prefix: Path) -> Path:
    """Point the folder's ``checkpoint`` state file at `prefix`, keeping earlier entries."""
    temporary, state_path = stage_state_file(prefix)
    try:
        with output_errors(state_path):
            publish(temporary, state_path, replace=True)  # the state file is updated in place
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return state_path


def stage_state_file(prefix: Path) -> tuple[Path, Path]:
    """The folder's state file as `update_state_file` would make it, in a temporary beside
    it: (temporary, state file). For `commit` to rename into place with the checkpoint."""
    from google.protobuf import text_format

    from weightconv._proto import tf_checkpoint_pb2 as pb

    state_path = prefix.parent / STATE_FILE
    state = pb.CheckpointState()
    if state_path.is_file():
        with contextlib.suppress(text_format.ParseError, UnicodeDecodeError, OSError):
            text_format.Parse(state_path.read_text(encoding="utf-8"), state)
    name = prefix.name
    paths = [p for p in state.all_model_checkpoint_paths if p != name] + [name]
    fresh = pb.CheckpointState(model_checkpoint_path=name, all_model_checkpoint_paths=paths)
    fd, temporary = temporary_beside(state_path)
    try:
        with output_errors(state_path), os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text_format.MessageToString(fresh))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return temporary, state_path


# Replacing a checkpoint: the commit journal --------------------------------------------------

JOURNAL_SUFFIX = ".weightconv-journal"
_JOURNAL_FORMAT = "weightconv checkpoint commit"
#: Notes of recoveries made in this process, by prefix, until a writer or reader takes them.
_RECOVERY_NOTES: dict[str, list[str]] = {}
#: The tokens of the commits this process is making now (any other of its own is stale).
_ACTIVE: set[str] = set()


def journal_filename(prefix: Path) -> Path:
    """The file that records a commit of `prefix` in progress: ``.P.weightconv-journal``."""
    return prefix.with_name(f".{prefix.name}{JOURNAL_SUFFIX}")


def checkpoint_files(prefix: Path) -> list[Path]:
    """The files of the V2 checkpoint(s) at `prefix` on disk: its index, its data files."""
    index = index_filename(prefix)
    return ([index] if index.exists() else []) + data_files(prefix)


@dataclass
class _Journal:
    """A commit, in names within the prefix's folder: the new files' [temporary, final,
    inode] in the order they are renamed (the index last), the state file's [temporary,
    final], the old files kept aside [final, aside] because a new file takes their name, and
    the old files the new checkpoint does not use."""

    pid: int
    token: str
    place: list[tuple[str, str, int]]
    after: list[tuple[str, str]]
    aside: list[tuple[str, str]]
    remove: list[str]

    def text(self) -> str:
        return json.dumps({"format": _JOURNAL_FORMAT, "version": 1, **asdict(self)}, indent=1)

    @classmethod
    def read(cls, path: Path) -> _Journal:
        """The journal at `path` (FileNotFoundError when there is none)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != _JOURNAL_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return cls(
                pid=int(data["pid"]),
                token=str(data["token"]),
                place=[(str(t), str(f), int(i)) for t, f, i in data["place"]],
                after=[(str(t), str(f)) for t, f in data["after"]],
                aside=[(str(f), str(a)) for f, a in data["aside"]],
                remove=[str(name) for name in data["remove"]],
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise FormatError(
                f"{path}: not a readable record of an interrupted checkpoint commit "
                f"({type(exc).__name__}: {exc}); check the checkpoint's files and remove it"
            ) from None

    def owner_alive(self, path: Path) -> bool:
        """Whether the run that wrote this journal at `path` may still be committing."""
        if self.pid == os.getpid():
            return self.token in _ACTIVE
        return owner_alive(self.pid, path)

    def committed(self, folder: Path) -> bool:
        """Whether the new index is in place (renamed last, it makes the new checkpoint)."""
        _, final, inode = self.place[-1]
        return _inode(folder / final) == inode


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def commit(
    prefix: Path,
    files: list[tuple[Path, Path]],
    after: list[tuple[Path, Path]],
    *,
    replace: bool,
) -> None:
    """Rename finished temporaries `files` (temporary, final) into place, the index last, then
    `after` (the state file), so that a kill at any moment leaves the old checkpoint or the
    new one, or a journal from which `recover` restores one of them.

    The journal is published first, never over another: it is also the lock that keeps two
    runs from committing one prefix at once. Old files whose names the new checkpoint reuses
    are hard-linked aside (moved where links are not supported), the new files renamed in,
    and only once the index is in place are the old leftovers and the journal removed.
    Without `replace` an existing checkpoint is refused (OutputExistsError). On failure the
    temporaries are gone, or the journal stays for the next run to finish or undo.
    """
    fd = None
    try:
        for _ in range(3):
            old = checkpoint_files(prefix)
            if old and not replace:
                raise OutputExistsError(
                    f"{prefix}: a checkpoint with this prefix appeared while this run was "
                    f"writing it ({old[0].name}); pass force=True to overwrite it"
                )
            journal = _plan(files, after, old)
            fd = _claim(prefix, journal, replace)
            if checkpoint_files(prefix) == old:
                break
            os.unlink(journal_filename(prefix))  # another run committed meanwhile: anew
            _ACTIVE.discard(journal.token)
            os.close(fd)
            fd = None
        else:
            raise OutputError(f"{prefix}: other runs keep replacing this checkpoint")
    except BaseException:
        remove_files([*(t for t, _ in files), *(t for t, _ in after)])
        if fd is not None:
            _ACTIVE.discard(journal.token)
            os.close(fd)
        raise
    try:
        _apply(journal, prefix, replace)
    finally:
        _ACTIVE.discard(journal.token)
        os.close(fd)


def _plan(
    files: list[tuple[Path, Path]], after: list[tuple[Path, Path]], old: list[Path]
) -> _Journal:
    names = {final.name for _, final in files}
    return _Journal(
        pid=os.getpid(),
        token=os.urandom(8).hex(),
        place=[(t.name, f.name, os.stat(t).st_ino) for t, f in files],
        after=[(t.name, f.name) for t, f in after],
        aside=[(p.name, aside_beside(p).name) for p in old if p.name in names],
        remove=[p.name for p in old if p.name not in names],
    )


def _claim(prefix: Path, journal: _Journal, replace: bool) -> int:
    """Publish the journal (never over another's); its descriptor, which holds its lock."""
    journal_path = journal_filename(prefix)
    for _ in range(3):
        fd, temporary = temporary_beside(journal_path)
        _ACTIVE.add(journal.token)  # before it is published: a thread of ours may read it
        try:
            os.write(fd, journal.text().encode("utf-8"))
            move_noreplace(temporary, journal_path)
            return fd
        except FileExistsError:
            pass
        except BaseException:
            _ACTIVE.discard(journal.token)
            os.close(fd)
            remove_files([temporary])
            raise
        _ACTIVE.discard(journal.token)
        os.close(fd)
        remove_files([temporary])
        try:
            other = _Journal.read(journal_path)
        except FileNotFoundError:
            continue  # it finished meanwhile
        if other.owner_alive(journal_path):
            error = OutputError if replace else OutputExistsError
            raise error(
                f"{prefix}: another run (pid {other.pid}) is writing this checkpoint right "
                f"now; try again when it is done"
            )
        recover(prefix)
    raise OutputError(f"{prefix}: other runs keep writing this checkpoint")


def _apply(journal: _Journal, prefix: Path, replace: bool) -> None:
    folder = prefix.parent
    try:
        for final, aside in journal.aside:
            keep_aside(folder / final, folder / aside)
        for temporary, final, _ in journal.place:
            if replace:
                os.replace(folder / temporary, folder / final)
            else:
                move_noreplace(folder / temporary, folder / final)
    except BaseException as exc:
        if not journal.committed(folder):
            _roll_back(journal, folder)
            os.unlink(journal_filename(prefix))
            if isinstance(exc, FileExistsError):
                raise OutputExistsError(
                    f"{prefix}: {Path(exc.filename2 or exc.filename or '').name} appeared "
                    f"while this run was writing the checkpoint; pass force=True to overwrite it"
                ) from None
            raise
    try:
        _roll_forward(journal, folder)
        remove_files([journal_filename(prefix)])
    except BaseException:  # once more, then the journal is left for the next run
        with contextlib.suppress(Exception):
            _roll_forward(journal, folder)
            remove_files([journal_filename(prefix)])
        raise


def _roll_back(journal: _Journal, folder: Path) -> None:
    """Put the old files back and remove the new ones: the checkpoint as it was."""
    asides = dict(journal.aside)
    for temporary, final, inode in journal.place:
        if final in asides:
            aside = folder / asides[final]
            if aside.exists():
                os.replace(aside, folder / final)
            remove_files([aside])  # a hard link to the same file outlives the rename
        elif _inode(folder / final) == inode:  # ours, not a file that appeared meanwhile
            remove_files([folder / final])
        remove_files([folder / temporary])
    remove_files([folder / t for t, _ in journal.after])


def _roll_forward(journal: _Journal, folder: Path) -> None:
    """Finish: every new file in place, the old leftovers removed."""
    for temporary, final in [(t, f) for t, f, _ in journal.place] + journal.after:
        if (folder / temporary).exists():
            os.replace(folder / temporary, folder / final)
        remove_files([folder / temporary])  # a hard link to the same file outlives the rename
    remove_files([folder / name for name in journal.remove])
    remove_files([folder / aside for _, aside in journal.aside])


def recover(prefix: Path) -> list[str]:
    """Finish or undo an interrupted commit of `prefix` whose run is gone (roll forward when
    the new index is in place, else back), and remove the stale temporaries of its files.
    Returns notes saying what was done; they are also kept for `take_notes`."""
    folder = prefix.parent
    journal_path = journal_filename(prefix)
    notes = []
    with contextlib.suppress(FileNotFoundError), output_errors(prefix):
        journal = _Journal.read(journal_path)
        if journal.owner_alive(journal_path):
            return []
        if journal.committed(folder):
            _roll_forward(journal, folder)
            done = "the new checkpoint was complete: finished replacing the old one"
        else:
            _roll_back(journal, folder)
            done = (
                "restored the previous checkpoint"
                if journal.aside or journal.remove
                else "removed its incomplete files"
            )
        remove_files([journal_path])
        notes.append(
            f"{prefix}: a run (pid {journal.pid}) was interrupted while writing it; {done}"
        )
    notes += remove_stale_temporaries(folder, lambda name: _belongs(prefix, name))
    _RECOVERY_NOTES.setdefault(str(prefix), []).extend(notes)
    return notes


def take_notes(prefix: Path) -> list[str]:
    """The notes of recoveries of `prefix` made in this process since last taken."""
    return _RECOVERY_NOTES.pop(str(prefix), [])


def _belongs(prefix: Path, name: str) -> bool:
    """Whether `name` is a file of the checkpoint `prefix` (or its folder's state file)."""
    if name in (f"{prefix.name}{INDEX_SUFFIX}", STATE_FILE, journal_filename(prefix).name):
        return True
    match = DATA_RE.match(name)
    return match is not None and match["prefix"] == prefix.name


def _recover_before_reading(target: Path) -> None:
    """Before a checkpoint is read, settle an interrupted commit of it (quietly: a folder
    that cannot be written is read as it is)."""
    if target.is_dir():
        prefixes = [
            target / p.name[1 : -len(JOURNAL_SUFFIX)] for p in target.glob(f".*{JOURNAL_SUFFIX}")
        ]
    else:
        text = str(target)
        match = DATA_RE.match(text)
        prefixes = [Path(match["prefix"] if match else text.removesuffix(INDEX_SUFFIX))]
    for prefix in prefixes:
        if journal_filename(prefix).exists():
            with contextlib.suppress(WeightconvError, OSError):
                recover(prefix)
