"""Full-size AlexNet and CaffeNet weights (generated, seeded) on BVLC's own deploy prototxts:
every conversion verifies against the source caffemodel run by OpenCV's Caffe importer."""

from __future__ import annotations

import pytest

from weightconv import cli
from weightconv.testing.synthetic import build

from .conftest import corpus_file

pytestmark = [pytest.mark.oracle, pytest.mark.corpus, pytest.mark.slow]


@pytest.mark.parametrize(
    ("variant", "prototxt"),
    [
        ("alexnet", "prototxt/bvlc_alexnet.deploy.prototxt"),
        ("caffenet", "prototxt/bvlc_reference_caffenet.deploy.prototxt"),
    ],
)
def test_conversions_of_bvlc_shaped_models_verify(tmp_path, variant, prototxt):
    pytest.importorskip("cv2", reason="opencv-python-headless (test extra) absent")
    from weightconv.verify import verify

    deploy = corpus_file(prototxt)
    model = tmp_path / f"{variant}.caffemodel"
    build(variant, width=1.0, seed=3, scale=0.7).write_caffemodel(model)
    outputs = {
        "npy": tmp_path / "w.npy",
        "ckpt": tmp_path / "w.ckpt",
        "h5": tmp_path / "w.weights.h5",
    }
    assert (
        cli.main(
            ["caffe2npy", str(model), "--prototxt", str(deploy), "-o", str(outputs["npy"]), "-q"]
        )
        == 0
    )
    assert cli.main(["npy2ckpt", str(outputs["npy"]), "-o", str(outputs["ckpt"]), "-q"]) == 0
    assert cli.main(["ckpt2h5", str(outputs["ckpt"]), "-o", str(outputs["h5"]), "-q"]) == 0
    for kind, path in outputs.items():
        result = verify(path, against=model, prototxt=deploy, count=4)
        assert result.passed, (kind, result.headline())
        assert result.summary["top1_agree"] == result.summary["topk_agree"] == 4
        assert result.summary["max_abs_prob_diff"] < 1e-4
