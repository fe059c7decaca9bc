"""The vocabulary of a mapping: name schemes, channel orders, the rules that must find something
to change, and user map files (regex renames, skips, per-tensor transforms)."""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightconv.errors import ShapeError, UsageError

NAME_SCHEMES = ("keep", "tf1", "slim", "keras", "caffe")
CHANNEL_ORDERS = ("rgb", "bgr")
TRANSFORM_KEYS = ("reshape", "transpose", "flip_axis")
#: The rules that must find something to change, and what it means when they find nothing.
RULES = {
    "input_channels": "there is no convolution whose input channels could be reordered",
    "fc_as_conv": "no fully-connected layer matches fc_pattern",
    "fc_as_dense": "no fc-as-conv kernel (4-D) matches fc_pattern",
    "split_groups": "no convolution records a group count above 1 (.npy files and "
    "checkpoints do not record groups)",
    "merge_groups": "there are no NAME_group0, NAME_group1, ... layers to merge",
    "map_file": "none of its renames, skips or tensor rules matches a tensor",
}


@dataclass
class TensorRule:
    """Per-tensor transforms from a map file, applied in the order listed here."""

    reshape: tuple[int, ...] | None = None
    transpose: tuple[int, ...] | None = None
    flip_axis: int | None = None

    def apply(self, array: np.ndarray, name: str) -> np.ndarray:
        if self.reshape is not None:
            if int(np.prod(self.reshape)) != array.size:
                raise ShapeError(
                    f"{name}: cannot reshape {tuple(array.shape)} to {self.reshape} (map file)"
                )
            array = array.reshape(self.reshape)
        if self.transpose is not None:
            if sorted(self.transpose) != list(range(array.ndim)):
                raise ShapeError(
                    f"{name}: transpose {self.transpose} does not fit shape "
                    f"{tuple(array.shape)} (map file)"
                )
            array = array.transpose(self.transpose)
        if self.flip_axis is not None:
            if not -array.ndim <= self.flip_axis < array.ndim:
                raise ShapeError(
                    f"{name}: flip_axis {self.flip_axis} does not fit shape "
                    f"{tuple(array.shape)} (map file)"
                )
            array = np.flip(array, axis=self.flip_axis)
        return array

    def shape(self, shape: tuple[int, ...], name: str) -> tuple[int, ...]:
        return self.apply(np.empty(shape, dtype=np.bool_), name).shape

    def describe(self) -> list[str]:
        steps = []
        if self.reshape is not None:
            steps.append(f"reshape to {list(self.reshape)} (map file)")
        if self.transpose is not None:
            steps.append(f"transpose axes {list(self.transpose)} (map file)")
        if self.flip_axis is not None:
            steps.append(f"flip axis {self.flip_axis} (map file)")
        return steps


@dataclass
class MapFile:
    """A user's mapping: regex renames of full tensor names, skips, per-tensor transforms.

    JSON::

        {"rename": [{"from": "^vgg_16/conv(\\\\d)/conv\\\\d_(\\\\d)/", "to": "conv\\\\1_\\\\2/"}],
         "skip": ["fc8"],
         "tensors": {"fc6/weights": {"reshape": [7, 7, 512, 4096]}}}

    TOML has the same keys (``[[rename]]`` tables, ``[tensors."fc6/weights"]``). Tensor
    keys are source tensor names (globs allowed), as ``weightconv inspect`` lists them.
    """

    renames: list[tuple[re.Pattern[str], str]] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    tensors: dict[str, TensorRule] = field(default_factory=dict)
    #: Where the rules were read from, for reports.
    source: str = ""

    @classmethod
    def load(cls, path: str | Path) -> MapFile:
        target = Path(path)
        try:
            text = target.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{target}: cannot read the map file: {exc.strerror}") from None
        try:
            if target.suffix.lower() == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise UsageError(
                f"{target}: not valid {target.suffix.lstrip('.') or 'JSON'}: {exc}"
            ) from None
        return cls.from_dict(data, str(target))

    @classmethod
    def from_dict(cls, data: Any, where: str = "map file") -> MapFile:
        if not isinstance(data, dict):
            raise UsageError(f"{where}: expected a table with rename/skip/tensors")
        unknown = set(data) - {"rename", "skip", "tensors"}
        if unknown:
            raise UsageError(
                f"{where}: unknown keys {sorted(unknown)} (known: rename, skip, tensors)"
            )
        renames = []
        for item in data.get("rename", []):
            if not isinstance(item, dict) or set(item) != {"from", "to"}:
                raise UsageError(f"{where}: each rename needs exactly 'from' and 'to'")
            try:
                renames.append((re.compile(item["from"]), str(item["to"])))
            except re.error as exc:
                raise UsageError(f"{where}: rename pattern {item['from']!r}: {exc}") from None
        skip = [str(s) for s in data.get("skip", [])]
        tensors = {}
        for name, spec in data.get("tensors", {}).items():
            if not isinstance(spec, dict) or set(spec) - set(TRANSFORM_KEYS):
                raise UsageError(
                    f"{where}: tensor {name!r}: transforms must be among "
                    f"{', '.join(TRANSFORM_KEYS)}"
                )
            tensors[name] = TensorRule(
                reshape=tuple(int(n) for n in spec["reshape"]) if "reshape" in spec else None,
                transpose=tuple(int(n) for n in spec["transpose"]) if "transpose" in spec else None,
                flip_axis=int(spec["flip_axis"]) if "flip_axis" in spec else None,
            )
        return cls(renames, skip, tensors, where)

    def rule_for(self, source_name: str) -> TensorRule | None:
        for pattern, rule in self.tensors.items():
            if fnmatch.fnmatchcase(source_name, pattern):
                return rule
        return None

    def rename(self, name: str) -> str:
        for pattern, replacement in self.renames:
            name = pattern.sub(replacement, name)
        return name
