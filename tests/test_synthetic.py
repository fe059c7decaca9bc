"""Generated Caffe models: checked by protobuf's own parsers, against BVLC's prototxts and
by OpenCV's Caffe importer; deterministic; the real nets' sizes without generating them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from weightconv._proto import caffe_pb2
from weightconv.testing import synthetic

from .conftest import corpus_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "fixtures" / "make_caffe.py"

ALEXNET_COUNTS = {
    "conv1": 34_944,
    "conv2": 307_456,
    "conv3": 885_120,
    "conv4": 663_936,
    "conv5": 442_624,
    "fc6": 37_752_832,
    "fc7": 16_781_312,
    "fc8": 4_097_000,
}

#: Small nets of every kind, as (name, build options).
SMALL = [
    ("lenet", {}),
    ("alexnet", {"width": 0.125}),
    ("caffenet", {"width": 0.125}),
    ("vgg16", {"width": 0.0625, "input_size": 32, "num_classes": 10}),
]
SMALL_IDS = [name for name, _ in SMALL]


def load_fixture_script():
    spec = importlib.util.spec_from_file_location("make_caffe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(data: bytes) -> caffe_pb2.NetParameter:
    return caffe_pb2.NetParameter.FromString(data)


def weighted_layers(message: caffe_pb2.NetParameter) -> list:
    return [layer for layer in list(message.layer) + list(message.layers) if len(layer.blobs)]


def without_blobs(layer):
    copy = type(layer)()
    copy.CopyFrom(layer)
    copy.ClearField("blobs")
    return copy


# --- sizes from the spec alone ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["alexnet", "caffenet"])
def test_alexnet_parameter_counts_are_the_published_ones(name):
    assert synthetic.net_spec(name).parameter_counts() == ALEXNET_COUNTS


def test_vgg16_sizes_without_generating_weights():
    tracemalloc.start()
    try:
        net = synthetic.build("vgg16")
        shapes = net.blob_shapes()
        count = net.parameter_count
        size = net.caffemodel_size()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000
    assert count == 138_357_544
    assert shapes["conv1_1"] == [(64, 3, 3, 3), (64,)]
    assert shapes["fc6"] == [(4096, 512 * 7 * 7), (4096,)]
    assert shapes["fc8"] == [(1000, 4096), (1000,)]
    assert len([n for n in shapes if n.startswith("conv")]) == 13
    assert 0 < size - 4 * count < 10_000  # ~553 MB: the floats plus a few KB of framing
    assert net.caffemodel_size(dtype="float64") - 8 * count < 10_000


def test_small_alexnet_shapes_keep_groups_and_the_6x6_pool5():
    shapes = synthetic.net_spec("alexnet", width=0.125, num_classes=7).blob_shapes()
    assert {name: blobs[0] for name, blobs in shapes.items()} == {
        "conv1": (12, 3, 11, 11),
        "conv2": (32, 6, 5, 5),
        "conv3": (48, 32, 3, 3),
        "conv4": (48, 24, 3, 3),
        "conv5": (32, 24, 3, 3),
        "fc6": (512, 32 * 6 * 6),
        "fc7": (512, 512),
        "fc8": (7, 512),
    }
    assert all(blobs[1] == (blobs[0][0],) for blobs in shapes.values())


@pytest.mark.parametrize("width", [0.01, 0.1, 0.3, 0.37, 0.5, 1.3])
def test_any_width_keeps_grouped_convolutions_divisible(width):
    spec = synthetic.net_spec("alexnet", width=width)
    layers = {layer.name: layer for layer in spec.layers}
    for name in ("conv2", "conv4", "conv5"):
        param = layers[name].message.convolution_param
        out = layers[name].blob_shapes[0][0]
        assert param.group == 2 and out % 2 == 0 and param.num_output == out
    inputs = {"conv2": "conv1", "conv4": "conv3", "conv5": "conv4"}
    for name, previous in inputs.items():
        assert layers[name].blob_shapes[0][1] * 2 == layers[previous].blob_shapes[0][0]


def test_input_size_changes_the_fc6_input_with_caffe_arithmetic():
    # 163: conv1 (163-11)//4+1 = 39, pool1 ceil(36/2)+1 = 19, conv2 19, pool2 9, pool5 4.
    shapes = synthetic.net_spec("alexnet", width=0.125, input_size=163).blob_shapes()
    assert shapes["fc6"][0] == (512, 32 * 4 * 4)
    # 28 for LeNet: conv 24, pool 12, conv 8, pool 4.
    assert synthetic.net_spec("lenet").blob_shapes()["ip1"][0] == (500, 50 * 4 * 4)
    assert synthetic.net_spec("vgg16", input_size=32).blob_shapes()["fc6"][0] == (4096, 512)


@pytest.mark.parametrize(
    "call",
    [
        lambda: synthetic.build("resnet50"),
        lambda: synthetic.build("alexnet", width=0),
        lambda: synthetic.build("alexnet", input_size=30),
        lambda: synthetic.build("lenet", input_size=8),
        lambda: synthetic.build("lenet", num_classes=0),
        lambda: synthetic.build("lenet", encoding="v0"),
        lambda: synthetic.build("lenet", dtype="float16"),
        lambda: synthetic.build("lenet", seed=-1),
        lambda: synthetic.build("lenet").caffemodel_bytes(encoding="v3"),
    ],
)
def test_bad_options_are_refused(call):
    with pytest.raises(ValueError):
        call()


# --- the weights --------------------------------------------------------------------------------


def test_weights_are_seeded_he_scaled_with_nonzero_biases():
    net = synthetic.build("alexnet", width=0.25, seed=5)
    weights = dict(net.weights)
    assert list(weights) == list(ALEXNET_COUNTS)
    again = synthetic.build("alexnet", width=0.25, seed=5).weights
    other = synthetic.build("alexnet", width=0.25, seed=6).weights
    for name, (w, b) in weights.items():
        assert w.dtype == b.dtype == np.float32 and w.flags.c_contiguous
        assert [a.shape for a in (w, b)] == net.blob_shapes()[name]
        np.testing.assert_array_equal(w, again[name][0])
        np.testing.assert_array_equal(b, again[name][1])
        assert not np.array_equal(w, other[name][0])
        assert np.all(b != 0) and len(np.unique(b)) == b.size
        he = np.sqrt(2.0 / np.prod(w.shape[1:]))
        assert w.std() == pytest.approx(he, rel=0.1)
    scaled = synthetic.build("alexnet", width=0.25, seed=5, scale=0.5).weights["fc7"]
    np.testing.assert_allclose(scaled[0], weights["fc7"][0] * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(scaled[1], weights["fc7"][1])


# --- the caffemodel, parsed by protobuf ---------------------------------------------------------


@pytest.mark.parametrize("encoding", synthetic.ENCODINGS)
@pytest.mark.parametrize(("name", "options"), SMALL, ids=SMALL_IDS)
def test_caffemodel_parses_with_protobuf_and_holds_the_weights(name, options, encoding):
    net = synthetic.build(name, seed=3, encoding=encoding, **options)
    data = net.caffemodel_bytes()
    assert len(data) == net.caffemodel_size()
    message = parse(data)
    assert message.name == net.name
    expected = dict(net.weights)
    layers = list(message.layer) if encoding == "v2" else list(message.layers)
    assert not (message.layers if encoding == "v2" else message.layer)
    if encoding == "v2":
        assert layers[0].type == "Input" and not message.input_dim
        assert list(layers[0].input_param.shape[0].dim) == list(net.input_shape)
        layers = layers[1:]
    else:
        assert list(message.input) == ["data"]
        assert list(message.input_dim) == list(net.input_shape)
    assert [without_blobs(layer) for layer in layers] == [
        spec.definition(encoding) for spec in net.layers
    ]
    assert [layer.name for layer in weighted_layers(message)] == list(expected)
    for layer in weighted_layers(message):
        for blob, array in zip(layer.blobs, expected[layer.name], strict=True):
            if encoding == "v1":
                assert not blob.HasField("shape")
                dims = (blob.num, blob.channels, blob.height, blob.width)
                assert dims == (1,) * (4 - array.ndim) + array.shape
            else:
                assert not blob.HasField("num") and tuple(blob.shape.dim) == array.shape
            assert not len(blob.double_data) and not len(blob.diff)
            np.testing.assert_array_equal(
                np.array(blob.data, np.float32).reshape(array.shape), array
            )


def test_v1_layers_have_enum_types_and_legacy_4d_blobs():
    message = parse(synthetic.build("lenet", encoding="v1").caffemodel_bytes())
    V1 = caffe_pb2.V1LayerParameter
    assert [(layer.name, layer.type) for layer in message.layers] == [
        ("conv1", V1.CONVOLUTION),
        ("pool1", V1.POOLING),
        ("conv2", V1.CONVOLUTION),
        ("pool2", V1.POOLING),
        ("ip1", V1.INNER_PRODUCT),
        ("relu1", V1.RELU),
        ("ip2", V1.INNER_PRODUCT),
        ("prob", V1.SOFTMAX),
    ]
    ip1 = message.layers[4]
    assert [(b.num, b.channels, b.height, b.width) for b in ip1.blobs] == [
        (1, 1, 500, 800),
        (1, 1, 1, 500),
    ]
    assert list(ip1.blobs_lr) == [1, 2] and list(ip1.weight_decay) == [1, 0]


@pytest.mark.parametrize("encoding", synthetic.ENCODINGS)
def test_double_data_encoding(encoding):
    net = synthetic.build("lenet", seed=2, encoding=encoding, dtype="float64")
    data = net.caffemodel_bytes()
    assert len(data) == net.caffemodel_size()
    assert data == synthetic.build("lenet", seed=2).caffemodel_bytes(
        encoding=encoding, dtype="float64"
    )
    weights = net.weights
    for layer in weighted_layers(parse(data)):
        for blob, array in zip(layer.blobs, weights[layer.name], strict=True):
            assert not len(blob.data) and len(blob.double_data) == array.size
            np.testing.assert_array_equal(np.array(blob.double_data), array.ravel())


def test_both_encodings_and_every_call_give_the_same_weights():
    net = synthetic.build("caffenet", width=0.125, seed=9)
    v2, v1 = (parse(net.caffemodel_bytes(encoding=e)) for e in synthetic.ENCODINGS)
    for a, b in zip(weighted_layers(v2), weighted_layers(v1), strict=True):
        for x, y in zip(a.blobs, b.blobs, strict=True):
            assert x.data == y.data
    assert net.caffemodel_bytes() == net.caffemodel_bytes()


def test_write_caffemodel_streams_in_bounded_chunks(tmp_path, monkeypatch):
    net = synthetic.build("vgg16", width=0.25, input_size=64)  # 3.5 M parameters, fc7 1 M
    largest = 4 * max(net.spec.parameter_counts().values())
    whole = net.caffemodel_bytes()
    weights = dict(net.weights)
    monkeypatch.setattr(synthetic, "_CHUNK_VALUES", 10_000)  # 40 kB at a time
    for name, blobs in net.weights.items():
        for chunked, one_go in zip(blobs, weights[name], strict=True):
            np.testing.assert_array_equal(chunked, one_go)
    path = tmp_path / "vgg.caffemodel"
    tracemalloc.start()
    try:
        size = net.write_caffemodel(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == path.stat().st_size == net.caffemodel_size() == len(whole)
    assert path.read_bytes() == whole
    assert peak < 2_000_000 < largest


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    net = synthetic.build("lenet")

    def fail(*_args):
        raise MemoryError("simulated")

    monkeypatch.setattr(synthetic.SyntheticNet, "_blob_chunks", fail)
    with pytest.raises(MemoryError):
        net.write_caffemodel(tmp_path / "x.caffemodel")
    assert not list(tmp_path.iterdir())


# --- the prototxt -------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", synthetic.ENCODINGS)
@pytest.mark.parametrize(("name", "options"), SMALL, ids=SMALL_IDS)
def test_prototxt_parses_with_protobuf_text_format(name, options, encoding):
    net = synthetic.build(name, encoding=encoding, **options)
    parsed = text_format.Parse(net.deploy_prototxt, caffe_pb2.NetParameter())
    assert parsed == net.spec.net_parameter(encoding)
    assert net.prototxt("v1" if encoding == "v2" else "v2") != net.deploy_prototxt
    if encoding == "v1":
        assert not parsed.layer and list(parsed.input_dim) == list(net.input_shape)
        assert net.deploy_prototxt.index("input_dim") < net.deploy_prototxt.index("layers {")
        assert all(isinstance(layer.type, int) and layer.type for layer in parsed.layers)
    else:
        assert not parsed.layers and parsed.layer[0].type == "Input"
        assert list(parsed.layer[0].input_param.shape[0].dim) == list(net.input_shape)


def _structure(net: caffe_pb2.NetParameter) -> list[tuple]:
    """What a deploy definition says about each layer, batch size and fillers aside."""
    rows = []
    for layer in list(net.layer) + list(net.layers):
        params = []
        for field in (
            "convolution_param",
            "pooling_param",
            "lrn_param",
            "inner_product_param",
            "dropout_param",
        ):
            if layer.HasField(field):
                param = type(getattr(layer, field))()
                param.CopyFrom(getattr(layer, field))
                for filler in ("weight_filler", "bias_filler"):
                    if filler in param.DESCRIPTOR.fields_by_name:
                        param.ClearField(filler)
                if field == "convolution_param" and list(param.stride) == [1]:
                    param.ClearField("stride")  # lenet.prototxt spells out the default
                params.append((field, param.SerializeToString(deterministic=True)))
        rows.append((layer.name, layer.type, list(layer.bottom), list(layer.top), params))
    return rows


@pytest.mark.corpus
@pytest.mark.parametrize(
    ("name", "relative", "encoding"),
    [
        ("alexnet", "prototxt/bvlc_alexnet.deploy.prototxt", "v2"),
        ("caffenet", "prototxt/bvlc_reference_caffenet.deploy.prototxt", "v2"),
        ("alexnet", "prototxt/v1_2014/bvlc_alexnet_deploy.prototxt", "v1"),
        ("lenet", "caffe/lenet/lenet.prototxt", "v2"),
    ],
)
def test_definition_matches_bvlc_deploy_prototxt(name, relative, encoding):
    real = text_format.Parse(corpus_file(relative).read_text(), caffe_pb2.NetParameter())
    ours = synthetic.net_spec(name).net_parameter(encoding)
    assert ours.name == real.name
    assert _structure(ours) == _structure(real)
    if encoding == "v1":
        assert list(ours.input_dim)[1:] == list(real.input_dim)[1:]
        assert [(list(a.blobs_lr), list(a.weight_decay)) for a in ours.layers] == [
            (list(b.blobs_lr), list(b.weight_decay)) for b in real.layers
        ]
    else:
        assert (
            list(ours.layer[0].input_param.shape[0].dim)[1:]
            == list(real.layer[0].input_param.shape[0].dim)[1:]
        )


# --- OpenCV's Caffe importer as the oracle ------------------------------------------------------


@pytest.mark.oracle
@pytest.mark.parametrize(("name", "options"), SMALL, ids=SMALL_IDS)
def test_opencv_runs_the_model_to_a_peaked_softmax(tmp_path, name, options):
    cv2 = pytest.importorskip("cv2")
    net = synthetic.build(name, seed=1, **options)
    x = np.random.default_rng(0).standard_normal(net.input_shape).astype(np.float32)
    outputs = []
    for encoding in synthetic.ENCODINGS:
        model, prototxt = tmp_path / f"{encoding}.caffemodel", tmp_path / f"{encoding}.prototxt"
        net.write_caffemodel(model, encoding=encoding)
        prototxt.write_text(net.prototxt(encoding))
        cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(model))
        first = next(iter(net.weights))
        weights, biases = net.weights[first]
        np.testing.assert_array_equal(cv_net.getParam(first, 0), weights)
        np.testing.assert_array_equal(cv_net.getParam(first, 1).ravel(), biases)
        cv_net.setInput(x)
        outputs.append(cv_net.forward().ravel())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    probabilities = outputs[0]
    classes = probabilities.size
    assert classes == net.blob_shapes()[list(net.weights)[-1]][1][0]
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert probabilities.max() > 2 / classes  # not flat...
    assert probabilities.max() > 20 * probabilities.min()
    assert probabilities.max() < 0.99  # ...and not saturated, for a unit-variance input


# --- the fixture script -------------------------------------------------------------------------


FIXTURES = {
    "lenet_v2.caffemodel",
    "lenet.prototxt",
    "lenet_v1.caffemodel",
    "lenet_v1.prototxt",
    "alexnet_small.caffemodel",
    "alexnet_small.prototxt",
    "caffenet_small.caffemodel",
    "caffenet_small.prototxt",
}


def test_fixture_script_is_deterministic(tmp_path):
    make_all = load_fixture_script().make_all
    first = {p.name: p.read_bytes() for p in make_all(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in make_all(tmp_path / "b")}
    assert set(first) == FIXTURES and first == second
    different = {p.name: p.read_bytes() for p in make_all(tmp_path / "c", seed=1)}
    assert different["lenet_v2.caffemodel"] != first["lenet_v2.caffemodel"]
    assert different["lenet.prototxt"] == first["lenet.prototxt"]
    v1, v2 = parse(first["lenet_v1.caffemodel"]), parse(first["lenet_v2.caffemodel"])
    assert len(v1.layers) == 8 and len(v2.layer) == 9
    assert [list(b.data) for layer in weighted_layers(v1) for b in layer.blobs] == [
        list(b.data) for layer in weighted_layers(v2) for b in layer.blobs
    ]
    assert "layers {" in first["lenet_v1.prototxt"].decode()
    alexnet = text_format.Parse(first["alexnet_small.prototxt"].decode(), caffe_pb2.NetParameter())
    assert [layer.name for layer in alexnet.layer][2:5] == ["relu1", "norm1", "pool1"]


def test_fixture_script_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "out"), "--seed", "4"],
        capture_output=True,
        text=True,
        check=True,
    )
    written = {Path(line).name for line in result.stdout.splitlines()}
    assert written == FIXTURES == {p.name for p in (tmp_path / "out").iterdir()}
    expected = synthetic.build("lenet", seed=4).caffemodel_bytes(encoding="v1")
    assert (tmp_path / "out" / "lenet_v1.caffemodel").read_bytes() == expected


def test_extra_fc_grows_vgg16_but_not_its_largest_tensor():
    base = synthetic.net_spec("vgg16")
    bigger = synthetic.net_spec("vgg16", extra_fc=3)
    added = bigger.parameter_count - base.parameter_count
    assert added == 3 * (4096 * 4096 + 4096)
    assert bigger.blob_shapes()["fc7_3"] == [(4096, 4096), (4096,)]
    assert max(bigger.parameter_counts().values()) == base.parameter_counts()["fc6"]
    with pytest.raises(ValueError, match="vgg16 only"):
        synthetic.net_spec("alexnet", extra_fc=1)
