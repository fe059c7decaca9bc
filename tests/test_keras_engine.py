"""The Keras engine against OpenCV: every layer type, whole nets, real GoogLeNet and MTCNN.

Each net's generated .caffemodel is run by OpenCV's Caffe importer here; its weightconv .npy
conversion is run by `weightconv.nets.keras_engine` in a child process (Keras never enters
the test process). Every compared blob must agree within 1e-4 of its scale. Then the layers
Keras cannot compute exactly are refused by name, and the names the engine gives Keras layers
are safe and unique (no Keras needed for either).
"""

from __future__ import annotations

import pytest

from weightconv.nets.graph import Graph
from weightconv.nets.keras_engine import keras_shape, layer_names

from .conftest import corpus_file
from .graph_oracle import prototxt
from .keras_graph_cases import (
    GOOGLENET,
    MTCNN,
    MUTATED,
    OVERHANG,
    REFUSED,
    RELATIVE,
    engine_blobs,
    keras_results,
    relative_difference,
)
from .test_graph_engine import NETS, conv, layer
from .test_graph_nets import GRAPHS

pytest.importorskip("cv2", reason="OpenCV is the reference; pip install opencv-python-headless")
pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return keras_results(tmp_path_factory)


def _assert_agrees(results, name):
    net = results.nets[name]
    ours = engine_blobs(results, name)
    for blob in net.blobs:
        theirs = net.expected[blob]
        assert ours[blob].size == theirs.size, (blob, ours[blob].shape, theirs.shape)
        diff = relative_difference(ours[blob], theirs)
        assert diff < RELATIVE, f"{name}: {blob} differs by {diff:.3g} of its scale"


@pytest.mark.parametrize("name", list(NETS))
def test_each_layer_type_in_keras_agrees_with_opencv(results, name):
    _assert_agrees(results, name)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_whole_graphs_in_keras_agree_with_opencv(results, name):
    _assert_agrees(results, name)


@pytest.mark.parametrize("name", list(OVERHANG))
def test_ave_pooling_divides_as_caffe_where_a_window_overhangs(results, name):
    _assert_agrees(results, name)


@pytest.mark.parametrize("name", list(MUTATED))
def test_a_mistake_in_the_engine_is_caught_by_the_comparison(results, name):
    """The same comparison fails by far when the engine divides AVE windows by their whole
    size, or flattens a dense layer's input C, H, W: the tests can see those mistakes."""
    net = results.nets[name]
    ours = engine_blobs(results, name, MUTATED[name])
    worst = max(relative_difference(ours[blob], net.expected[blob]) for blob in net.blobs)
    assert worst > 100 * RELATIVE, f"{name} with {MUTATED[name]}: only {worst:.3g} off"


def test_bvlc_googlenet_in_keras_agrees_with_opencv(results):
    corpus_file(GOOGLENET)
    _assert_agrees(results, "googlenet")


def test_mtcnn_det1_in_keras_agrees_with_opencv(results):
    for part in MTCNN:
        corpus_file(part)
    _assert_agrees(results, "mtcnn-det1")
    assert set(results.nets["mtcnn-det1"].blobs) == set(results.nets["mtcnn-det1"].graph.outputs)


def test_the_engine_runs_stay_fast(results):
    """The whole Keras side (two child processes) in well under a minute and a half."""
    spent = results.seconds["engine child"] + results.seconds["load child"]
    assert spent < 75, results.seconds


def _graph(tmp_path, body, shape=(1, 4, 9, 11)):
    path = tmp_path / "deploy.prototxt"
    path.write_text(prototxt(body, {"data": shape}))
    return Graph.from_prototxt(path)


@pytest.mark.parametrize("name", list(REFUSED))
def test_layers_keras_cannot_compute_exactly_are_refused_by_name(results, name):
    assert REFUSED[name][1] in results.engine[name].get("error", ""), results.engine[name]


def test_layer_names_are_safe_and_unique(tmp_path):
    body = (
        conv("a/b", "data", "num_output: 2 kernel_size: 1")
        + conv("a_b", "data", "num_output: 2 kernel_size: 1")
        + layer("s", "Slice", ["a/b"], ["x", "y"], "slice_param { axis: 1 }")
    )
    names = layer_names(_graph(tmp_path, body))
    assert names[("", 0)] == "data"
    assert names[("a/b", 0)] == "a_b" and names[("a_b", 0)] == "a_b_1"
    assert names[("s", 0)] == "s__0" and names[("s", 1)] == "s__1"
    assert len(set(names.values())) == len(names)
    assert keras_shape((2, 3, 4, 5)) == (2, 4, 5, 3) and keras_shape((2, 7)) == (2, 7)
