"""PyTorch state dicts (``.pt``, ``.pth``, ``.bin``) read and written without torch: the zip
format of ``torch.save`` and the legacy pickle format before it. The options are declared here,
apart from the reader and writer, so that the registry lists them cheaply; the names and
layout rules shared with safetensors are in `names`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from weightconv.formats.base import Options, option


def parse_dense_inputs(text: str) -> dict[str, tuple[int, ...]]:
    """``fc6=256,6,6`` (or ``fc6=256x6x6``), several joined by commas (``fc6=256,6,6,fc1=784``)
    -> {"fc6": (256, 6, 6), "fc1": (784,)}: C,H,W of a dense layer's input, or N when flat."""
    found: dict[str, list[int]] = {}
    current: list[int] | None = None
    for part in text.replace(" ", "").split(","):
        name, equals, dims = part.rpartition("=")
        if equals:
            if not name or name in found:
                raise ValueError(f"expected NAME=C,H,W such as fc6=256,6,6, got {text!r}")
            current = found[name] = []
        if current is None:
            raise ValueError(f"expected NAME=C,H,W such as fc6=256,6,6, got {text!r}")
        try:
            current.extend(int(d) for d in dims.split("x"))
        except ValueError:
            raise ValueError(f"expected NAME=C,H,W such as fc6=256,6,6, got {text!r}") from None
    shapes = {name: tuple(dims) for name, dims in found.items()}
    if not shapes or any(len(s) not in (1, 3) or min(s) < 1 for s in shapes.values()):
        raise ValueError(f"expected NAME=C,H,W (or NAME=N) such as fc6=256,6,6, got {text!r}")
    return shapes


_SHAPES_HELP = (
    "the input of a dense layer that follows a spatial one, as C,H,W (or N for a flat "
    "input), e.g. fc6=256,6,6; several joined by commas"
)


def dense_inputs_option() -> Any:
    """The read option giving a dense layer's input shape (torch layout -> canonical)."""
    return option(
        None,
        flag="--dense-input",
        metavar="NAME=C,H,W",
        parse=parse_dense_inputs,
        help=_SHAPES_HELP + ": fixes the C,H,W -> H,W,C row order of its canonical weights",
    )


def torch_dense_inputs_option() -> Any:
    """The write option giving a dense layer's input shape (canonical -> torch layout)."""
    return option(
        None,
        flag="--torch-dense-input",
        metavar="NAME=C,H,W",
        parse=parse_dense_inputs,
        help=_SHAPES_HELP + ": fixes the H,W,C -> C,H,W row order of its PyTorch weights",
    )


@dataclass(frozen=True)
class TorchReadOptions(Options):
    dense_inputs: dict[str, tuple[int, ...]] | None = dense_inputs_option()  # noqa: RUF009


@dataclass(frozen=True)
class TorchWriteOptions(Options):
    torch_dense_inputs: dict[str, tuple[int, ...]] | None = torch_dense_inputs_option()  # noqa: RUF009
    model: str | os.PathLike[str] | None = option(
        None,
        metavar="TEMPLATE",
        help="a state dict (.pt) of the target model: our layers take its tensor names "
        "(features.0.weight, ...), paired in order by role and shape; a layer that does not "
        "fit is refused",
    )
