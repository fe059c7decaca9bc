"""One test over tests/corpus.json: each real file reads as expected or fails as expected.

Adding a real-world case is adding an entry to the table.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import weightconv

from .conftest import corpus_file

TABLE = json.loads((Path(__file__).with_name("corpus.json")).read_text())["files"]


@pytest.mark.corpus
@pytest.mark.parametrize("entry", TABLE, ids=[entry["path"] for entry in TABLE])
def test_corpus_file(entry):
    path = corpus_file(entry["path"])
    if "sha256" in entry and path.is_file():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    if "error" in entry:
        with pytest.raises(weightconv.WeightconvError, match=entry["error"]):
            weightconv.load(path)
        return
    weights = weightconv.load(path, **entry.get("options", {}))
    assert weights.source.format == entry["format"]
    shapes = {layer.location(role): list(array.shape) for layer, role, array in weights.tensors()}
    if "tensors" in entry:
        assert len(shapes) == entry["tensors"]
    for name, shape in entry["shapes"].items():
        assert shapes.get(name) == shape, name
