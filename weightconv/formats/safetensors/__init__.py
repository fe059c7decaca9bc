"""safetensors files: read through the `safetensors` package, written a tensor at a time byte
for byte as it writes them (see `format` and `write`).

This module holds only what the registry needs up front: the options, so that importing the
registry does not import the safetensors library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from weightconv.formats.base import Options, option
from weightconv.formats.torch import dense_inputs_option, torch_dense_inputs_option

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
    dense_inputs: dict[str, tuple[int, ...]] | None = dense_inputs_option()


@dataclass(frozen=True)
class SafetensorsWriteOptions(Options):
    safetensors_layout: Literal["torch", "tf"] | None = option(
        None,
        choices=LAYOUTS,
        help="torch (format pt: conv OIHW, dense (out, in), names conv1.weight) or tf "
        "(format tf: the canonical layout, names conv1/weights); default: the layout the "
        "weights are in (torch for Caffe and PyTorch sources, tf for the others)",
    )
    torch_dense_inputs: dict[str, tuple[int, ...]] | None = torch_dense_inputs_option()
