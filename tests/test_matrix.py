"""Every ordered pair of formats round-trips a generated AlexNet-shaped model bit-exactly.

The Caffe model is converted to each format, and each of those to every other format, with
the library's `convert` (what the CLI's short verbs run; tests/test_contract.py shows the two
write the same bytes); every result must hold exactly the tensors of the direct Caffe ->
canonical conversion (itself checked against OpenCV's Caffe importer in
test_opencv_oracle.py), same names, shapes, dtypes and bytes.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import weightconv
from weightconv.model.canonical import canonical_layers
from weightconv.testing.synthetic import build

#: format -> (short-verb spelling, output suffix)
FORMATS = {"npy": ("npy", ".npy"), "ckpt": ("ckpt", ".ckpt"), "h5": ("h5", ".weights.h5")}
FORMAT_NAMES = {"npy": "npy", "ckpt": "ckpt", "h5": "keras-h5"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The AlexNet-shaped model in every format, straight from the caffemodel."""
    folder = tmp_path_factory.mktemp("matrix")
    net = build("alexnet", width=0.125, num_classes=20, seed=8)
    net.write_caffemodel(folder / "alexnet.caffemodel")
    (folder / "deploy.prototxt").write_text(net.deploy_prototxt)
    reference = {
        layer.tensor_name(role): np.array(t)
        for layer in canonical_layers(
            weightconv.load(folder / "alexnet.caffemodel", prototxt=folder / "deploy.prototxt")
        )
        for role, t in layer.tensors.items()
    }
    paths = {}
    for fmt, (_verb, suffix) in FORMATS.items():
        paths[fmt] = folder / f"from_caffe{suffix}"
        report = weightconv.convert(
            folder / "alexnet.caffemodel", paths[fmt], prototxt=folder / "deploy.prototxt"
        )
        assert report.output.path == str(paths[fmt])
    return folder, reference, paths


def _tensors(path) -> dict[str, np.ndarray]:
    weights = weightconv.load(path)
    return {
        f"{layer.name}/{role}": np.asarray(t)
        for layer in canonical_layers(weights)
        for role, t in layer.tensors.items()
    }


def _assert_reference(path, reference) -> None:
    got = _tensors(path)
    assert list(got) == list(reference), path
    for name, expected in reference.items():
        array = got[name]
        assert array.shape == expected.shape and array.dtype == expected.dtype, name
        assert array.tobytes() == expected.tobytes(), name


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_caffe_to_each_format(converted, fmt):
    _, reference, paths = converted
    _assert_reference(paths[fmt], reference)


@pytest.mark.parametrize(("source", "target"), list(itertools.permutations(FORMATS, 2)))
def test_each_ordered_pair(converted, tmp_path, source, target):
    _, reference, paths = converted
    output = tmp_path / f"out{FORMATS[target][1]}"
    report = weightconv.convert(paths[source], output)
    assert (report.input.format, report.output.format) == (
        FORMAT_NAMES[source],
        FORMAT_NAMES[target],
    )
    _assert_reference(output, reference)
