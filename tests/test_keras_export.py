"""`.keras` exports: loaded by plain Keras in a fresh process, they match OpenCV; the verbs.

The whole nets of `tests.keras_graph_cases` are exported by the engine's child process and
loaded in another with only ``import keras`` and ``import weightconv.nets.keras_layers``
(our engine never imported there); their outputs must match OpenCV's run of the source
caffemodel. Then `caffe2keras` and `export-keras` from several formats, and `verify` of a
`.keras` model and with ``--engine keras`` (one child process for all the command lines),
and the refusals that need no Keras (an existing output, a wrong suffix, a non-Caffe input).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import weightconv
from weightconv import cli

from .graph_oracle import Case, prototxt
from .keras_graph_cases import (
    EXPORTED,
    GOOGLENET,
    MTCNN,
    RELATIVE,
    keras_results,
    loaded_blobs,
    relative_difference,
)
from .keras_graph_oracle import run_oracle
from .test_graph_nets import DECONV_CROP, MTCNN_STYLE, RESNET, SQUEEZENET

pytest.importorskip("cv2", reason="OpenCV is the reference; pip install opencv-python-headless")
pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return keras_results(tmp_path_factory)


@pytest.mark.parametrize("name", EXPORTED)
def test_exported_keras_models_load_in_plain_keras_and_match_opencv(results, name):
    if name not in results.nets:
        from .conftest import corpus_file

        corpus_file(GOOGLENET if name == "googlenet" else MTCNN[0])
    net = results.nets[name]
    assert "error" not in results.engine[name], results.engine[name]
    assert results.load[name]["engine_imported"] is False
    ours = loaded_blobs(results, name)
    for blob in net.graph.outputs:
        diff = relative_difference(ours[blob], net.expected[blob])
        assert diff < RELATIVE, f"{name}: {blob} differs by {diff:.3g} of its scale"


# --- the verbs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("keras_cli")
    resnet = Case(root / "resnet", prototxt(RESNET, {"data": (1, 3, 12, 12)}))
    squeeze = Case(root / "squeeze", prototxt(SQUEEZENET, {"data": (1, 3, 33, 33)}))
    deconv = Case(root / "deconv", prototxt(DECONV_CROP, {"data": (1, 4, 16, 16)}))
    mtcnn = Case(root / "mtcnn", prototxt(MTCNN_STYLE, {"data": (1, 3, 14, 14)}))
    pt, ckpt = root / "resnet.pt", root / "resnet.ckpt"
    weightconv.convert(resnet.model, pt, prototxt=resnet.prototxt)
    weightconv.convert(resnet.npy, ckpt)
    broken = root / "deconv-broken.npy"  # the deconvolution kernel left (kh, kw, in, out)
    weights = weightconv.load(deconv.npy)
    layers = [
        dataclasses.replace(
            layer, tensors={"weights": np.asarray(layer.tensors["weights"]).transpose(0, 1, 3, 2)}
        )
        if layer.name == "up"
        else layer
        for layer in weights.layers
    ]
    weightconv.save(dataclasses.replace(weights, layers=layers), broken)
    out = root / "out"

    def against(case):
        return ("--against", case.model, "--prototxt", case.prototxt)

    def words(*parts):
        flat = []
        for part in parts:
            flat.extend(words(*part) if isinstance(part, tuple) else [str(part)])
        return flat

    jobs = {
        "caffe2keras": words(
            ("caffe2keras", resnet.model, "--prototxt", resnet.prototxt),
            ("-o", out / "resnet.keras", "--json"),
        ),
        "export-npy": words(
            "export-keras", squeeze.npy, "--prototxt", squeeze.prototxt, "-o", out / "sq.keras"
        ),
        "export-pt": words(
            "export-keras", pt, "--prototxt", resnet.prototxt, "-o", out / "pt.keras", "--json"
        ),
        "export-ckpt": words(
            "export-keras", ckpt, "--prototxt", resnet.prototxt, "-o", out / "ckpt.keras", "--json"
        ),
        "verify-keras-file": words("verify", out / "resnet.keras", against(resnet), "--json"),
        "verify-npy-export": words("verify", out / "sq.keras", against(squeeze)),
        "verify-pt-export": words("verify", out / "pt.keras", against(resnet)),
        "verify-ckpt-export": words("verify", out / "ckpt.keras", against(resnet)),
        "verify-engine-keras": words(
            "verify", deconv.npy, against(deconv), "--engine", "keras", "--count", 2, "--json"
        ),
        "verify-engine-tf-outputs": words(
            ("verify", mtcnn.npy, against(mtcnn), "--engine", "tf"),
            ("--outputs", "conv4-1,prob1", "--count", 2, "--json"),
        ),
        "verify-broken-traced": words(
            "verify", broken, against(deconv), "--engine", "keras", "--trace", "--json"
        ),
        "verify-wrong-prototxt": words("verify", out / "resnet.keras", against(squeeze)),
        "export-broken": words(
            "export-keras", broken, "--prototxt", deconv.prototxt, "-o", out / "broken.keras"
        ),
        "verify-broken-model-traced": words(
            "verify", out / "broken.keras", against(deconv), "--trace", "--json"
        ),
    }
    runs = run_oracle("cli", [{"id": k, "argv": v} for k, v in jobs.items()], root)
    return runs, {"resnet": resnet, "out": out}


def _ok(runs, key, code=0):
    entry = runs[key]
    assert "error" not in entry, entry
    assert entry["rc"] == code, f"{key}: exit {entry['rc']}\n{entry['stdout']}\n{entry['stderr']}"
    return entry


def test_caffe2keras_writes_a_model_and_reports_it(cli_runs):
    runs, _ = cli_runs
    document = json.loads(_ok(runs, "caffe2keras")["stdout"])
    assert document["ok"] is True and document["verb"] == "caffe2keras"
    assert document["outputs"] == ["prob"] and document["inputs"] == {"data": [None, 12, 12, 3]}
    assert "CaffeAffine" in document["custom_layers"]
    assert document["load_import"] == "import weightconv.nets.keras_layers"
    for key in ("export-pt", "export-ckpt"):
        assert json.loads(_ok(runs, key)["stdout"])["ok"] is True
    assert "import weightconv.nets.keras_layers" in _ok(runs, "export-npy")["stdout"]


def test_verify_runs_a_keras_model_against_opencv(cli_runs):
    runs, _ = cli_runs
    document = json.loads(_ok(runs, "verify-keras-file")["stdout"])
    assert document["blobs"] and all(blob["passed"] for blob in document["blobs"])
    assert "loaded by Keras" in document["subject"]
    for key in ("verify-npy-export", "verify-pt-export", "verify-ckpt-export"):
        assert "PASS" in _ok(runs, key)["stdout"].splitlines()[-1]


def test_verify_with_the_keras_engine_passes_and_fails_as_it_should(cli_runs):
    runs, _ = cli_runs
    document = json.loads(_ok(runs, "verify-engine-keras")["stdout"])
    assert "in the Keras engine" in document["subject"]
    assert [blob["blob"] for blob in document["blobs"]] == ["score"]
    outputs = json.loads(_ok(runs, "verify-engine-tf-outputs")["stdout"])
    assert [blob["blob"] for blob in outputs["blobs"]] == ["conv4-1", "prob1"]
    broken = json.loads(_ok(runs, "verify-broken-traced", code=1)["stdout"])
    assert broken["trace"]["first_divergent"]["blob"] == "up"
    assert broken["trace"]["last_agreeing"]["blob"] == "conv2"


def test_a_wrong_keras_model_fails_and_is_traced_to_its_layer(cli_runs):
    runs, _ = cli_runs
    _ok(runs, "export-broken")
    broken = json.loads(_ok(runs, "verify-broken-model-traced", code=1)["stdout"])
    assert "loaded by Keras" in broken["subject"]
    assert broken["trace"]["first_divergent"]["blob"] == "up"
    assert broken["trace"]["last_agreeing"]["blob"] == "conv2"


def test_a_keras_model_checked_against_another_net_is_refused(cli_runs):
    runs, _ = cli_runs
    entry = _ok(runs, "verify-wrong-prototxt", code=2)
    assert "was not built from this graph" in entry["stderr"]


def test_export_refusals_need_no_keras(cli_runs, tmp_path, capsys):
    import sys

    _, made = cli_runs
    keras_before = "keras" in sys.modules
    resnet, existing = made["resnet"], made["out"] / "resnet.keras"
    base = ["caffe2keras", str(resnet.model), "--prototxt", str(resnet.prototxt)]
    before = existing.read_bytes()
    assert cli.main([*base, "-o", str(existing)]) == 2
    assert "exists" in capsys.readouterr().err and existing.read_bytes() == before
    assert cli.main([*base, "-o", str(tmp_path / "model.h5")]) == 2
    assert "NAME.keras" in capsys.readouterr().err
    assert cli.main(["caffe2keras", str(resnet.npy), "--prototxt", str(resnet.prototxt)]) == 2
    assert "use `weightconv export-keras`" in capsys.readouterr().err
    assert keras_before or "keras" not in sys.modules
