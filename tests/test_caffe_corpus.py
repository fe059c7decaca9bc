"""Real .caffemodel files made by other people, checked against an independent decoder.

The oracle is the generated protobuf module (`caffe_pb2`) parsing the whole file the
ordinary way, blob by blob, with Caffe's own rule for legacy 4-D shapes; the
reader under test walks the wire format itself and shares none of that code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import weightconv
from weightconv._proto import caffe_pb2
from weightconv.model import Kind
from weightconv.model.canonical import canonical_layers

from .conftest import corpus_file

pytestmark = pytest.mark.corpus


def blobs_by_protobuf(path: Path) -> dict[str, list[np.ndarray]]:
    """Every layer's blobs, decoded by protobuf, shaped as Caffe shapes them."""
    net = caffe_pb2.NetParameter()
    net.ParseFromString(path.read_bytes())
    layers = list(net.layer) or list(net.layers)
    out = {}
    for layer in layers:
        blobs = []
        for blob in layer.blobs:
            if (
                blob.HasField("num")
                or blob.HasField("channels")
                or blob.HasField("height")
                or blob.HasField("width")
            ):
                shape = (blob.num, blob.channels, blob.height, blob.width)
            else:
                shape = tuple(blob.shape.dim)
            values = blob.double_data if len(blob.double_data) else blob.data
            blobs.append(np.array(values, dtype=np.float32).reshape(shape))
        if blobs:
            out[layer.name] = blobs
    return out


def caffe_dense_to_tf(weights: np.ndarray, chw: tuple[int, ...] | None) -> np.ndarray:
    """The mapping stated in the issue, written out independently of weightconv.layout."""
    out_dim = weights.shape[0]
    if chw is None or len(chw) == 1:
        return weights.T
    c, h, w = chw
    return weights.reshape(out_dim, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out_dim)


def squeeze_legacy(blob: np.ndarray, ndim: int) -> np.ndarray:
    return blob.reshape(blob.shape[-ndim:]) if blob.ndim > ndim else blob


@pytest.mark.parametrize(
    ("model", "prototxt", "fc_inputs"),
    [
        (
            "caffe/lenet/lenet_iter_10000.caffemodel",
            "caffe/lenet/lenet.prototxt",
            {"ip1": (50, 4, 4), "ip2": (500,)},
        ),
        (
            "caffe/cifar10_v1/cifar10_quick_iter_5000.caffemodel",
            "caffe/cifar10_v1/cifar10_quick.prototxt",
            {"ip1": (64, 4, 4), "ip2": (64,)},
        ),
        (
            "caffe/cifar10_v1/cifar10_full_iter_60000.caffemodel",
            "caffe/cifar10_v1/cifar10_full.prototxt",
            {"ip1": (64, 4, 4)},
        ),
        (
            "caffe/cifar10_v2/cifar10_quick_iter_4000.caffemodel",
            "caffe/cifar10_v2/cifar10_quick.prototxt",
            {"ip1": (64, 4, 4), "ip2": (64,)},
        ),
    ],
)
def test_every_tensor_equals_the_protobuf_blob_transposed(model, prototxt, fc_inputs):
    model_path, prototxt_path = corpus_file(model), corpus_file(prototxt)
    expected = blobs_by_protobuf(model_path)
    ws = weightconv.load(model_path, prototxt=prototxt_path)
    canonical = {layer.name: layer for layer in canonical_layers(ws)}
    assert set(canonical) == set(expected)
    for name, blobs in expected.items():
        layer = canonical[name]
        weights, biases = blobs
        if weights.ndim == 4 and layer.kind == Kind.CONV:
            np.testing.assert_array_equal(layer.tensors["weights"], weights.transpose(2, 3, 1, 0))
        else:
            dense = squeeze_legacy(weights, 2)
            np.testing.assert_array_equal(
                layer.tensors["weights"], caffe_dense_to_tf(dense, fc_inputs[name])
            )
        np.testing.assert_array_equal(layer.tensors["biases"], biases.reshape(-1))


def test_lenet_caffe2npy_output_loads_with_the_users_idiom(tmp_path):
    model = corpus_file("caffe/lenet/lenet_iter_10000.caffemodel")
    prototxt = corpus_file("caffe/lenet/lenet.prototxt")
    out = tmp_path / "lenet.npy"
    weightconv.convert(model, out, prototxt=prototxt)
    d = np.load(out, encoding="latin1", allow_pickle=True).item()
    expected = blobs_by_protobuf(model)
    assert list(d) == ["conv1", "conv2", "ip1", "ip2"]
    w, b = d["conv1"]
    np.testing.assert_array_equal(w, expected["conv1"][0].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(b, expected["conv1"][1])
    w, _ = d["ip1"]
    np.testing.assert_array_equal(w, caffe_dense_to_tf(expected["ip1"][0], (50, 4, 4)))


def test_mtcnn_det1_equals_the_caffe_tensorflow_npy_made_by_another_team(tmp_path):
    model = corpus_file("caffe/mtcnn/det1.caffemodel")
    prototxt = corpus_file("caffe/mtcnn/det1.prototxt")
    reference = np.load(
        corpus_file("npy/mtcnn/det1.npy"), encoding="latin1", allow_pickle=True
    ).item()
    out = tmp_path / "det1.npy"
    weightconv.convert(model, out, prototxt=prototxt, flavour="dict")
    ours = np.load(out, allow_pickle=True).item()
    assert set(ours) == set(reference)
    for layer, roles in reference.items():
        assert set(ours[layer]) == set(roles), layer
        for role, array in roles.items():
            np.testing.assert_array_equal(ours[layer][role], array, err_msg=f"{layer}/{role}")


def test_caffe_hdf5_snapshot_reads_like_a_caffemodel():
    import h5py

    snapshot = corpus_file("caffe/cifar10_v2/cifar10_quick_iter_5000.caffemodel.h5")
    prototxt = corpus_file("caffe/cifar10_v2/cifar10_quick.prototxt")
    ws = weightconv.load(snapshot, prototxt=prototxt)
    assert ws.source.format == "caffe-h5"
    with h5py.File(snapshot, "r") as handle:
        for layer in ws.weighted_layers():
            np.testing.assert_array_equal(
                layer.tensors["weights"], handle[f"data/{layer.name}/0"][()]
            )
            np.testing.assert_array_equal(
                layer.tensors["biases"], handle[f"data/{layer.name}/1"][()]
            )
        canonical = {layer.name: layer for layer in canonical_layers(ws)}
        ip1 = handle["data/ip1/0"][()]
        np.testing.assert_array_equal(
            canonical["ip1"].tensors["weights"], caffe_dense_to_tf(ip1, (64, 4, 4))
        )
    assert [layer.name for layer in ws.weighted_layers()] == [
        "conv1",
        "conv2",
        "conv3",
        "ip1",
        "ip2",
    ]


def test_fork_prototxt_with_unknown_layer_params_is_read_with_a_note():
    model = corpus_file("caffe/ultralight/slim-320.caffemodel")
    prototxt = corpus_file("caffe/ultralight/slim-320.prototxt")
    ws = weightconv.load(model, prototxt=prototxt)
    assert any("permute_param" in note for note in ws.notes)
    expected = blobs_by_protobuf(model)
    grouped = [layer for layer in ws.weighted_layers() if layer.params.get("group", 1) > 1]
    assert len(grouped) >= 10
    for layer in ws.weighted_layers():
        np.testing.assert_array_equal(layer.tensors["weights"], expected[layer.name][0])
    for layer in canonical_layers(ws):
        assert layer.tensors["weights"].ndim == 4


def test_extensionless_caffemodel_is_recognised_by_content(tmp_path):
    model = corpus_file("caffe/lenet/lenet_iter_10000.caffemodel")
    bare = tmp_path / "weights"
    bare.write_bytes(model.read_bytes())
    assert weightconv.formats.detect(bare).name == "caffemodel"
    ws = weightconv.load(bare)
    assert [layer.name for layer in ws.weighted_layers()] == ["conv1", "conv2", "ip1", "ip2"]


def test_v1_caffemodel_without_prototxt_asks_for_the_fc_input_size():
    model = corpus_file("caffe/cifar10_v1/cifar10_quick_iter_5000.caffemodel")
    ws = weightconv.load(model)
    assert ws.source.detail["encoding"] == "V1"
    with pytest.raises(weightconv.ShapeError, match=r"ip1.*input_shape="):
        list(canonical_layers(ws))
    ws = weightconv.load(model, input_shape=(3, 32, 32))
    canonical = {layer.name: layer for layer in canonical_layers(ws)}
    assert canonical["ip1"].tensors["weights"].shape == (1024, 64)
