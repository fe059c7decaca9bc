"""The wire-level .caffemodel reader on hand-made messages: every encoding protobuf allows.

Expected values come from the messages built with the generated protobuf module,
never from the reader under test.
"""

from __future__ import annotations

import numpy as np
import pytest

import weightconv
from weightconv._proto import caffe_pb2
from weightconv.codecs import protowire
from weightconv.formats.caffe import reader as caffe
from weightconv.model.canonical import canonical_layers


def conv_layer(
    name: str = "conv1", out: int = 4, inp: int = 3, k: int = 3
) -> caffe_pb2.LayerParameter:
    layer = caffe_pb2.LayerParameter(name=name, type="Convolution", bottom=["data"], top=[name])
    layer.convolution_param.num_output = out
    layer.convolution_param.kernel_size.append(k)
    return layer


def input_layer(shape: tuple[int, ...]) -> caffe_pb2.LayerParameter:
    layer = caffe_pb2.LayerParameter(name="data", type="Input", top=["data"])
    layer.input_param.shape.add().dim.extend(shape)
    return layer


def write_net(tmp_path, *layers, name: str = "net") -> object:
    net = caffe_pb2.NetParameter(name=name)
    for layer in layers:
        net.layer.add().CopyFrom(layer)
    path = tmp_path / "model.caffemodel"
    path.write_bytes(net.SerializeToString())
    return path


def test_shape_field_and_float_data(tmp_path):
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    layer = conv_layer()
    blob = layer.blobs.add()
    blob.shape.dim.extend(weights.shape)
    blob.data.extend(weights.ravel().tolist())
    bias = layer.blobs.add()
    bias.shape.dim.append(4)
    bias.data.extend([1.5, -2.0, 0.25, 8.0])
    ws = weightconv.load(write_net(tmp_path, input_layer((1, 3, 8, 8)), layer))
    np.testing.assert_array_equal(ws["conv1"].tensors["weights"], weights)
    np.testing.assert_array_equal(ws["conv1"].tensors["biases"], [1.5, -2.0, 0.25, 8.0])


def test_double_data_wins_over_data_and_keeps_float64(tmp_path):
    layer = conv_layer(out=1, inp=1, k=1)
    blob = layer.blobs.add()
    blob.shape.dim.extend([1, 1, 1, 1])
    blob.double_data.append(0.1)
    ws = weightconv.load(write_net(tmp_path, input_layer((1, 1, 4, 4)), layer))
    weights = ws["conv1"].tensors["weights"]
    assert weights.dtype == np.float64 and weights.ravel()[0] == 0.1


def test_legacy_4d_shape_is_used_when_present(tmp_path):
    ip = caffe_pb2.LayerParameter(name="ip", type="InnerProduct", bottom=["data"], top=["ip"])
    ip.inner_product_param.num_output = 2
    blob = ip.blobs.add(num=1, channels=1, height=2, width=3)
    blob.data.extend([1, 2, 3, 4, 5, 6])
    bias = ip.blobs.add(num=1, channels=1, height=1, width=2)
    bias.data.extend([7, 8])
    net = caffe_pb2.NetParameter(input=["data"], input_dim=[1, 3, 1, 1])
    net.layer.add().CopyFrom(ip)
    path = tmp_path / "legacy.caffemodel"
    path.write_bytes(net.SerializeToString())
    ws = weightconv.load(path)
    np.testing.assert_array_equal(ws["ip"].tensors["weights"], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(ws["ip"].tensors["biases"], [7, 8])
    (canonical,) = canonical_layers(ws)
    np.testing.assert_array_equal(canonical.tensors["weights"], [[1, 4], [2, 5], [3, 6]])


def _raw_blob(dims: list[int], payload: bytes) -> bytes:
    shape = (
        protowire.encode_length_delimited_header(
            1, len(packed := b"".join(protowire.encode_varint(d) for d in dims))
        )
        + packed
    )
    return protowire.encode_length_delimited_header(7, len(shape)) + shape + payload


def _raw_layer(name: str, blobs: list[bytes]) -> bytes:
    head = conv_layer(name, out=1, inp=1, k=2).SerializeToString()
    body = head + b"".join(protowire.encode_length_delimited_header(7, len(b)) + b for b in blobs)
    return protowire.encode_length_delimited_header(100, len(body)) + body


def test_unpacked_floats_and_split_packed_chunks_are_accepted(tmp_path):
    values = np.arange(4, dtype="<f4")
    unpacked = b"".join(protowire.encode_key(5, protowire.FIXED32) + v.tobytes() for v in values)
    split = b"".join(
        protowire.encode_length_delimited_header(5, 8) + values[i : i + 2].tobytes() for i in (0, 2)
    )
    path = tmp_path / "odd.caffemodel"
    path.write_bytes(
        _raw_layer("a", [_raw_blob([1, 1, 2, 2], unpacked)])
        + _raw_layer("b", [_raw_blob([1, 1, 2, 2], split)])
    )
    ws = weightconv.load(path, input_shape=(1, 4, 4))
    np.testing.assert_array_equal(ws["a"].tensors["weights"].ravel(), values)
    np.testing.assert_array_equal(ws["b"].tensors["weights"].ravel(), values)


def test_blob_count_mismatch_names_the_layer(tmp_path):
    payload = protowire.encode_length_delimited_header(5, 12) + np.zeros(3, "<f4").tobytes()
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(_raw_layer("conv9", [_raw_blob([1, 1, 2, 2], payload)]))
    with pytest.raises(weightconv.FormatError, match=r"conv9.*1x1x2x2 needs 4 values.*holds 3"):
        weightconv.load(path)


def test_truncated_file_is_a_format_error(tmp_path):
    layer = conv_layer()
    blob = layer.blobs.add()
    blob.shape.dim.extend([4, 3, 3, 3])
    blob.data.extend([0.5] * 108)
    path = write_net(tmp_path, input_layer((1, 3, 8, 8)), layer)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(weightconv.FormatError, match="truncated"):
        weightconv.load(path, format="caffemodel")


def test_data_is_a_read_only_view_of_the_file_not_a_copy(tmp_path):
    layer = conv_layer()
    blob = layer.blobs.add()
    blob.shape.dim.extend([4, 3, 3, 3])
    blob.data.extend([0.5] * 108)
    ws = weightconv.load(write_net(tmp_path, input_layer((1, 3, 8, 8)), layer))
    weights = ws["conv1"].tensors["weights"]
    assert not weights.flags.writeable and not weights.flags.owndata


def test_files_over_2_gib_are_read_without_protobuf_limits(tmp_path):
    """A sparse 2.1 GiB caffemodel: one layer whose blob holds 560M zero floats."""
    count = 560 * 1024 * 1024
    head = conv_layer("huge", out=count // 4, inp=1, k=2).SerializeToString()
    shape = caffe_pb2.BlobShape(dim=[count // 4, 1, 2, 2]).SerializeToString()
    blob_head = (
        protowire.encode_length_delimited_header(7, len(shape))
        + shape
        + protowire.encode_length_delimited_header(5, count * 4)
    )
    blob_length = len(blob_head) + count * 4
    layer_head = head + protowire.encode_length_delimited_header(7, blob_length) + blob_head
    layer_length = len(layer_head) + count * 4
    path = tmp_path / "huge.caffemodel"
    with open(path, "wb") as handle:
        handle.write(protowire.encode_length_delimited_header(100, layer_length) + layer_head)
        handle.truncate(handle.tell() + count * 4)
    assert path.stat().st_size > 2 * 1024**3
    ws = weightconv.load(path, input_shape=(1, 2, 2))
    assert ws["huge"].tensors["weights"].shape == (count // 4, 1, 2, 2)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a caffemodel at all, just text\n",
        b"\x00\x01\x02\x03" * 100,
        b'name: "prototxt pretending"\nlayer { name: "a" }\n',
    ],
)
def test_non_protobuf_input_is_refused_clearly(tmp_path, content):
    path = tmp_path / "x.caffemodel"
    path.write_bytes(content)
    with pytest.raises(weightconv.WeightconvError):
        weightconv.load(path)


def test_sniff_accepts_nets_with_and_without_a_name():
    named = caffe_pb2.NetParameter(name="LeNet")
    named.layer.add().CopyFrom(conv_layer())
    unnamed = caffe_pb2.NetParameter()
    unnamed.layer.add().CopyFrom(conv_layer())
    v1 = caffe_pb2.NetParameter()
    v1.layers.add(name="conv1", type=caffe_pb2.V1LayerParameter.CONVOLUTION)
    for net in (named, unnamed, v1):
        assert caffe.sniff(net.SerializeToString(), None)
    assert not caffe.sniff(b"\x93NUMPY\x01\x00", None)
    assert not caffe.sniff(b"\x89HDF\r\n\x1a\n", None)
    assert not caffe.sniff(b'layer {\n  name: "conv1"\n}\n', None)


def test_v0_caffemodel_with_padding_layer_and_nested_blobs(tmp_path):
    """2013-style nets: each `layers` entry wraps a V0 `layer` that holds its own blobs."""
    rng = np.random.default_rng(5)
    conv_w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    fc_w = rng.standard_normal((5, 4 * 3 * 3)).astype(np.float32)
    net = caffe_pb2.NetParameter(name="v0", input=["data"], input_dim=[1, 3, 5, 5])
    pad = net.layers.add(bottom=["data"], top=["pad1"])
    pad.layer.name, pad.layer.type, pad.layer.pad = "pad1", "padding", 1
    conv = net.layers.add(bottom=["pad1"], top=["conv1"])
    conv.layer.name, conv.layer.type = "conv1", "conv"
    conv.layer.num_output, conv.layer.kernelsize, conv.layer.stride = 4, 3, 2
    for array in (conv_w, np.arange(4, dtype=np.float32)):
        blob = (
            conv.layer.blobs.add(num=1, channels=1, height=1, width=array.size)
            if array.ndim == 1
            else conv.layer.blobs.add(num=4, channels=3, height=3, width=3)
        )
        blob.data.extend(array.ravel().tolist())
    fc = net.layers.add(bottom=["conv1"], top=["fc1"])
    fc.layer.name, fc.layer.type, fc.layer.num_output = "fc1", "innerproduct", 5
    fc.layer.blobs.add(num=1, channels=1, height=5, width=36).data.extend(fc_w.ravel().tolist())
    fc.layer.blobs.add(num=1, channels=1, height=1, width=5).data.extend([0, 1, 2, 3, 4])
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(net.SerializeToString())
    ws = weightconv.load(path)
    assert ws.source.detail["encoding"] == "V0"
    np.testing.assert_array_equal(ws["conv1"].tensors["weights"], conv_w)
    np.testing.assert_array_equal(ws["fc1"].tensors["weights"], fc_w)
    # padding 1 then 3x3/2 on 5x5 gives 3x3: fc1 reads a 4x3x3 blob in C,H,W order
    canonical = {layer.name: layer for layer in canonical_layers(ws)}
    expected = fc_w.reshape(5, 4, 3, 3).transpose(2, 3, 1, 0).reshape(36, 5)
    np.testing.assert_array_equal(canonical["fc1"].tensors["weights"], expected)


def test_released_pages_read_back_unchanged(tmp_path):
    """canonical() drops each layer's mapped pages once used; the views must still read the
    file's values afterwards (the kernel faults them back in)."""
    rng = np.random.default_rng(9)
    weights = rng.standard_normal((64, 3, 7, 7)).astype(np.float32)
    layer = conv_layer(out=64, k=7)
    blob = layer.blobs.add()
    blob.shape.dim.extend(weights.shape)
    blob.data.extend(weights.ravel().tolist())
    ws = weightconv.load(write_net(tmp_path, input_layer((1, 3, 16, 16)), layer))
    view = ws["conv1"].tensors["weights"]
    assert ws.release is not None
    (canonical,) = canonical_layers(ws)
    np.testing.assert_array_equal(view, weights)
    np.testing.assert_array_equal(canonical.tensors["weights"], weights.transpose(2, 3, 1, 0))
