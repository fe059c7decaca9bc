"""The two changes a Caffe model's numbers go through on the way to PyTorch's layout, which is
otherwise Caffe's own: an InnerProduct stored (in, out) with ``transpose: true`` is transposed,
and a BatchNorm's mean and variance are unscaled by its third blob. Each writer applies them
and its report says so, as the canonical layout's reports do; the values are checked against
the generator's own blobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import weightconv
from weightconv.mapping import Mapping
from weightconv.mapping.template import explain_template
from weightconv.model.caffe_layout import TRANSPOSED_DENSE_STEP, steps
from weightconv.model.canonical import BATCHNORM_STEP, canonicalization_steps
from weightconv.testing.caffe_weights import write_caffemodel

PROTOTXT = """
name: "steps"
input: "data"
input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "fc1" type: "InnerProduct" bottom: "conv1" top: "fc1"
  inner_product_param { num_output: 5 transpose: true } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
  inner_product_param { num_output: 3 } }
"""
#: What the torch layout does to this net: only the two Caffe-specific steps.
TORCH_STEPS = [
    {"step": BATCHNORM_STEP, "layers": ["bn1"]},
    {"step": TRANSPOSED_DENSE_STEP, "layers": ["fc1"]},
]
#: What the canonical layout does to it (fc1, stored (in, out), is not transposed there).
CANONICAL_STEPS = [
    {"step": "conv kernel OIHW -> HWIO", "layers": ["conv1"]},
    {"step": BATCHNORM_STEP, "layers": ["bn1"]},
    {"step": "flatten order C,H,W -> H,W,C (4x2x2)", "layers": ["fc1"]},
    {"step": "dense (out, in) -> (in, out)", "layers": ["fc2"]},
]


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("steps")
    (folder / "m.prototxt").write_text(PROTOTXT)
    blobs = write_caffemodel(folder / "m.prototxt", folder / "m.caffemodel", seed=3)
    assert blobs["fc1"][0].shape == (16, 5) and blobs["bn1"][2][0] != 1
    return {"model": folder / "m.caffemodel", "prototxt": folder / "m.prototxt", "blobs": blobs}


def _moments(blobs: dict) -> tuple[np.ndarray, np.ndarray]:
    """bn1's mean and variance as Caffe computes them (batch_norm_layer.cpp): the reciprocal of
    the scale factor in float32, then one multiply; within an ulp of mean / scale."""
    mean, variance, factor = blobs["bn1"]
    inverse = np.float32(1) / factor[0]
    np.testing.assert_allclose(mean * inverse, mean / factor[0], rtol=2e-7)
    return mean * inverse, variance * inverse


def _torch_expected(blobs: dict) -> dict[str, np.ndarray]:
    mean, variance = _moments(blobs)
    return {
        "conv1.weight": blobs["conv1"][0],
        "conv1.bias": blobs["conv1"][1],
        "bn1.running_mean": mean,
        "bn1.running_var": variance,
        "scale1.scale": blobs["scale1"][0],
        "scale1.offset": blobs["scale1"][1],
        "fc1.weight": blobs["fc1"][0].T,
        "fc1.bias": blobs["fc1"][1],
        "fc2.weight": blobs["fc2"][0],
        "fc2.bias": blobs["fc2"][1],
    }


def _convert(net: dict, out, **options):
    return weightconv.convert(net["model"], out, prototxt=net["prototxt"], **options)


def _assert_equal(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        assert got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array, err_msg=name)


def test_caffe_to_pt_applies_and_reports_both_steps(net, tmp_path):
    report = _convert(net, tmp_path / "m.pt")
    assert report.transforms == TORCH_STEPS
    assert report.detail["transforms"] == TORCH_STEPS
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    _assert_equal({k: v.numpy() for k, v in state.items()}, _torch_expected(net["blobs"]))


def test_caffe_to_torch_layout_safetensors_applies_and_reports_both_steps(net, tmp_path):
    report = _convert(net, tmp_path / "m.safetensors")
    assert report.detail["layout"] == "torch"
    assert report.transforms == TORCH_STEPS
    _assert_equal(load_file(tmp_path / "m.safetensors"), _torch_expected(net["blobs"]))


def test_caffe_to_npy_reports_the_batchnorm_step(net, tmp_path):
    report = _convert(net, tmp_path / "m.npy")
    assert report.transforms == CANONICAL_STEPS
    blobs = net["blobs"]
    written = np.load(tmp_path / "m.npy", allow_pickle=True).item()
    mean, variance = _moments(blobs)
    assert sorted(written["bn1"]) == ["mean", "variance"]
    np.testing.assert_array_equal(written["bn1"]["mean"], mean)
    np.testing.assert_array_equal(written["bn1"]["variance"], variance)
    fc1 = blobs["fc1"][0].reshape(4, 2, 2, 5).transpose(1, 2, 0, 3).reshape(16, 5)  # rows H,W,C
    np.testing.assert_array_equal(written["fc1"][0], fc1)
    np.testing.assert_array_equal(written["fc2"][0], blobs["fc2"][0].T)


def test_caffe_to_tf_layout_safetensors_reports_the_batchnorm_step(net, tmp_path):
    report = _convert(net, tmp_path / "m.safetensors", safetensors_layout="tf")
    assert report.transforms == CANONICAL_STEPS
    written = load_file(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(written["bn1/mean"], _moments(net["blobs"])[0])


def test_caffe_to_onnx_applies_and_reports_both_steps(net, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    renamed = {"scale1.scale": "bn1.weight", "scale1.offset": "bn1.bias"}  # one node in ONNX
    expected = {renamed.get(k, k): v for k, v in _torch_expected(net["blobs"]).items()}
    bn = ["c", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c"]),
        helper.make_node("BatchNormalization", bn, ["b"]),
        helper.make_node("Flatten", ["b"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["g"], transB=1),
        helper.make_node("Gemm", ["g", "fc2.weight", "fc2.bias"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "template",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(np.zeros_like(a), n) for n, a in expected.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "template.onnx"))
    report = _convert(net, tmp_path / "m.onnx", model=tmp_path / "template.onnx")
    assert report.transforms == TORCH_STEPS
    written = {
        i.name: numpy_helper.to_array(i)
        for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer
    }
    _assert_equal(written, expected)


def test_each_step_is_listed_against_the_tensors_it_changes(net, tmp_path):
    weights = weightconv.load(net["model"], prototxt=net["prototxt"])
    canonical = {row["from"]: row["transforms"] for row in Mapping().explain(weights)}
    assert canonical["bn1/mean"] == canonical["bn1/variance"] == [BATCHNORM_STEP]
    assert canonical["fc1/weights"] == ["flatten order C,H,W -> H,W,C (4x2x2)"]
    assert canonical["fc1/biases"] == canonical["scale1/scale"] == []
    template = tmp_path / "template.pt"
    torch.save({k: torch.from_numpy(v) for k, v in _torch_expected(net["blobs"]).items()}, template)
    paired = {row["from"]: row["transforms"] for row in explain_template(weights, template)}
    assert paired["bn1/mean"] == paired["bn1/variance"] == [BATCHNORM_STEP]
    assert paired["fc1/weights"] == [TRANSPOSED_DENSE_STEP]
    assert paired["fc1/biases"] == paired["fc2/weights"] == paired["conv1/weights"] == []
    bn1, fc1 = weights["bn1"], weights["fc1"]
    assert steps(bn1, role="mean") == canonicalization_steps(bn1, "variance") == [BATCHNORM_STEP]
    assert steps(fc1, role="biases") == canonicalization_steps(bn1, "scale_factor") == []
