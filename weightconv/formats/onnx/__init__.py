"""ONNX models: their initializers read as weights, and weights written into a given model
(see `format`). This module holds only the options, so that the registry does not import the
onnx library."""

from __future__ import annotations

import os
from dataclasses import dataclass

from weightconv.formats.base import Options, option
from weightconv.formats.torch import parse_dense_inputs


@dataclass(frozen=True)
class OnnxReadOptions(Options):
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
class OnnxWriteOptions(Options):
    model: str | os.PathLike[str] | None = option(
        None,
        metavar="TEMPLATE",
        help="the ONNX model to put the weights in (required for .onnx): its graph is kept, "
        "its initializers replaced, paired with our layers in order by role and shape",
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
