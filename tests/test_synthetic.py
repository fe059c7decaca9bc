"""Generated Caffe models: well-formed by protobuf's own parser, deterministic, real sizes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from weightconv import synthetic
from weightconv._proto import caffe_pb2

REPO = Path(__file__).resolve().parents[1]


def load_fixture_script():
    spec = importlib.util.spec_from_file_location("make_caffe", REPO / "fixtures" / "make_caffe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_alexnet_parameter_counts_are_the_published_ones():
    net = synthetic.build("alexnet")
    counts = {name: sum(int(np.prod(s)) for s in shapes)
              for name, shapes in net.blob_shapes().items()}
    assert counts == {"conv1": 34_944, "conv2": 307_456, "conv3": 885_120, "conv4": 663_936,
                      "conv5": 442_624, "fc6": 37_752_832, "fc7": 16_781_312, "fc8": 4_097_000}


def test_vgg16_has_138m_parameters():
    assert synthetic.build("vgg16").parameter_count == 138_357_544


@pytest.mark.parametrize("encoding", ["v2", "v1"])
def test_caffemodel_parses_with_protobuf_and_holds_the_weights(encoding):
    net = synthetic.build("lenet", seed=3)
    message = caffe_pb2.NetParameter.FromString(net.caffemodel_bytes(encoding=encoding))
    layers = list(message.layer) if encoding == "v2" else list(message.layers)
    expected = dict(net.weights())
    weighted = [layer for layer in layers if len(layer.blobs)]
    assert [layer.name for layer in weighted] == list(expected)
    for layer in weighted:
        for blob, array in zip(layer.blobs, expected[layer.name], strict=True):
            if encoding == "v1":
                assert blob.HasField("num") and not blob.HasField("shape")
                dims = (blob.num, blob.channels, blob.height, blob.width)
                assert dims == (1,) * (4 - array.ndim) + array.shape
            else:
                assert tuple(blob.shape.dim) == array.shape
            np.testing.assert_array_equal(np.array(blob.data, np.float32).reshape(array.shape),
                                          array)
    if encoding == "v1":
        assert layers[0].type == caffe_pb2.V1LayerParameter.CONVOLUTION


def test_double_data_encoding():
    net = synthetic.build("lenet")
    message = caffe_pb2.NetParameter.FromString(net.caffemodel_bytes(dtype="float64"))
    conv1 = next(layer for layer in message.layer if layer.name == "conv1")
    assert len(conv1.blobs[0].double_data) == 500 and not len(conv1.blobs[0].data)


def test_prototxts_parse_with_protobuf_text_format():
    net = synthetic.build("alexnet", width=0.125)
    for text in (net.deploy_prototxt, net.deploy_prototxt_v1()):
        parsed = text_format.Parse(text, caffe_pb2.NetParameter())
        assert len(parsed.layer) + len(parsed.layers) > 20


def test_fixture_script_is_deterministic(tmp_path):
    make_all = load_fixture_script().make_all
    first = {p.name: p.read_bytes() for p in make_all(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in make_all(tmp_path / "b")}
    assert first == second
    assert {"lenet_v1.caffemodel", "alexnet_small.caffemodel"} <= set(first)
    different = {p.name: p.read_bytes() for p in make_all(tmp_path / "c", seed=1)}
    assert different["lenet_v2.caffemodel"] != first["lenet_v2.caffemodel"]
