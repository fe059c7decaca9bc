"""Keras HDF5 weights, the module of the registry's keras-h5 row.

Read without Keras (`weightconv.formats.keras_h5.read`): Keras 3 ``.weights.h5``, Keras 2
``save_weights`` and full-model ``.h5``, Keras 3's legacy ``.h5`` and ``.keras`` archives.
Written (`weightconv.formats.keras_h5.write`) as Keras 3 ``.weights.h5`` or Keras 2 ``.h5``
for a given or derived model (`weightconv.formats.keras_h5.config`); ``.keras`` archives are
read, not written.

Example::

    ws = read("model.keras")                 # layers conv1, fc6... from config.json
    write(ws, "out.weights.h5", model="model.keras")
    write(ws, "out.h5", keras_layout="keras2")
"""

from __future__ import annotations

from weightconv.formats.keras_h5.config import load_model_config, snake_case
from weightconv.formats.keras_h5.read import (
    OPTIMIZER_STATE,
    OUTSIDE_LAYOUT,
    list_datasets,
    read,
    sniff,
)
from weightconv.formats.keras_h5.write import KERAS2_VERSION, check_output, write

__all__ = [
    "KERAS2_VERSION",
    "OPTIMIZER_STATE",
    "OUTSIDE_LAYOUT",
    "check_output",
    "list_datasets",
    "load_model_config",
    "read",
    "snake_case",
    "sniff",
    "write",
]
