"""LRN parameters, Caffe <-> TensorFlow, and Caffe's LRN itself.

The translation is checked three ways: against the published BVLC AlexNet numbers, against
TensorFlow's own LRN op (in a subprocess) fed the translated parameters, and against OpenCV's
Caffe importer running a one-layer LRN net (k = 1 only: OpenCV ignores k).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import weightconv
from weightconv.lrn import (
    CaffeLRN,
    TfLRN,
    caffe_lrn,
    caffe_to_tf,
    suspicious,
    tf_to_caffe,
    validate_caffe,
)


def test_bvlc_alexnet_numbers():
    # BVLC AlexNet deploy: local_size 5, alpha 1e-4, beta 0.75 (k defaults to 1); the TF
    # equivalent caffe-tensorflow emits is depth_radius 2, alpha 2e-5, bias 1.
    tf = caffe_to_tf(CaffeLRN(local_size=5, alpha=1e-4, beta=0.75))
    assert tf.depth_radius == 2 and tf.alpha == pytest.approx(2e-5) and tf.bias == 1.0
    assert tf.beta == 0.75


@pytest.mark.parametrize("size", [1, 3, 5, 7, 11])
def test_round_trip(size):
    caffe = CaffeLRN(local_size=size, alpha=3e-4, beta=0.5, k=2.0)
    back = tf_to_caffe(caffe_to_tf(caffe))
    assert back.local_size == size and back.alpha == pytest.approx(3e-4)
    assert (back.beta, back.k) == (0.5, 2.0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (CaffeLRN(local_size=4), "local_size must be a positive odd number"),
        (CaffeLRN(local_size=0), "local_size must be a positive odd number"),
        (CaffeLRN(norm_region="within_channel"), "WITHIN_CHANNEL"),
        (CaffeLRN(k=0.0), "k must be greater than 0"),
        (CaffeLRN(alpha=-1.0), "alpha must be 0 or more"),
        (CaffeLRN(beta=float("nan")), "beta must be 0 or more"),
    ],
)
def test_invalid_parameters(params, message):
    with pytest.raises(weightconv.UsageError, match=message):
        validate_caffe(params, "norm1")


def test_warnings_for_copied_paper_constants():
    source = CaffeLRN(local_size=5, alpha=1e-4, beta=0.75, k=1.0)
    assert suspicious(caffe_to_tf(source), source) == []
    paper = TfLRN(depth_radius=2, alpha=1e-4, beta=0.75, bias=2.0)
    warnings = " ".join(suspicious(paper, source))
    assert "divided by local_size" in warnings and "bias 2" in warnings
    assert "paper" in warnings
    assert suspicious(paper)  # even with no source to compare with


def _literal_caffe_lrn(x: np.ndarray, n: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """Caffe's formula written out with loops (NCHW), for small inputs."""
    out = np.empty_like(x, dtype=np.float64)
    channels = x.shape[1]
    for b, c, h, w in np.ndindex(x.shape):
        lo, hi = max(0, c - (n - 1) // 2), min(channels, c + (n - 1) // 2 + 1)
        total = sum(float(x[b, j, h, w]) ** 2 for j in range(lo, hi))
        out[b, c, h, w] = x[b, c, h, w] / (k + alpha / n * total) ** beta
    return out


@pytest.mark.parametrize(("n", "k"), [(1, 1.0), (3, 1.0), (5, 2.0), (7, 0.5)])
def test_reference_implementation_is_the_formula(n, k):
    x = np.random.default_rng(n).standard_normal((2, 9, 3, 4)) * 20
    expected = _literal_caffe_lrn(x, n, 1e-2, 0.75, k)
    got = caffe_lrn(x, CaffeLRN(local_size=n, alpha=1e-2, beta=0.75, k=k))
    assert np.allclose(got, expected, rtol=1e-12, atol=0)


TF_SCRIPT = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
try:
    import tensorflow as tf
except ImportError as exc:
    print(json.dumps({"skip": str(exc)})); sys.exit(0)
cases = json.loads(sys.argv[1])
x = np.load(sys.argv[2])
out = {}
for i, p in enumerate(cases):
    y = tf.nn.local_response_normalization(x, depth_radius=p["depth_radius"], bias=p["bias"],
                                           alpha=p["alpha"], beta=p["beta"])
    np.save(sys.argv[2] + f".{i}.npy", y.numpy())
print(json.dumps({"ok": True}))
"""


@pytest.mark.oracle
def test_tensorflow_op_with_translated_parameters_matches_caffe(tmp_path):
    sources = [
        CaffeLRN(5, 1e-4, 0.75, 1.0),
        CaffeLRN(5, 1e-4, 0.75, 2.0),
        CaffeLRN(3, 5e-5, 0.75, 1.0),
        CaffeLRN(7, 1e-2, 0.5, 1.5),
    ]
    x = (np.random.default_rng(0).standard_normal((2, 5, 6, 12)) * 40).astype(np.float32)
    np.save(tmp_path / "x.npy", x)  # NHWC, as TensorFlow wants it
    cases = [caffe_to_tf(s).as_dict() for s in sources]
    result = subprocess.run(
        [sys.executable, "-c", TF_SCRIPT, json.dumps(cases), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(f"tensorflow not importable: {report['skip']}")
    for i, source in enumerate(sources):
        tf_out = np.load(tmp_path / f"x.npy.{i}.npy")
        expected = caffe_lrn(x, source, channel_axis=3)
        assert np.allclose(tf_out, expected, rtol=2e-5, atol=1e-6), source
        # and the untranslated parameters are visibly wrong
        wrong = caffe_lrn(
            x,
            CaffeLRN(source.local_size, source.alpha * source.local_size, source.beta, source.k),
            channel_axis=3,
        )
        assert not np.allclose(tf_out, wrong, rtol=1e-3)


@pytest.mark.oracle
@pytest.mark.parametrize(("n", "alpha", "beta"), [(5, 1e-4, 0.75), (3, 5e-3, 0.75)])
def test_opencv_caffe_importer_agrees(tmp_path, n, alpha, beta):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (test extra) absent")
    prototxt = f"""
name: "lrn"
input: "data"
input_shape {{ dim: 1 dim: 8 dim: 5 dim: 5 }}
layer {{ name: "norm" type: "LRN" bottom: "data" top: "norm"
        lrn_param {{ local_size: {n} alpha: {alpha} beta: {beta} }} }}
"""
    (tmp_path / "lrn.prototxt").write_text(prototxt)
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "lrn.prototxt"))
    x = (np.random.default_rng(n).standard_normal((1, 8, 5, 5)) * 30).astype(np.float32)
    net.setInput(x)
    got = net.forward()
    expected = caffe_lrn(x, CaffeLRN(local_size=n, alpha=alpha, beta=beta))
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_lrn_verb(tmp_path, capsys):
    from weightconv import cli
    from weightconv.testing.synthetic import build

    (tmp_path / "deploy.prototxt").write_text(build("alexnet", width=0.125).deploy_prototxt)
    assert cli.main(["lrn", str(tmp_path / "deploy.prototxt"), "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert [row["layer"] for row in layers] == ["norm1", "norm2"]
    assert layers[0]["tensorflow"]["depth_radius"] == 2
    assert layers[0]["tensorflow"]["alpha"] == pytest.approx(layers[0]["caffe"]["alpha"] / 5)
    assert cli.main(["lrn", "--depth-radius", "2", "--alpha", "2e-5", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["layers"][0]
    assert row["caffe"]["local_size"] == 5 and row["caffe"]["alpha"] == pytest.approx(1e-4)
    assert cli.main(["lrn", "--local-size", "4", "--alpha", "1"]) == 2
    assert "positive odd number" in capsys.readouterr().err


@pytest.mark.corpus
def test_within_channel_lrn_of_a_real_model_is_reported(capsys):
    from weightconv import cli

    from .conftest import corpus_file

    model = corpus_file("caffe/cifar10_v1/cifar10_full_iter_60000.caffemodel")
    assert cli.main(["lrn", str(model), "--json"]) == 2
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert [row["layer"] for row in layers] == ["norm1", "norm2"]
    assert all("WITHIN_CHANNEL" in row["error"] for row in layers)
