"""The real trained LeNet, converted to every format, run by the graph built from its prototxt,
reproduces OpenCV's Caffe importer on digit-like inputs."""

from __future__ import annotations

import numpy as np
import pytest

from weightconv import cli

from .conftest import corpus_file

pytestmark = [pytest.mark.oracle, pytest.mark.corpus]


def _digit_like(count: int, seed: int = 0) -> np.ndarray:
    """White strokes on black, 28x28, in [0, 1] (what LeNet's training scaled MNIST to)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28, 1), np.float32)
    yy, xx = np.mgrid[0:28, 0:28]
    for image in images:
        for _ in range(int(rng.integers(2, 4))):
            (y0, x0), (y1, x1) = rng.integers(4, 24, size=(2, 2))
            for t in np.linspace(0.0, 1.0, 40):
                cy, cx = y0 + t * (y1 - y0), x0 + t * (x1 - x0)
                image[..., 0] = np.maximum(
                    image[..., 0], np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0)
                )
    return images


@pytest.mark.parametrize("target", ["npy", "ckpt", "h5"])
def test_lenet_in_every_format_matches_opencv(tmp_path, target):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (test extra) absent")
    from weightconv.nets.alexnet import AlexNet

    model = corpus_file("caffe/lenet/lenet_iter_10000.caffemodel")
    prototxt = corpus_file("caffe/lenet/lenet.prototxt")
    suffix = {"npy": ".npy", "ckpt": ".ckpt", "h5": ".weights.h5"}[target]
    output = tmp_path / f"lenet{suffix}"
    assert (
        cli.main(
            [f"caffe2{target}", str(model), "--prototxt", str(prototxt), "-o", str(output), "-q"]
        )
        == 0
    )
    images = _digit_like(6)
    ours = AlexNet.from_weights(output, prototxt=prototxt).logits(images)
    reference = cv2.dnn.readNetFromCaffe(str(prototxt), str(model))
    reference.setInput(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    expected = reference.forward("ip2")
    assert ours.shape == expected.shape == (6, 10)
    scale = float(np.abs(expected).max())
    assert np.abs(ours - expected).max() < 1e-4 * scale
    assert (ours.argmax(axis=1) == expected.argmax(axis=1)).all()
