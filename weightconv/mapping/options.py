"""The options of a mapping: plain data, checked for sense when made."""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from weightconv.errors import UsageError
from weightconv.mapping.rules import CHANNEL_ORDERS, NAME_SCHEMES, MapFile

_Self = TypeVar("_Self", bound="MappingOptions")


@dataclass
class MappingOptions:
    """The options of a mapping, checked for sense; `weightconv.mapping.Mapping` applies them."""

    names: str = "keep"
    net: str = ""
    scope: str = ""
    fc_as_conv: bool = False
    fc_as_dense: bool = False
    fc_pattern: str = "fc*"
    fc_inputs: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    input_channels: str | None = None
    source_channels: str | None = None
    split_groups: bool = False
    merge_groups: bool = False
    map_file: MapFile | None = None

    def __post_init__(self) -> None:
        if self.names not in NAME_SCHEMES:
            raise UsageError(
                f"unknown name scheme {self.names!r}; known: {', '.join(NAME_SCHEMES)}"
            )
        for order in (self.input_channels, self.source_channels):
            if order is not None and order not in CHANNEL_ORDERS:
                raise UsageError(f"channel order must be rgb or bgr, got {order!r}")
        if self.fc_as_conv and self.fc_as_dense:
            raise UsageError("fc_as_conv=True and fc_as_dense=True contradict each other")
        if self.split_groups and self.merge_groups:
            raise UsageError("split_groups=True and merge_groups=True contradict each other")
        if self.names == "slim" and not self.net:
            raise UsageError("names=slim needs net= (the net's scope: vgg_16, alexnet_v2, ...)")
        if self.scope and not self.scope.endswith("/"):
            self.scope += "/"

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def changed(self) -> dict[str, Any]:
        """The options that differ from the defaults, by name (a map file by its path)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if value != default:
                out[f.name] = value.source if isinstance(value, MapFile) else value
        return out

    def replace(self: _Self, **changes: Any) -> _Self:
        return dataclasses.replace(self, **changes)

    def is_identity(self) -> bool:
        return (
            self.names == "keep"
            and not self.scope
            and not self.fc_as_conv
            and not self.fc_as_dense
            and self.input_channels is None
            and not self.split_groups
            and not self.merge_groups
            and self.map_file is None
        )
