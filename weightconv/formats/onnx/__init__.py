"""ONNX models: their initializers read as weights, and weights written into a given model
(see `format`). This module holds only the options, so that the registry does not import the
onnx library."""

from __future__ import annotations

import os
from dataclasses import dataclass

from weightconv.formats.base import Options, option
from weightconv.formats.torch import dense_inputs_option, torch_dense_inputs_option


@dataclass(frozen=True)
class OnnxReadOptions(Options):
    dense_inputs: dict[str, tuple[int, ...]] | None = dense_inputs_option()


@dataclass(frozen=True)
class OnnxWriteOptions(Options):
    model: str | os.PathLike[str] | None = option(
        None,
        metavar="TEMPLATE",
        help="the ONNX model to put the weights in (required for .onnx): its graph is kept, "
        "its initializers replaced, paired with our layers in order by role and shape",
    )
    torch_dense_inputs: dict[str, tuple[int, ...]] | None = torch_dense_inputs_option()
