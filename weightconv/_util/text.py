"""Parsing the few value spellings options share (sizes, shapes); ValueError on bad text."""

from __future__ import annotations


def parse_size(text: str) -> int:
    """``500M`` -> 524288000; bytes, or with a K/M/G (KiB, MiB, GiB) suffix."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = cleaned[-1:] if cleaned[-1:] in ("K", "M", "G") else ""
    try:
        value = int(float(cleaned[: len(cleaned) - len(unit)]) * units[unit])
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"expected a size such as 500M or 2G, got {text!r}")
    return value


def parse_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"expected a positive whole number, got {text!r}")
    return value


def parse_shape(text: str) -> tuple[int, ...]:
    """``3,227,227`` (or ``3x227x227``) -> (3, 227, 227): C,H,W, or a single C."""
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) not in (1, 3) or any(d <= 0 for d in dims):
        raise ValueError(f"expected C,H,W such as 3,227,227, got {text!r}")
    return dims


def parse_fc_input(text: str) -> tuple[str, tuple[int, int, int]]:
    """``fc6=7,7,512`` -> ("fc6", (7, 7, 512))."""
    name, _, dims = text.partition("=")
    try:
        h, w, c = (int(part) for part in dims.replace("x", ",").split(","))
    except ValueError:
        h = w = c = 0
    if not name or min(h, w, c) < 1:
        raise ValueError(f"expected NAME=H,W,C such as fc6=7,7,512, got {text!r}")
    return name, (h, w, c)
