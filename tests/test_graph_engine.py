"""The NumPy engine against OpenCV's Caffe importer, layer type by layer type.

Each net is tiny and generated (seeded weights in a real .caffemodel, converted to .npy by
weightconv); the engine runs the converted file, OpenCV the caffemodel, and every output
blob must agree within 1e-5 of its scale. The parameters that change numbers are each
exercised: asymmetric and per-axis pads, dilation, groups, ceil pooling with the clip rule,
AVE pooling over padding, BatchNorm's scale factor, Eltwise coefficients, Scale with a
second bottom, Crop offsets, Reshape's 0 and -1, Permute, Slice points.
"""

from __future__ import annotations

import numpy as np
import pytest

from weightconv.errors import UsageError
from weightconv.nets.graph import Graph

from .graph_oracle import Case, assert_agrees, prototxt

pytest.importorskip("cv2", reason="OpenCV is the reference; pip install opencv-python-headless")
pytestmark = pytest.mark.oracle


def conv(name: str, bottom: str, params: str, top: str | None = None, kind: str = "Convolution"):
    return (
        f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{top or name}" '
        f"convolution_param {{ {params} }} }}\n"
    )


def layer(name: str, kind: str, bottoms: list[str], tops: list[str] | None = None, extra=""):
    links = " ".join(f'bottom: "{b}"' for b in bottoms)
    links += " " + " ".join(f'top: "{t}"' for t in (tops or [name]))
    return f'layer {{ name: "{name}" type: "{kind}" {links} {extra} }}\n'


C6 = "num_output: 6 "
NETS = {
    "conv-asymmetric-pad": conv(
        "c", "data", C6 + "kernel_h: 3 kernel_w: 5 pad_h: 2 pad_w: 1 stride_h: 2 stride_w: 1"
    ),
    "conv-repeated-pad-dilation": conv(
        "c", "data", C6 + "kernel_size: 3 pad: 1 pad: 3 dilation: 2 stride: 2"
    ),
    "conv-group-no-bias": conv("c", "data", C6 + "kernel_size: 3 group: 2 bias_term: false pad: 1"),
    "conv-1x1": conv("c", "data", C6 + "kernel_size: 1"),
    "deconvolution": conv(
        "d", "data", "num_output: 3 kernel_size: 4 stride: 2 pad: 1", kind="Deconvolution"
    ),
    "deconvolution-group": conv(
        "d", "data", "num_output: 6 kernel_size: 3 stride: 2 group: 2", kind="Deconvolution"
    ),
    "pool-max-ceil-clip": layer(
        "p",
        "Pooling",
        ["data"],
        extra="pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }",
    ),
    "pool-max-clip": layer(
        "p",
        "Pooling",
        ["data"],
        extra="pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }",
    ),
    "pool-ave-clip": layer(
        "p",
        "Pooling",
        ["data"],
        extra="pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 }",
    ),
    "pool-max-ceil": layer(
        "p", "Pooling", ["data"], extra="pooling_param { pool: MAX kernel_size: 2 stride: 2 }"
    ),
    "pool-ave-pad": layer(
        "p",
        "Pooling",
        ["data"],
        extra="pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }",
    ),
    "pool-ave-per-axis": layer(
        "p",
        "Pooling",
        ["data"],
        extra="pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 2 "
        "stride_w: 2 pad_h: 1 pad_w: 1 }",
    ),
    "pool-global": layer(
        "p", "Pooling", ["data"], extra="pooling_param { pool: AVE global_pooling: true }"
    )
    + layer("q", "Pooling", ["data"], extra="pooling_param { pool: MAX global_pooling: true }"),
    "inner-product": layer(
        "ip", "InnerProduct", ["data"], extra="inner_product_param { num_output: 5 }"
    ),
    "relu-negative-slope": layer("r", "ReLU", ["data"], extra="relu_param { negative_slope: 0.1 }"),
    "prelu": layer("p", "PReLU", ["data"], ["p"])
    + layer("s", "PReLU", ["data"], ["s"], "prelu_param { channel_shared: true }"),
    "elu": layer("e", "ELU", ["data"], extra="elu_param { alpha: 0.7 }"),
    "sigmoid-tanh-absval": layer("a", "Sigmoid", ["data"])
    + layer("b", "TanH", ["data"])
    + layer("c", "AbsVal", ["data"]),
    "power": layer("a", "AbsVal", ["data"])
    + layer("p", "Power", ["a"], extra="power_param { power: 1.5 scale: 0.5 shift: 0.2 }"),
    "batchnorm-scale-factor": layer(
        "bn", "BatchNorm", ["data"], extra="batch_norm_param { use_global_stats: true eps: 0.001 }"
    ),
    "batchnorm-scale-bias": layer("bn", "BatchNorm", ["data"], ["data"])
    + layer("sc", "Scale", ["data"], ["data"], "scale_param { bias_term: true }"),
    "scale-second-bottom": layer("t", "TanH", ["data"])
    + layer("sc", "Scale", ["data", "t"], extra="scale_param { axis: 0 }"),
    "eltwise": layer("t", "TanH", ["data"])
    + layer(
        "sum",
        "Eltwise",
        ["data", "t"],
        extra="eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }",
    )
    + layer("prod", "Eltwise", ["data", "t"], extra="eltwise_param { operation: PROD }")
    + layer("max", "Eltwise", ["data", "t"], extra="eltwise_param { operation: MAX }"),
    "concat-axes": layer("t", "TanH", ["data"])
    + layer("c1", "Concat", ["data", "t"])
    + layer("c2", "Concat", ["data", "t"], extra="concat_param { axis: 2 }"),
    "slice-points": layer(
        "s",
        "Slice",
        ["data"],
        ["a", "b", "c"],
        "slice_param { axis: 1 slice_point: 1 slice_point: 3 }",
    )
    + layer("ta", "TanH", ["a"])
    + layer("tb", "Sigmoid", ["b"])
    + layer("tc", "AbsVal", ["c"]),
    "split": layer("sp", "Split", ["data"], ["x", "y"])
    + layer("tx", "TanH", ["x"])
    + layer("ty", "Sigmoid", ["y"]),
    "flatten-axes": layer("f", "Flatten", ["data"], extra="flatten_param { axis: 1 end_axis: 2 }")
    + layer("t", "TanH", ["f"]),
    "reshape-0-and-minus-1": layer(
        "r", "Reshape", ["data"], extra="reshape_param { shape { dim: 0 dim: -1 dim: 11 } }"
    )
    + layer("t", "TanH", ["r"]),
    "reshape-axis": layer(
        "r",
        "Reshape",
        ["data"],
        extra="reshape_param { axis: 1 num_axes: 1 shape { dim: 2 dim: 2 } }",
    )
    + layer("t", "TanH", ["r"]),
    "flatten-inner-product": conv("c", "data", "num_output: 3 kernel_size: 3")
    + layer("r", "ReLU", ["c"], ["c"])
    + layer("f", "Flatten", ["c"])
    + layer("d", "Dropout", ["f"], ["f"])
    + layer("ip", "InnerProduct", ["f"], extra="inner_product_param { num_output: 5 }"),
    "permute": layer(
        "p", "Permute", ["data"], extra="permute_param { order: 0 order: 2 order: 3 order: 1 }"
    )
    + layer("f", "Flatten", ["p"]),
    "crop-offsets": conv("c", "data", "num_output: 4 kernel_size: 3")
    + layer("cr", "Crop", ["data", "c"], extra="crop_param { axis: 2 offset: 1 offset: 2 }")
    + layer(
        "cr1", "Crop", ["data", "c"], extra="crop_param { axis: 1 offset: 0 offset: 1 offset: 2 }"
    ),
    "softmax-axes": layer("s1", "Softmax", ["data"])
    + layer("s2", "Softmax", ["data"], extra="softmax_param { axis: 2 }"),
    "dropout": layer("d", "Dropout", ["data"], extra="dropout_param { dropout_ratio: 0.3 }")
    + layer("t", "TanH", ["d"]),
    "lrn-across-channels": layer(
        "n", "LRN", ["data"], extra="lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }"
    ),
    "lrn-within-channel": layer(
        "n",
        "LRN",
        ["data"],
        extra="lrn_param { local_size: 3 alpha: 0.4 beta: 0.6 norm_region: WITHIN_CHANNEL }",
    ),
}


@pytest.mark.parametrize("name", list(NETS))
def test_each_layer_type_agrees_with_opencv(tmp_path, name):
    case = Case(tmp_path, prototxt(NETS[name]))
    assert_agrees(case)


def test_every_listed_type_is_covered():
    covered = {
        node.type for text in NETS.values() for node in Graph.from_prototxt(_write(text)).nodes
    }
    listed = {
        "Convolution",
        "Deconvolution",
        "Pooling",
        "InnerProduct",
        "ReLU",
        "PReLU",
        "ELU",
        "Sigmoid",
        "TanH",
        "AbsVal",
        "Power",
        "BatchNorm",
        "Scale",
        "Bias",
        "Eltwise",
        "Concat",
        "Slice",
        "Split",
        "Flatten",
        "Reshape",
        "Permute",
        "Crop",
        "Softmax",
        "Dropout",
        "LRN",
    }
    # Bias (which OpenCV has no layer for) is checked against Caffe's formula below
    assert listed - {"Bias"} <= covered, listed - covered


def _write(text: str):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "net.prototxt"
    path.write_text(prototxt(text))
    return path


def test_ceil_pooling_clip_rule_shapes():
    """Caffe rounds up, then drops a last window that would start in the padding: 2x2/2 pad 1
    on 9 gives ceil((9 + 2 - 2) / 2) + 1 = 6 windows, but the 6th starts at 10 - 1 = 9, not
    inside 9 + 1 -> 5 (on 11: 7 -> 6). 3x3/2 pad 1 keeps its last window: 5 and 6."""
    graph = Graph.from_prototxt(_write(NETS["pool-max-clip"]))
    assert graph.shapes["p"] == (2, 4, 5, 6)
    graph = Graph.from_prototxt(_write(NETS["pool-max-ceil-clip"]))
    assert graph.shapes["p"] == (2, 4, 5, 6)


def _caffe_formula_case(tmp_path, body):
    """For what OpenCV 4.x does not compute as Caffe does (InnerProduct's transpose, a Scale
    with a second bottom and a bias) or has no layer for (Bias): the expected values come from
    Caffe's documented formulas on the generated blobs, written out here in NumPy."""
    case = Case(tmp_path, prototxt(body))
    feed = case.feed()
    return case, feed, case.ours(feed)


def test_inner_product_transpose_is_caffes(tmp_path):
    """transpose: true stores (K, N); Caffe computes x (M, K) @ W (K, N). (OpenCV 4.14 reads
    the blob as (N, K), so it cannot be the reference here.)"""
    case, feed, ours = _caffe_formula_case(
        tmp_path,
        layer(
            "ipt",
            "InnerProduct",
            ["data"],
            extra="inner_product_param { num_output: 7 transpose: true }",
        ),
    )
    weights, biases = case.blobs["ipt"]
    expected = feed["data"].reshape(2, -1).astype(np.float64) @ weights + biases
    np.testing.assert_allclose(ours["ipt"], expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_scale_with_a_second_bottom_and_bias_and_bias_are_caffes(tmp_path):
    case, feed, ours = _caffe_formula_case(
        tmp_path,
        layer("t", "TanH", ["data"])
        + layer("sc", "Scale", ["data", "t"], extra="scale_param { axis: 0 bias_term: true }")
        + layer("b", "Bias", ["data"], extra="bias_param { axis: 1 num_axes: 2 }"),
    )
    x = feed["data"].astype(np.float64)
    (offset,) = case.blobs["sc"]
    np.testing.assert_allclose(ours["sc"], x * np.tanh(x) + offset, rtol=0, atol=1e-5)
    (bias,) = case.blobs["b"]
    assert bias.shape == (4, 9)
    np.testing.assert_allclose(ours["b"], x + bias[None, :, :, None], rtol=0, atol=1e-6)


def test_multiple_inputs_and_in_place_layers(tmp_path):
    text = prototxt(
        conv("c", "a", "num_output: 3 kernel_size: 3 pad: 1")
        + layer("r", "ReLU", ["c"], ["c"])
        + layer("s", "Eltwise", ["c", "b"], extra="eltwise_param { coeff: 1 coeff: 3 }")
        + layer("t", "TanH", ["s"], ["s"]),
        inputs={"a": (2, 2, 5, 6), "b": (2, 3, 5, 6)},
    )
    case = Case(tmp_path, text)
    assert set(case.graph.inputs) == {"a", "b"}
    assert case.graph.outputs == ("s",)
    assert_agrees(case)


def test_an_unknown_layer_type_is_refused_naming_it(tmp_path):
    path = tmp_path / "odd.prototxt"
    path.write_text(prototxt(layer("weird", "Frobnicate", ["data"])))
    with pytest.raises(UsageError, match=r"layer 'weird' has type Frobnicate"):
        Graph.from_prototxt(path)


def test_a_permute_without_its_order_is_refused(tmp_path):
    path = tmp_path / "p.prototxt"
    path.write_text(prototxt(layer("p", "Permute", ["data"])))
    with pytest.raises(UsageError, match=r"'p': a Permute layer without permute_param.order"):
        Graph.from_prototxt(path)
