"""weightconv's .npy layout checked against an independent oracle: OpenCV's Caffe importer.

OpenCV reads the original .caffemodel and prototxt itself and runs the net in NCHW.
`numpy_forward` runs the same prototxt in NHWC on weightconv's .npy output, read with
plain `np.load`, assuming the documented TensorFlow layout (HWIO conv kernels with
group-split I and O, (in, out) dense kernels whose first fully-connected layer after a
spatial blob takes H, W, C-ordered rows). If the logits agree, the layout is right;
the negative checks show that a wrong flatten order or group order would not agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

import weightconv
from weightconv._proto import caffe_pb2
from weightconv.formats.caffe.net import NetDef, feeds_from_spatial, infer_blob_shapes
from weightconv.testing import synthetic

from . import numpy_forward as nf
from .conftest import corpus_file

cv2 = pytest.importorskip(
    "cv2",
    reason="OpenCV (opencv-python-headless) is the oracle here; pip install opencv-python-headless",
)

pytestmark = pytest.mark.oracle

#: Images per model: enough for a few top-1 checks, few enough to stay fast.
BATCH = 3
#: Agreement: max |ours - OpenCV| <= RELATIVE * max(1, max |OpenCV logits|).
RELATIVE = 1e-4


# --- helpers -------------------------------------------------------------------------------


def convert(model: Path, prototxt: Path, tmp_path: Path) -> dict[str, list[np.ndarray]]:
    out = tmp_path / f"{model.stem}.npy"
    weightconv.convert(model, out, prototxt=prototxt)
    return nf.load_npy(out)


def images(net: NetDef, value_range: tuple[float, float], seed: int = 0) -> np.ndarray:
    """Seeded random NHWC images in the net's usual input range, BATCH of them (the
    prototxt's own batch size is ignored: both frameworks reshape to the fed batch)."""
    ((_, channels, height, width),) = nf.input_blobs(net).values()
    low, high = value_range
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, (BATCH, height, width, channels)).astype(np.float32)


def logits_blob(net: NetDef) -> str:
    """The blob the Softmax reads: the logits."""
    softmax = [layer for layer in net.layers if layer.type == "Softmax"]
    assert softmax, "the net has no Softmax layer"
    return softmax[-1].bottoms[0]


def opencv_forward(
    prototxt: Path, model: Path, x: np.ndarray, blobs: list[str]
) -> list[np.ndarray]:
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(model))
    net.setInput(nf.nchw(x))
    outputs = net.forward(blobs)
    return [np.asarray(out, dtype=np.float64).reshape(x.shape[0], -1) for out in outputs]


def tolerance(reference_logits: np.ndarray) -> float:
    return RELATIVE * max(1.0, float(np.abs(reference_logits).max()))


def assert_top1_agrees(ours: np.ndarray, theirs: np.ndarray, tol: float) -> None:
    """Same argmax wherever OpenCV's top two are further apart than the tolerance allows
    either side to move (a tie within rounding may flip either way)."""
    top_two = np.sort(theirs, axis=1)[:, -2:]
    decided = (top_two[:, 1] - top_two[:, 0]) > 2 * tol
    assert decided.any(), "every image is a near-tie; pick other inputs"
    np.testing.assert_array_equal(nf.top1(ours)[decided], nf.top1(theirs)[decided])


def check_against_opencv(
    prototxt: Path, model: Path, weights: dict[str, list[np.ndarray]], net: NetDef, x: np.ndarray
) -> float:
    """Assert logits, probabilities and top-1 agree; return the logits' max |difference|."""
    logits = logits_blob(net)
    prob = [layer for layer in net.layers if layer.type == "Softmax"][-1].tops[0]
    ours = nf.forward(net, weights, x)
    our_logits = ours[logits].reshape(x.shape[0], -1)
    our_prob = ours[prob].reshape(x.shape[0], -1)
    cv_logits, cv_prob = opencv_forward(prototxt, model, x, [logits, prob])
    tol = tolerance(cv_logits)
    diff = float(np.abs(our_logits - cv_logits).max())
    assert diff <= tol, (
        f"{logits}: max |ours - OpenCV| = {diff:.3g} > {tol:.3g} "
        f"(max |logit| {np.abs(cv_logits).max():.3g})"
    )
    prob_diff = float(np.abs(our_prob - cv_prob).max())
    assert prob_diff <= RELATIVE, f"{prob}: max |ours - OpenCV| = {prob_diff:.3g}"
    assert_top1_agrees(our_logits, cv_logits, tol)
    return diff


# --- real models ---------------------------------------------------------------------------

REAL_MODELS = [
    # LeNet was trained on MNIST scaled to [0, 1].
    pytest.param(
        "caffe/lenet/lenet_iter_10000.caffemodel",
        "caffe/lenet/lenet.prototxt",
        (0.0, 1.0),
        id="lenet",
    ),
    # cifar10_quick was trained on mean-subtracted 0..255 pixels.
    pytest.param(
        "caffe/cifar10_v2/cifar10_quick_iter_4000.caffemodel",
        "caffe/cifar10_v2/cifar10_quick.prototxt",
        (-128.0, 128.0),
        id="cifar10_quick-v2",
    ),
    pytest.param(
        "caffe/cifar10_v1/cifar10_quick_iter_5000.caffemodel",
        "caffe/cifar10_v1/cifar10_quick.prototxt",
        (-128.0, 128.0),
        id="cifar10_quick-v1",
    ),
]


@pytest.mark.corpus
@pytest.mark.parametrize(("model", "prototxt", "value_range"), REAL_MODELS)
def test_real_model_agrees_with_opencv(model, prototxt, value_range, tmp_path):
    model, prototxt = corpus_file(model), corpus_file(prototxt)
    net = nf.load_net(prototxt)
    weights = convert(model, prototxt, tmp_path)
    for seed in (0, 1):
        check_against_opencv(prototxt, model, weights, net, images(net, value_range, seed))


# --- generated AlexNet / CaffeNet: grouped conv, LRN, fc6 after a 6x6 pool5 ----------------

#: Mean-subtracted 0..255 pixels, as these nets are fed: large enough that LRN matters.
IMAGENET_RANGE = (-128.0, 128.0)


class Generated:
    def __init__(self, directory: Path, spec: str, encoding: str) -> None:
        built = synthetic.build(spec, width=0.125, seed=0, encoding=encoding)
        self.model = directory / f"{spec}-{encoding}.caffemodel"
        self.prototxt = directory / f"{spec}-{encoding}.prototxt"
        built.write_caffemodel(self.model)
        self.prototxt.write_text(built.deploy_prototxt)
        self.net = nf.load_net(self.prototxt)
        self.weights = convert(self.model, self.prototxt, directory)
        self.x = images(self.net, IMAGENET_RANGE)


@pytest.fixture(
    scope="module",
    params=[("alexnet", "v2"), ("caffenet", "v1")],
    ids=["alexnet-v2", "caffenet-v1"],
)
def generated(request, tmp_path_factory) -> Generated:
    spec, encoding = request.param
    return Generated(tmp_path_factory.mktemp(f"{spec}-{encoding}"), spec, encoding)


def test_generated_alexnet_agrees_with_opencv(generated):
    assert generated.weights["conv2"][0].shape[2] * 2 == generated.weights["conv1"][0].shape[3]
    check_against_opencv(
        generated.prototxt, generated.model, generated.weights, generated.net, generated.x
    )


def fc6_rows_in_chw_order(weights, net):
    """fc6 with its rows put back into Caffe's C, H, W order: a wrong flatten."""
    fc6 = next(layer for layer in net.layers if layer.name == "fc6")
    assert feeds_from_spatial(net, fc6.bottoms[0])
    _, c, h, w = infer_blob_shapes(net)[fc6.bottoms[0]]
    assert (h, w) == (6, 6)
    kernel, bias = weights["fc6"]
    chw = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
    return {**weights, "fc6": [chw, bias]}


def conv2_groups_swapped(weights, net):
    """conv2's two groups of filters exchanged (each group's filters on the other's inputs)."""
    kernel, bias = weights["conv2"]
    half = kernel.shape[3] // 2
    swapped = np.concatenate([kernel[..., half:], kernel[..., :half]], axis=3)
    return {**weights, "conv2": [swapped, bias]}


def conv1_kernel_transposed(weights, net):
    """conv1's kernel with H and W exchanged (WHIO instead of HWIO)."""
    kernel, bias = weights["conv1"]
    return {**weights, "conv1": [kernel.transpose(1, 0, 2, 3), bias]}


@pytest.mark.parametrize(
    "corrupt",
    [fc6_rows_in_chw_order, conv2_groups_swapped, conv1_kernel_transposed],
    ids=["fc6-rows-CHW", "conv2-groups-swapped", "conv1-kernel-WHIO"],
)
def test_a_wrong_layout_would_disagree_with_opencv(generated, corrupt):
    """The oracle has teeth: each plausible layout mistake misses by far more than the
    tolerance (so the agreement above proves the flatten order and the group layout)."""
    logits = logits_blob(generated.net)
    (cv_logits,) = opencv_forward(generated.prototxt, generated.model, generated.x, [logits])
    wrong = nf.forward(generated.net, corrupt(generated.weights, generated.net), generated.x)
    diff = float(np.abs(wrong[logits].reshape(cv_logits.shape) - cv_logits).max())
    assert diff > 100 * tolerance(cv_logits), f"{corrupt.__name__}: only {diff:.3g} off"


# --- a hand-built net for the corners the models above do not reach ----------------------

#: Non-square input and kernels, unequal strides and pads, PReLU, a dilated grouped conv,
#: LRN with a large alpha, padded AVE pooling (Caffe's divisor counts padded cells) whose
#: last window is clipped (pool3 on width 5), and an InnerProduct on a non-square 4x3 blob.
#: LRN keeps the default k = 1: OpenCV 4.x's Caffe importer ignores `lrn_param.k`.
CORNERS_PROTOTXT = """\
name: "corners"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 4 dim: 37 dim: 14 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_h: 3 kernel_w: 5 stride_h: 2 stride_w: 1
                            pad_h: 1 pad_w: 2 } }
layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool3" type: "Pooling" bottom: "pool2" top: "pool3"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool3" top: "ip1"
        inner_product_param { num_output: 7 } }
layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }
"""


@pytest.fixture(scope="module")
def corners(tmp_path_factory):
    """The net above with seeded random blobs, as a .caffemodel, and weightconv's .npy."""
    directory = tmp_path_factory.mktemp("corners")
    prototxt = directory / "corners.prototxt"
    prototxt.write_text(CORNERS_PROTOTXT)
    net = nf.load_net(prototxt)
    shapes = infer_blob_shapes(net)
    message = caffe_pb2.NetParameter()
    text_format.Parse(CORNERS_PROTOTXT, message)
    rng = np.random.default_rng(7)

    def add_blob(layer, values):
        blob = layer.blobs.add()
        blob.shape.dim.extend(values.shape)
        blob.data.extend(values.astype(np.float32).ravel())

    for layer in message.layer:
        bottom = shapes[layer.bottom[0]] if layer.bottom else None
        if layer.type == "Convolution":
            p = layer.convolution_param
            kernel = (p.kernel_h, p.kernel_w) if p.kernel_h else (p.kernel_size[0],) * 2
            add_blob(
                layer, rng.standard_normal((p.num_output, bottom[1] // max(p.group, 1), *kernel))
            )
            add_blob(layer, rng.standard_normal(p.num_output))
        elif layer.type == "PReLU":
            add_blob(layer, rng.uniform(0.05, 0.5, bottom[1]))
        elif layer.type == "InnerProduct":
            outputs = layer.inner_product_param.num_output
            add_blob(layer, 0.1 * rng.standard_normal((outputs, int(np.prod(bottom[1:])))))
            add_blob(layer, rng.standard_normal(outputs))
    model = directory / "corners.caffemodel"
    model.write_bytes(message.SerializeToString())
    weights = convert(model, prototxt, directory)
    x = images(net, (-3.0, 3.0), seed=7)
    return prototxt, model, net, weights, x


def test_corner_cases_agree_with_opencv(corners):
    prototxt, model, net, weights, x = corners
    assert infer_blob_shapes(net)["pool3"][2:] == (4, 3)
    check_against_opencv(prototxt, model, weights, net, x)
    # Blob by blob too (the ones OpenCV does not fuse away), to localise a failure.
    ours = nf.forward(net, weights, x)
    names = ["pool1", "norm1", "pool2", "pool3"]
    for name, theirs in zip(names, opencv_forward(prototxt, model, x, names), strict=True):
        mine = ours[name]
        theirs = theirs.reshape(mine.shape[0], mine.shape[3], *mine.shape[1:3])
        np.testing.assert_allclose(
            mine, theirs.transpose(0, 2, 3, 1), rtol=0, atol=tolerance(theirs), err_msg=name
        )


def test_non_square_flatten_in_w_h_c_order_would_disagree(corners):
    prototxt, model, net, weights, x = corners
    kernel, bias = weights["ip1"]
    h, w, c = 4, 3, 8
    whc = kernel.reshape(h, w, c, -1).transpose(1, 0, 2, 3).reshape(kernel.shape)
    (cv_logits,) = opencv_forward(prototxt, model, x, ["ip1"])
    wrong = nf.forward(net, {**weights, "ip1": [whc, bias]}, x)["ip1"]
    assert np.abs(wrong - cv_logits).max() > 100 * tolerance(cv_logits)
