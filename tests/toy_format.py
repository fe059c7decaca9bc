"""A toy writable format, registered by `tests/test_registry.py` to show that a module and one
registry row are all a new format needs: a JSON file of tensors, with one write option."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weightconv._util.files import atomic_output
from weightconv._util.progress import Progress
from weightconv.formats import Format
from weightconv.formats.base import NoOptions, Options, WriteResult, option
from weightconv.model import CANONICAL, Layer, Provenance, WeightSet, split_tensor_name
from weightconv.model.canonical import canonical_layers

MAGIC = b'{"toy":'


@dataclass(frozen=True)
class ToyWriteOptions(Options):
    indent: int = option(0, metavar="N", help="indent the JSON by N spaces")


def sniff(head: bytes, path: Path) -> bool:
    return head.startswith(MAGIC)


def read(path: str | os.PathLike[str]) -> WeightSet:
    document = json.loads(Path(path).read_text())
    layers: dict[str, Layer] = {}
    for name, values in document["toy"].items():
        layer_name, role = split_tensor_name(name)
        layer = layers.setdefault(layer_name, Layer(layer_name, layout=CANONICAL))
        layer.tensors[role] = np.asarray(values, dtype=np.float32)
    return WeightSet(layers=list(layers.values()), source=Provenance(str(path), "toy"))


def write(
    weights: WeightSet,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: Progress | None = None,
    indent: int = 0,
) -> WriteResult:
    tensors = {
        layer.tensor_name(role): np.asarray(t).tolist()
        for layer in canonical_layers(weights)
        for role, t in layer.tensors.items()
    }
    text = json.dumps({"toy": tensors}, indent=indent or None).encode()
    with atomic_output(path, force) as handle:
        handle.write(text)
    return WriteResult(
        layers=len(weights.weighted_layers()),
        tensors=len(tensors),
        parameters=weights.parameter_count,
        bytes=len(text),
        files=[os.fspath(path)],
    )


ROW = Format("toy", "Toy JSON tensors", (".toy",), __name__, "toy", NoOptions, ToyWriteOptions)
