"""Real graph models from other makers verify against OpenCV in every format we write, and
the generated graph nets in every TensorFlow/Keras format: the conversion, not only the
engine, is what is proven."""

from __future__ import annotations

import subprocess
import sys

import pytest

import weightconv
from weightconv.verify import verify

from .conftest import corpus_file
from .graph_oracle import Case, prototxt
from .test_graph_nets import GRAPHS

FORMATS = [".npy", ".ckpt", ".weights.h5", ".h5", ".pt", ".safetensors", ".npz"]
#: Nets with a layer a Keras file cannot hold without its model (PReLU, Scale,
#: Deconvolution): writing one without `model=` is refused, never guessed.
NEEDS_A_KERAS_MODEL = {"mtcnn-det1", "resnet-block", "mtcnn-prelu-two-heads", "deconv-crop-dilated"}


def _convert_and_verify(source, converted, deploy, name):
    options = {}
    if converted.name.endswith(".h5") and name in NEEDS_A_KERAS_MODEL:
        with pytest.raises(weightconv.MappingError, match="pass the Keras model"):
            weightconv.convert(source, converted, prototxt=deploy)
        assert not converted.exists()
        # Given the model (exported by caffe2keras, in a child: Keras stays out of pytest),
        # the Keras file is written for it and verifies.
        model = converted.with_name("model.keras")
        argv = ["caffe2keras", str(source), "--prototxt", str(deploy), "-o", str(model)]
        done = subprocess.run([sys.executable, "-m", "weightconv", *argv], capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        options["model"] = model
    weightconv.convert(source, converted, prototxt=deploy, **options)
    result = verify(converted, against=source, prototxt=deploy, count=2)
    assert result.passed, result.report()
    assert all(check.relative < 1e-4 for check in result.blobs), result.report()


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize(
    ("model", "deploy"),
    [
        ("caffe/mtcnn/det1.caffemodel", "caffe/mtcnn/det1.prototxt"),
        ("caffe/ultralight/slim-320.caffemodel", "caffe/ultralight/slim-320.prototxt"),
    ],
    ids=["mtcnn-det1", "ultralight-slim-320"],
)
def test_real_graph_models_verify_in_every_format(request, tmp_path, model, deploy, suffix):
    source, deploy_path = corpus_file(model), corpus_file(deploy)
    name = request.node.callspec.id.split("-.")[0]
    _convert_and_verify(source, tmp_path / f"converted{suffix}", deploy_path, name)


@pytest.mark.parametrize("suffix", [".ckpt", ".weights.h5", ".pt"])
@pytest.mark.parametrize("name", list(GRAPHS))
def test_generated_graphs_verify_through_each_format(tmp_path, name, suffix):
    body, shape = GRAPHS[name]
    case = Case(tmp_path, prototxt(body, {"data": shape}))
    _convert_and_verify(case.model, tmp_path / f"converted{suffix}", case.prototxt, name)


@pytest.fixture(scope="module")
def googlenet(tmp_path_factory):
    deploy = corpus_file("prototxt/bvlc_googlenet.deploy.prototxt")
    return Case(tmp_path_factory.mktemp("googlenet"), deploy.read_text(), scale=1.0)


@pytest.mark.parametrize("suffix", [".ckpt", ".weights.h5", ".pt"])
def test_bvlc_googlenet_verifies_through_each_format(googlenet, tmp_path, suffix):
    _convert_and_verify(
        googlenet.model, tmp_path / f"converted{suffix}", googlenet.prototxt, "googlenet"
    )
