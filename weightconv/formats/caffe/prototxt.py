"""Caffe net definitions in text format (deploy `.prototxt`), read leniently: fields our
schema lacks (forks' additions such as `permute_param`) are skipped with a note naming
them, since none of them carries weights."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from weightconv._proto import caffe_pb2
from weightconv.errors import FormatError

_FIELD_NAME = re.compile(r"\b([A-Za-z_]\w*)\s*(?=[:{<])")
_STRING_OR_COMMENT = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|#[^\n]*")
_BRACKET = re.compile(r"[{}<>]")
#: Deeper than any Caffe net (a layer's parameters nest 3 or 4 levels); protobuf's text
#: parser recurses once per level and would hit Python's recursion limit near 1,000.
MAX_DEPTH = 100


def _known_field_names() -> set[str]:
    names: set[str] = set()

    def walk(descriptor: Any) -> None:
        for fld in descriptor.fields:
            names.add(fld.name)
        for nested in descriptor.nested_types:
            walk(nested)

    for message in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        walk(message)
    return names


def parse_prototxt(path: str | os.PathLike[str]) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """Parse a net definition in text format; fields our schema lacks are skipped with a note."""
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{source}: no such prototxt") from None
    except OSError as exc:
        raise FormatError(f"{source}: cannot be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(
            f"{source}: not a text prototxt (not UTF-8 text; the binary .caffemodel is "
            f"the file read, its net definition goes in prototxt=P)"
        ) from None
    _refuse_deep_nesting(text, source)
    net = caffe_pb2.NetParameter()
    notes: list[str] = []
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as strict_error:
        net = caffe_pb2.NetParameter()
        try:
            text_format.Parse(text, net, allow_unknown_field=True)
        except text_format.ParseError as exc:
            raise FormatError(f"{source}: not a Caffe net definition: {exc}") from None
        unknown = _unknown_fields(text)
        listed = ", ".join(f"{name} (line {line})" for name, line in unknown) or str(strict_error)
        notes.append(
            f"{source.name}: skipped fields the Caffe schema does not know "
            f"(not needed for weights): {listed}"
        )
    if not len(net.layer) and not len(net.layers):
        raise FormatError(f"{source}: defines no layers; is it a Caffe net definition?")
    return net, notes


def _unknown_fields(text: str) -> list[tuple[str, int]]:
    known = _known_field_names()
    stripped = _STRING_OR_COMMENT.sub(lambda m: " " * len(m.group(0)), text)
    seen: dict[str, int] = {}
    for match in _FIELD_NAME.finditer(stripped):
        name = match.group(1)
        if name not in known and name not in seen:
            seen[name] = stripped.count("\n", 0, match.start()) + 1
    return list(seen.items())


def _refuse_deep_nesting(text: str, source: Path) -> None:
    """Refuse messages nested more than `MAX_DEPTH` deep before the parser recurses into them."""
    stripped = _STRING_OR_COMMENT.sub(lambda m: " " * len(m.group(0)), text)
    depth = 0
    for match in _BRACKET.finditer(stripped):
        if match.group(0) in "{<":
            depth += 1
            if depth > MAX_DEPTH:
                line = stripped.count("\n", 0, match.start()) + 1
                raise FormatError(
                    f"{source}: messages nest more than {MAX_DEPTH} deep (line {line}); "
                    f"not a Caffe net definition"
                )
        else:
            depth = max(depth - 1, 0)
