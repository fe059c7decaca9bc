"""Caffe's output-size arithmetic and net-definition handling (V0, V1, V2, fork fields)."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from weightconv._proto import caffe_pb2
from weightconv.formats.caffe import net as caffe_net
from weightconv.formats.caffe.net import conv_output_size, pool_output_size

from .conftest import corpus_file


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad", "expected"),
    [
        (112, 3, 2, 0, 56),  # GoogLeNet pool1: ceil where TF VALID gives 55
        (56, 3, 2, 1, 29),  # padded: no TF mode gives 29
        (5, 2, 2, 1, 3),  # clip rule: last window would start in the padding
        (55, 3, 2, 0, 27),  # AlexNet pool1
        (13, 3, 2, 0, 6),  # AlexNet pool5
    ],
)
def test_pool_output_size_follows_caffe_ceil_and_clip(size, kernel, stride, pad, expected):
    assert pool_output_size(size, kernel, stride, pad) == expected


def test_pool_floor_mode_rounds_down():
    assert pool_output_size(112, 3, 2, 0, ceil=False) == 55


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad", "dilation", "expected"),
    [
        (224, 7, 2, 3, 1, 112),
        (227, 11, 4, 0, 1, 55),
        (27, 5, 1, 2, 1, 27),
        (32, 3, 1, 2, 2, 32),
    ],
)
def test_conv_output_size_rounds_down(size, kernel, stride, pad, dilation, expected):
    assert conv_output_size(size, kernel, stride, pad, dilation) == expected


def _shapes_of(prototxt: str) -> dict[str, tuple[int, ...]]:
    message, _ = caffe_net.parse_prototxt(corpus_file(prototxt))
    return caffe_net.infer_blob_shapes(caffe_net.net_def_from_message(message))


@pytest.mark.corpus
@pytest.mark.parametrize(
    ("prototxt", "blob"),
    [
        ("prototxt/bvlc_alexnet.deploy.prototxt", "pool5"),
        ("prototxt/bvlc_reference_caffenet.deploy.prototxt", "pool5"),
        ("prototxt/v1_2014/bvlc_alexnet_deploy.prototxt", "pool5"),
        ("prototxt/v0_2013/imagenet_deploy.prototxt", "pool5"),
    ],
)
def test_alexnet_family_pool5_is_256x6x6_in_every_caffe_version(prototxt, blob):
    assert _shapes_of(prototxt)[blob][1:] == (256, 6, 6)


@pytest.mark.corpus
def test_googlenet_shapes_with_concat_and_ceil_pooling():
    shapes = _shapes_of("prototxt/bvlc_googlenet.deploy.prototxt")
    assert shapes["pool1/3x3_s2"][1:] == (64, 56, 56)
    assert shapes["inception_3a/output"][1:] == (256, 28, 28)
    assert shapes["inception_5b/output"][1:] == (1024, 7, 7)
    assert shapes["pool5/7x7_s1"][1:] == (1024, 1, 1)


@pytest.mark.corpus
def test_v0_prototxt_normalises_types_and_folds_padding_layers():
    message, _ = caffe_net.parse_prototxt(corpus_file("prototxt/v0_2013/imagenet_deploy.prototxt"))
    net = caffe_net.net_def_from_message(message)
    assert net.encoding == "V0"
    types = {layer.type for layer in net.layers}
    assert {"Convolution", "Pooling", "LRN", "InnerProduct", "Padding"} <= types
    conv2 = next(layer for layer in net.layers if layer.name == "conv2")
    assert conv2.params["group"] == 2


def test_unknown_fields_are_skipped_with_a_note(tmp_path):
    text = """
    name: "fork"
    input: "data"
    input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "perm" type: "Permute" bottom: "conv" top: "perm"
            permute_param { order: 0 order: 2 order: 3 order: 1 } }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
            pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: false } }
    """
    path = tmp_path / "fork.prototxt"
    path.write_text(text)
    message, notes = caffe_net.parse_prototxt(path)
    assert len(notes) == 1 and "permute_param (line 8)" in notes[0]
    shapes = caffe_net.infer_blob_shapes(caffe_net.net_def_from_message(message))
    assert shapes["conv"] == (1, 4, 6, 6)
    assert shapes["pool"] == (1, 4, 3, 3)


def test_ceil_mode_false_from_forks_means_floor():
    pool = caffe_pb2.PoolingParameter()
    text_format.Parse("kernel_size: 3 stride: 2 ceil_mode: false", pool)
    assert caffe_net.pool_params(pool)["ceil"] is False
    text_format.Parse("round_mode: FLOOR", pool := caffe_pb2.PoolingParameter())
    assert caffe_net.pool_params(pool)["ceil"] is False
    assert caffe_net.pool_params(caffe_pb2.PoolingParameter())["ceil"] is True


def test_binary_file_given_as_prototxt_is_a_clear_error(tmp_path):
    path = tmp_path / "model.prototxt"
    path.write_bytes(b"\x89\xff\x00binary")
    with pytest.raises(caffe_net.FormatError, match="not a text prototxt"):
        caffe_net.parse_prototxt(path)
