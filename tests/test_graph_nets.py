"""Whole nets in the NumPy engine against OpenCV, and `verify` on them.

Generated graphs in the styles that break converters (a SqueezeNet Fire module, a ResNet
block, MTCNN's PReLU net with two heads, Deconvolution + Crop + dilated convolution), the
real BVLC GoogLeNet deploy net with generated weights, and real models nobody on the team
made (MTCNN det1, Ultra-Light slim-320). Then the mistakes a conversion or an engine can
make, each of which `verify` must report as a failure (exit 1), `--trace` naming the first
blob that diverges, and a layer type no engine runs (exit 2, naming it).
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

import weightconv
from weightconv import cli
from weightconv.nets import numpy_ops
from weightconv.verify import verify

from .conftest import corpus_file
from .graph_oracle import Case, assert_agrees, prototxt
from .test_graph_engine import conv, layer

pytest.importorskip("cv2", reason="OpenCV is the reference; pip install opencv-python-headless")
pytestmark = pytest.mark.oracle


def fire(name: str, bottom: str, squeeze: int, expand: int) -> str:
    return (
        conv(f"{name}/squeeze1x1", bottom, f"num_output: {squeeze} kernel_size: 1")
        + layer(f"{name}/relu_squeeze1x1", "ReLU", [f"{name}/squeeze1x1"], [f"{name}/squeeze1x1"])
        + conv(f"{name}/expand1x1", f"{name}/squeeze1x1", f"num_output: {expand} kernel_size: 1")
        + layer(f"{name}/relu_expand1x1", "ReLU", [f"{name}/expand1x1"], [f"{name}/expand1x1"])
        + conv(
            f"{name}/expand3x3", f"{name}/squeeze1x1", f"num_output: {expand} kernel_size: 3 pad: 1"
        )
        + layer(f"{name}/relu_expand3x3", "ReLU", [f"{name}/expand3x3"], [f"{name}/expand3x3"])
        + layer(f"{name}/concat", "Concat", [f"{name}/expand1x1", f"{name}/expand3x3"])
    )


SQUEEZENET = (
    conv("conv1", "data", "num_output: 16 kernel_size: 3 stride: 2")
    + layer("relu1", "ReLU", ["conv1"], ["conv1"])
    + layer(
        "pool1", "Pooling", ["conv1"], extra="pooling_param { pool: MAX kernel_size: 3 stride: 2 }"
    )
    + fire("fire2", "pool1", 4, 8)
    + conv("conv10", "fire2/concat", "num_output: 10 kernel_size: 1")
    + layer(
        "pool10", "Pooling", ["conv10"], extra="pooling_param { pool: AVE global_pooling: true }"
    )
    + layer("prob", "Softmax", ["pool10"])
)


def bn_scale(name: str, blob: str) -> str:
    return layer(
        f"bn_{name}", "BatchNorm", [blob], [blob], "batch_norm_param { use_global_stats: true }"
    ) + layer(f"scale_{name}", "Scale", [blob], [blob], "scale_param { bias_term: true }")


RESNET = (
    conv("conv1", "data", "num_output: 8 kernel_size: 3 pad: 1 bias_term: false")
    + bn_scale("conv1", "conv1")
    + layer("relu1", "ReLU", ["conv1"], ["conv1"])
    + conv("res2a_branch2a", "conv1", "num_output: 8 kernel_size: 3 pad: 1 bias_term: false")
    + bn_scale("2a", "res2a_branch2a")
    + layer("res2a_relu", "ReLU", ["res2a_branch2a"], ["res2a_branch2a"])
    + conv(
        "res2a_branch2b", "res2a_branch2a", "num_output: 8 kernel_size: 3 pad: 1 bias_term: false"
    )
    + bn_scale("2b", "res2a_branch2b")
    + layer("res2a", "Eltwise", ["conv1", "res2a_branch2b"])
    + layer("res2a_out", "ReLU", ["res2a"], ["res2a"])
    + layer("pool", "Pooling", ["res2a"], extra="pooling_param { pool: AVE global_pooling: true }")
    + layer("fc", "InnerProduct", ["pool"], extra="inner_product_param { num_output: 6 }")
    + layer("prob", "Softmax", ["fc"])
)

MTCNN_STYLE = (
    conv("conv1", "data", "num_output: 6 kernel_size: 3")
    + layer("prelu1", "PReLU", ["conv1"], ["conv1"])
    + layer(
        "pool1", "Pooling", ["conv1"], extra="pooling_param { pool: MAX kernel_size: 2 stride: 2 }"
    )
    + conv("conv2", "pool1", "num_output: 8 kernel_size: 3")
    + layer("prelu2", "PReLU", ["conv2"], ["conv2"])
    + conv("conv4-1", "conv2", "num_output: 2 kernel_size: 1")
    + conv("conv4-2", "conv2", "num_output: 4 kernel_size: 1")
    + layer("prob1", "Softmax", ["conv4-1"])
)

DECONV_CROP = (
    conv("conv1", "data", "num_output: 6 kernel_size: 3 dilation: 2 pad: 2")
    + layer("relu1", "ReLU", ["conv1"], ["conv1"])
    + layer(
        "pool1", "Pooling", ["conv1"], extra="pooling_param { pool: MAX kernel_size: 2 stride: 2 }"
    )
    + conv("conv2", "pool1", "num_output: 4 kernel_size: 3 dilation: 2 pad: 2")
    + conv(
        "up",
        "conv2",
        "num_output: 4 kernel_size: 4 stride: 2 bias_term: false",
        kind="Deconvolution",
    )
    + layer("crop", "Crop", ["up", "data"], extra="crop_param { axis: 2 offset: 1 }")
    + layer("score", "Eltwise", ["crop", "data"], extra="eltwise_param { coeff: 1 coeff: 0.5 }")
)

GRAPHS = {
    "squeezenet-fire": (SQUEEZENET, (2, 3, 33, 33)),
    "resnet-block": (RESNET, (2, 3, 12, 12)),
    "mtcnn-prelu-two-heads": (MTCNN_STYLE, (2, 3, 14, 14)),
    "deconv-crop-dilated": (DECONV_CROP, (2, 4, 16, 16)),
}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_graphs_agree_with_opencv(tmp_path, name):
    body, shape = GRAPHS[name]
    case = Case(tmp_path, prototxt(body, {"data": shape}))
    if name == "mtcnn-prelu-two-heads":
        assert case.graph.outputs == ("conv4-2", "prob1")
    assert_agrees(case)


@pytest.fixture(scope="module")
def googlenet(tmp_path_factory):
    deploy = corpus_file("prototxt/bvlc_googlenet.deploy.prototxt")
    return Case(tmp_path_factory.mktemp("googlenet"), deploy.read_text(), scale=1.0)


def test_bvlc_googlenet_with_generated_weights_agrees(googlenet):
    assert googlenet.graph.outputs == ("prob",)
    feed = googlenet.feed(batch=2)
    ours = googlenet.ours(feed, ["loss3/classifier", "prob"])
    theirs = googlenet.opencv(feed, ["loss3/classifier", "prob"])
    for blob in ("loss3/classifier", "prob"):
        scale = np.abs(theirs[blob]).max()
        assert np.abs(ours[blob] - theirs[blob].reshape(ours[blob].shape)).max() <= 1e-5 * scale


@pytest.mark.parametrize(
    ("model", "deploy"),
    [
        ("caffe/mtcnn/det1.caffemodel", "caffe/mtcnn/det1.prototxt"),
        ("caffe/ultralight/slim-320.caffemodel", "caffe/ultralight/slim-320.prototxt"),
        ("caffe/lenet/lenet_iter_10000.caffemodel", "caffe/lenet/lenet.prototxt"),
        (
            "caffe/cifar10_v1/cifar10_full_iter_60000.caffemodel",
            "caffe/cifar10_v1/cifar10_full.prototxt",
        ),
        ("caffe/vanillacnn/vanillaCNN.caffemodel", "caffe/vanillacnn/vanilla_deploy.prototxt"),
    ],
    ids=["mtcnn-det1", "ultralight-slim-320", "lenet", "cifar10-full-v1", "vanilla-cnn"],
)
def test_real_models_verify_through_a_conversion(tmp_path, model, deploy):
    source, prototxt_path = corpus_file(model), corpus_file(deploy)
    converted = tmp_path / "converted.npy"
    weightconv.convert(source, converted, prototxt=prototxt_path)
    result = verify(converted, against=source, prototxt=prototxt_path, count=2)
    assert result.passed, result.report()
    from weightconv.nets import Graph

    heads = set(Graph.from_prototxt(prototxt_path).outputs)
    assert heads <= {check.blob for check in result.blobs}  # every head
    assert all(check.relative < 1e-5 for check in result.blobs), result.report()


# --- mistakes must fail ------------------------------------------------------------------


def test_googlenet_conv1_with_tf_same_padding_fails_and_is_traced(googlenet, monkeypatch):
    """TF SAME on 224 with 7x7/2 pads 2 before and 3 after; Caffe pads 3 and 3. The output is
    112x112 either way: only the alignment differs, and verify must see it."""
    original = numpy_ops.OPS["Convolution"]

    def same_padding(node, bottoms, tensors):
        if node.name != "conv1/7x7_s2":
            return original(node, bottoms, tensors)
        x = np.pad(bottoms[0], ((0, 0), (0, 0), (2, 3), (2, 3)))
        return original(
            dataclasses.replace(node, params={**node.params, "pad": (0, 0)}), [x], tensors
        )

    monkeypatch.setitem(numpy_ops.OPS, "Convolution", same_padding)
    result = verify(
        googlenet.npy, against=googlenet.model, prototxt=googlenet.prototxt, count=2, trace=True
    )
    assert not result.passed and result.exit_code == 1
    assert result.trace.first_divergent.blob == "conv1/7x7_s2"
    assert "first diverging blob conv1/7x7_s2" in result.report()


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    return Case(tmp_path_factory.mktemp("resnet"), prototxt(RESNET, {"data": (1, 3, 12, 12)}))


def test_batchnorm_without_its_scale_factor_fails(resnet):
    weights = weightconv.load(resnet.model, prototxt=resnet.prototxt)  # Caffe layout
    layers = [
        dataclasses.replace(
            layer, tensors={r: t for r, t in layer.tensors.items() if r != "scale_factor"}
        )
        if layer.kind == "batchnorm"
        else layer
        for layer in weights.layers
    ]
    result = verify(
        dataclasses.replace(weights, layers=layers),
        against=resnet.model,
        prototxt=resnet.prototxt,
        count=2,
        trace=True,
    )
    assert not result.passed and result.exit_code == 1
    assert result.trace.first_divergent.blob == "conv1"
    assert result.trace.first_divergent.written_by == "bn_conv1"


def test_eltwise_coefficients_ignored_fails(tmp_path, monkeypatch, capsys):
    case = Case(tmp_path, prototxt(DECONV_CROP, {"data": (1, 4, 16, 16)}))
    original = numpy_ops.OPS["Eltwise"]

    def no_coefficients(node, bottoms, tensors):
        return original(
            dataclasses.replace(node, params={**node.params, "coeff": []}), bottoms, tensors
        )

    monkeypatch.setitem(numpy_ops.OPS, "Eltwise", no_coefficients)
    argv = [
        "verify",
        str(case.npy),
        "--against",
        str(case.model),
        "--prototxt",
        str(case.prototxt),
        "--count",
        "2",
        "--trace",
    ]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "trace: first diverging blob score" in out
    assert out.splitlines()[-1].startswith("FAIL: 0/1 output blobs agree")


def test_deconvolution_kernel_not_transposed_fails(tmp_path):
    """A deconvolution with as many inputs as outputs: its kernel left (kh, kw, in, out)
    instead of (kh, kw, out, in) has the right shape and the wrong numbers."""
    case = Case(tmp_path, prototxt(DECONV_CROP, {"data": (1, 4, 16, 16)}))
    weights = weightconv.load(case.npy)
    layers = [
        dataclasses.replace(
            layer, tensors={"weights": np.asarray(layer.tensors["weights"]).transpose(0, 1, 3, 2)}
        )
        if layer.name == "up"
        else layer
        for layer in weights.layers
    ]
    result = verify(
        dataclasses.replace(weights, layers=layers),
        against=case.model,
        prototxt=case.prototxt,
        count=2,
        trace=True,
    )
    assert not result.passed and result.exit_code == 1
    assert result.trace.first_divergent.blob == "up"
    assert result.trace.last_agreeing.blob == "conv2"


def test_an_unknown_layer_type_exits_2_naming_it(tmp_path, capsys):
    case = Case(tmp_path, prototxt(SQUEEZENET, {"data": (1, 3, 33, 33)}))
    odd = tmp_path / "odd.prototxt"
    odd.write_text(case.prototxt.read_text() + layer("mystery", "ShuffleChannel", ["prob"]))
    argv = ["verify", str(case.npy), "--against", str(case.model), "--prototxt", str(odd)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "layer 'mystery' has type ShuffleChannel" in err


def test_verify_passes_on_every_graph_and_reports_each_output(tmp_path, capsys):
    case = Case(tmp_path, prototxt(MTCNN_STYLE, {"data": (1, 3, 14, 14)}))
    argv = [
        "verify",
        str(case.npy),
        "--against",
        str(case.model),
        "--prototxt",
        str(case.prototxt),
        "--count",
        "3",
        "--json",
    ]
    assert cli.main(argv) == 0
    import json

    document = json.loads(capsys.readouterr().out)
    assert [b["blob"] for b in document["blobs"]] == ["conv4-2", "prob1"]
    assert cli.main([*argv[:-1], "--outputs", "conv4-1"]) == 0
    assert "blob conv4-1 " in capsys.readouterr().out
    shutil.rmtree(tmp_path)


def test_nets_with_several_inputs_verify_on_seeded_inputs(tmp_path):
    body = conv("c", "a", "num_output: 3 kernel_size: 3 pad: 1") + layer(
        "s", "Eltwise", ["c", "b"], extra="eltwise_param { coeff: 1 coeff: 3 }"
    )
    case = Case(tmp_path, prototxt(body, {"a": (1, 2, 5, 6), "b": (1, 3, 5, 6)}))
    result = verify(case.npy, against=case.model, prototxt=case.prototxt, count=3)
    assert result.passed, result.report()
    assert "3 seeded normal inputs (seed 0) for a (N, 2, 5, 6), b (N, 3, 5, 6)" in result.inputs
    assert result.report().splitlines()[-1].startswith("PASS: 1/1 output blobs agree")


@pytest.mark.parametrize(
    "older",
    ["prototxt/v1_2014/bvlc_alexnet_deploy.prototxt", "prototxt/v0_2013/imagenet_deploy.prototxt"],
)
def test_v0_and_v1_prototxts_give_the_v2_graph(older):
    """The same net spelled by older Caffe versions: the same layers, parameters and shapes."""
    from weightconv.nets import Graph

    old = Graph.from_prototxt(corpus_file(older))
    assert [node.type for node in old.nodes if node.type == "Convolution"]
    assert old.shapes[old.weighted_nodes[-1].tops[0]][1] == 1000
    assert old.node_shapes[old.nodes[0].name][0][1:] == (96, 55, 55)
