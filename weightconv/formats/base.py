"""What a format module provides, and the closed option contract every reader and writer keeps.

A format is one module (or package) plus one `Format` row in `weightconv.formats.FORMATS`.
The module provides::

    sniff(head: bytes, path: Path) -> bool           recognise a file by its first bytes
    read(path, options: ReadOptions) -> WeightSet
    write(weights, path, options: WriteOptions, *, force: bool,
          progress: Progress | None) -> WriteResult   (writable formats only)
    claims(path: Path) -> bool                       (optional: inputs known by location)
    check_output(path, force: bool) -> None          (optional: outputs of several files)

Options are frozen dataclasses derived from `Options`, one for reading and one for writing,
each field declared with `option(...)`: its type (the annotation), default, help text and CLI
flag. The registry builds them from what a caller gives with `Options.build`, which refuses an
unknown name (listing the names it takes) and a value of the wrong type or outside `choices`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from weightconv.errors import UsageError

T = TypeVar("T", bound="Options")
#: Each options class's specs, made once (they come from its type hints).
_SPECS: dict[type, list[OptionSpec]] = {}


def option(
    default: Any,
    *,
    help: str,
    flag: str | None = None,
    metavar: str | None = None,
    choices: Sequence[Any] | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """Declare one option field: `flag` is its CLI spelling (default ``--name-with-dashes``),
    `parse` turns the flag's text into a value (default: the annotation's type)."""
    return field(
        default=default,
        metadata={
            "help": help,
            "flag": flag,
            "metavar": metavar,
            "choices": tuple(choices) if choices else None,
            "parse": parse,
        },
    )


@dataclass(frozen=True)
class OptionSpec:
    """One declared option, as `Options.specs` lists it."""

    name: str
    annotation: Any
    default: Any
    help: str
    flag: str
    metavar: str | None
    choices: tuple[Any, ...] | None
    parse: Callable[[str], Any] | None

    @property
    def is_switch(self) -> bool:
        return self.annotation is bool


@dataclass(frozen=True)
class Options:
    """Base of every format's read and write options; has no fields itself."""

    #: Filled in by the registry: "npy writer", "caffemodel reader", ...
    role: ClassVar[str] = "options"

    @classmethod
    def specs(cls) -> list[OptionSpec]:
        if cls not in _SPECS:
            _SPECS[cls] = cls._make_specs()
        return list(_SPECS[cls])

    @classmethod
    def _make_specs(cls) -> list[OptionSpec]:
        hints = typing.get_type_hints(cls)
        specs = []
        for f in dataclasses.fields(cls):
            meta = f.metadata
            specs.append(
                OptionSpec(
                    name=f.name,
                    annotation=hints[f.name],
                    default=f.default,
                    help=meta.get("help", ""),
                    flag=meta.get("flag") or "--" + f.name.replace("_", "-"),
                    metavar=meta.get("metavar"),
                    choices=meta.get("choices"),
                    parse=meta.get("parse"),
                )
            )
        return specs

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls: type[T], given: Mapping[str, Any] | Options | None, *, where: str) -> T:
        """These options from a mapping of names to values (or an instance, returned as is).

        `where` names the reader or writer in messages, e.g. ``"the ckpt writer"``.
        """
        if isinstance(given, cls):
            return given
        if isinstance(given, Options):
            raise UsageError(f"{where} takes {cls.__name__}, not {type(given).__name__}")
        values = dict(given or {})
        known = {spec.name: spec for spec in cls.specs()}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UsageError(
                f"{where} takes no option {unknown[0]!r}; {describe_names(cls.names())}"
            )
        for name, value in values.items():
            check_value(known[name], value, where)
        return cls(**values)

    def changed(self) -> dict[str, Any]:
        """The options whose value differs from the default, by name."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        }

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class NoOptions(Options):
    """For a reader or writer that takes no options."""


def describe_names(names: Sequence[str]) -> str:
    return f"it takes: {', '.join(names)}" if names else "it takes no options"


def check_value(spec: OptionSpec, value: Any, where: str) -> None:
    """Refuse a value that does not fit the option's declared type or choices."""
    if spec.choices is not None and value is not None and value not in spec.choices:
        raise UsageError(
            f"{where}: option {spec.name} must be one of "
            f"{', '.join(map(str, spec.choices))}, got {value!r}"
        )
    if not _fits(value, spec.annotation):
        raise UsageError(
            f"{where}: option {spec.name} must be {_type_text(spec.annotation)}, "
            f"got {type(value).__name__} {value!r}"
        )


def _fits(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(annotation))
    if annotation is None or annotation is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (tuple, Sequence):
        args = typing.get_args(annotation)
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(item, args[0]) for item in value)
        return len(args) == len(value) and all(map(_fits, value, args))
    if origin is dict:
        key, item = typing.get_args(annotation)
        return isinstance(value, dict) and all(
            _fits(k, key) and _fits(v, item) for k, v in value.items()
        )
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is Path or annotation is os.PathLike:
        return isinstance(value, (str, os.PathLike))
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    if origin is tuple:
        return "a tuple of " + ", ".join(
            _type_text(a) for a in typing.get_args(annotation) if a is not Ellipsis
        )
    if annotation is Path:
        return "a path"
    return getattr(annotation, "__name__", str(annotation))


def plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


@dataclass
class WriteResult:
    """What a writer reports: counts, the files it wrote, what it left out and why."""

    layers: int
    tensors: int
    parameters: int
    bytes: int
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Format-specific facts worth reporting (shards, flavour, Keras layout, ...).
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "tensors": self.tensors,
            "parameters": self.parameters,
            "bytes": self.bytes,
            "files": list(self.files),
            "skipped": list(self.skipped),
            "notes": list(self.notes),
            "detail": plain(self.detail),
        }
