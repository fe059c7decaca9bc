"""safetensors files, read and written through the `safetensors` package (see `format`).

This module holds only what the registry needs up front: the options, so that importing the
registry does not import the safetensors library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from weightconv.formats.base import Options, option
from weightconv.formats.torch import parse_dense_inputs

LAYOUTS = ("torch", "tf")


@dataclass(frozen=True)
class SafetensorsReadOptions(Options):
    layout: Literal["torch", "tf"] | None = option(
        None,
        choices=LAYOUTS,
        help="the layout of the tensors when __metadata__ does not give it (format pt or tf): "
        "torch (conv OIHW, dense (out, in)) or tf (HWIO, (in, out)); given, it wins over "
        "the metadata",
    )
    dense_inputs: dict[str, tuple[int, ...]] | None = option(
        None,
        flag="--dense-input",
        metavar="NAME=C,H,W",
        parse=parse_dense_inputs,
        help="the input of a dense layer that follows a spatial one, as C,H,W (or N for a flat "
        "input), e.g. fc6=256,6,6; several joined by commas: fixes the C,H,W -> H,W,C row "
        "order of its canonical weights",
    )


@dataclass(frozen=True)
class SafetensorsWriteOptions(Options):
    safetensors_layout: Literal["torch", "tf"] | None = option(
        None,
        choices=LAYOUTS,
        help="torch (format pt: conv OIHW, dense (out, in), names conv1.weight) or tf "
        "(format tf: the canonical layout, names conv1/weights); default: the layout the "
        "weights are in (torch for Caffe and PyTorch sources, tf for the others)",
    )
    torch_dense_inputs: dict[str, tuple[int, ...]] | None = option(
        None,
        flag="--torch-dense-input",
        metavar="NAME=C,H,W",
        parse=parse_dense_inputs,
        help="the input of a dense layer that follows a spatial one, as C,H,W (or N for a "
        "flat input), e.g. fc6=256,6,6; several joined by commas: fixes the H,W,C -> C,H,W "
        "row order of its PyTorch weights",
    )
