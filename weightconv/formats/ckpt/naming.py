"""The names of a checkpoint's files, and finding a checkpoint from any way of naming it.

A V2 checkpoint with prefix ``P`` is ``P.index`` and ``P.data-00000-of-0000N`` ..
``P.data-{N-1}-of-{N}`` (five digits each, so at most 99999 data files). A V1 checkpoint is
one table file. A folder's ``checkpoint`` file (a text ``CheckpointState``) names its latest
checkpoint, by a path relative to the folder or absolute.

Example::

    where = locate("run/")            # Location(2, run/model.ckpt-1000)
    data_filename(where.path, 0, 2)   # run/model.ckpt-1000.data-00000-of-00002
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from weightconv._util.files import publish, temporary_beside
from weightconv.codecs import sstable
from weightconv.errors import FormatError

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
    from google.protobuf import text_format

    from weightconv._proto import tf_checkpoint_pb2 as pb

    state_path = prefix.parent / STATE_FILE
    state = pb.CheckpointState()
    if state_path.is_file():
        with contextlib.suppress(text_format.ParseError, UnicodeDecodeError):
            text_format.Parse(state_path.read_text(encoding="utf-8"), state)
    name = prefix.name
    paths = [p for p in state.all_model_checkpoint_paths if p != name] + [name]
    fresh = pb.CheckpointState(model_checkpoint_path=name, all_model_checkpoint_paths=paths)
    fd, temp = temporary_beside(state_path)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text_format.MessageToString(fresh))
    publish(temp, state_path)
    return state_path
