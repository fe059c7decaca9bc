"""TensorFlow checkpoints: V2 bundles (read and write) and V1 files (read). The options are
declared here, apart from the reader and writer, so the registry lists them cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from weightconv._util.text import parse_positive_int, parse_size
from weightconv.formats.base import Options, option


@dataclass(frozen=True)
class CkptReadOptions(Options):
    flat: bool = option(
        False,
        help="keep every tensor under its full name (Variable_3, "
        "h1/w/Adam, ...) instead of grouping layer/role; training "
        "state included",
    )
    strip_scope: str = option(
        "",
        metavar="SCOPE",
        help="remove this leading scope from tensor names, e.g. vgg_16/ "
        "(an error when no tensor has it)",
    )


@dataclass(frozen=True)
class CkptWriteOptions(Options):
    shards: int = option(
        1,
        metavar="N",
        parse=parse_positive_int,
        help="spread the tensors over N data files of about equal size",
    )
    max_shard_size: int | None = option(
        None,
        metavar="SIZE",
        parse=parse_size,
        help="start a new data file before one would exceed SIZE (bytes, or with K/M/G); a "
        "tensor larger than SIZE gets a file of its own, with a note",
    )
    write_state: bool = option(
        True,
        flag="--no-write-state",
        help="leave the folder's `checkpoint` state file alone (by "
        "default it is pointed at the new checkpoint, as "
        "TensorFlow's Saver does)",
    )
