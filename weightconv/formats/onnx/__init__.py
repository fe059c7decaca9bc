"""ONNX models: their initializers read as weights, and weights written into a given model
(see `format`). This module holds only the options, so that the registry does not import the
onnx library."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from weightconv.formats.base import Options, option
from weightconv.formats.torch import dense_inputs_option, torch_dense_inputs_option

EXTERNAL_DATA = ("auto", "always", "never")


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
    external_data: Literal["auto", "always", "never"] = option(
        "auto",
        choices=EXTERNAL_DATA,
        help="where the initializers' data goes: auto: in the model while it stays under "
        "protobuf's 2 GB, else in a data file beside it; always: in the data file (the "
        "template's constants under 1 kB stay in the model); never: in the model, or refused",
    )
    external_data_file: str | None = option(
        None,
        metavar="NAME",
        help="the data file's name, beside the model (default: the model's name + .data, "
        "e.g. out.onnx.data); giving one writes the data there",
    )
    torch_dense_inputs: dict[str, tuple[int, ...]] | None = torch_dense_inputs_option()
