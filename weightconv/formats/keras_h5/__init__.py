"""Keras HDF5 weights: Keras 3 `.weights.h5`, Keras 2 `save_weights` and full-model `.h5`,
`.keras` archives (read). The write options are declared here, apart from h5py's users."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from weightconv.formats.base import Options, option

LAYOUTS = ("keras3", "keras2")


@dataclass(frozen=True)
class KerasWriteOptions(Options):
    keras_layout: Literal["keras3", "keras2"] | None = option(
        None,
        choices=LAYOUTS,
        help="keras3: the .weights.h5 Keras 3 writes; keras2: Keras 2's save_weights .h5. "
        "Default: keras3 for a name ending in .weights.h5, keras2 for another .h5 or .hdf5 "
        "(Keras 3 loads weights only from .weights.h5 names)",
    )
    model: str | os.PathLike[str] | dict[str, Any] | None = option(
        None,
        metavar="CONFIG",
        help="the target Keras model (config.json or .keras); default: one Conv2D/Dense per "
        "weighted layer, in order",
    )

    @property
    def output_suffix(self) -> str:
        return ".h5" if self.keras_layout == "keras2" else ".weights.h5"
