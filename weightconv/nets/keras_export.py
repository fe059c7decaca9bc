"""A runnable Keras 3 model (``.keras``: config and weights) from weights and a deploy net.

`export_keras` reads the weights (any format: a .caffemodel, .npy, checkpoint, Keras HDF5,
PyTorch, safetensors, .npz), binds them to the graph of the deploy prototxt, builds the
graph as a Keras functional model (`weightconv.nets.keras_engine`) with the weights set and
saves it with ``model.save``. The output is written to a temporary file beside it and
renamed into place when complete; an existing file is replaced only with ``force``.

The model takes NHWC inputs (the prototxt's input blobs, in order) and gives the net's
output blobs (NHWC when 4-D), in the graph's order. It loads in any process with Keras 3
once our layers are registered::

    import keras
    import weightconv.nets.keras_layers  # registers weightconv>CaffePooling and the others
    model = keras.saving.load_model("model.keras")
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightconv._util.files import atomic_path, check_writable
from weightconv.errors import UsageError
from weightconv.model import WeightSet
from weightconv.nets.alexnet import read_weights
from weightconv.nets.graph import Graph
from weightconv.nets.graph_weights import bind
from weightconv.nets.keras_engine import keras_model, keras_shape

#: What a process must import before ``keras.saving.load_model`` reads our ``.keras``.
LOAD_IMPORT = "import weightconv.nets.keras_layers"


@dataclass
class KerasExport:
    """What `export_keras` wrote."""

    output: str
    source: str
    prototxt: str
    layers: int
    parameters: int
    bytes: int
    inputs: dict[str, list[int | None]]
    outputs: list[str]
    custom_layers: list[str]
    load_import: str = LOAD_IMPORT
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def is_keras_model(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names a Keras 3 ``.keras`` archive (by suffix and zip signature)."""
    target = Path(path)
    if target.suffix.lower() != ".keras" or not target.is_file():
        return False
    with open(target, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def export_keras(
    weights: WeightSet | str | os.PathLike[str],
    prototxt: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    force: bool = False,
    format: str | None = None,
    read_options: Mapping[str, Any] | None = None,
) -> KerasExport:
    """Write the deploy net of `prototxt` with `weights` as a Keras 3 ``.keras`` model.

    Args:
        weights: a weight file in any format (a .caffemodel is read with `prototxt`) or a
            WeightSet.
        output: the ``.keras`` path (Keras saves nothing else); its folder is created.
        force: replace an existing output.
        format, read_options: as `weightconv.load` takes them.

    Example::

        export_keras("model.caffemodel", "deploy.prototxt", "model.keras")
    """
    target = Path(output)
    if target.suffix != ".keras":
        raise UsageError(f"{target}: a Keras model is saved as NAME.keras; name the output so")
    if target.parent.exists():
        check_writable(target, force)  # before anything is read or built
    graph = Graph.from_prototxt(prototxt)
    if isinstance(weights, WeightSet):
        weight_set, source = weights, weights.source.path if weights.source else "weights"
    else:
        weight_set = read_weights(Path(weights), prototxt, format, read_options)
        source = str(weights)
    bound = bind(graph, weight_set)
    notes = [*graph.notes, *(n for n in bound.notes if "matched to the graph" in n)]
    model = keras_model(graph, bound, name=Path(prototxt).stem)
    del bound
    if not target.parent.exists():
        target.parent.mkdir(parents=True)
        notes.append(f"created the folder {target.parent}")
    with atomic_path(target, force, notes=notes) as temporary:
        staging = tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            staged = Path(staging) / "model.keras"
            model.save(staged)
            shutil.copyfile(staged, temporary)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    custom = sorted(
        {
            layer.__class__.__name__
            for layer in model.layers
            if type(layer).__module__.startswith("weightconv")
        }
    )
    return KerasExport(
        output=str(target),
        source=str(source),
        prototxt=str(prototxt),
        layers=len(model.layers),
        parameters=int(model.count_params()),
        bytes=target.stat().st_size,
        inputs={blob: [None, *keras_shape(shape)[1:]] for blob, shape in graph.inputs.items()},
        outputs=list(graph.outputs),
        custom_layers=custom,
        notes=notes,
    )


__all__ = ["LOAD_IMPORT", "KerasExport", "export_keras", "is_keras_model"]
