"""The `weightconv` command on generated models: outputs, exit codes, JSON, refusals."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from weightconv.cli import main
from weightconv.testing import synthetic


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name, options in {
        "lenet": {},
        "alexnet": {"width": 0.125},
        "caffenet": {"width": 0.125},
    }.items():
        net = synthetic.build(name, seed=7, **options)
        for encoding in ("v2", "v1"):
            model = folder / f"{name}_{encoding}.caffemodel"
            net.write_caffemodel(model, encoding=encoding)
            paths[f"{name}_{encoding}"] = model
        prototxt = folder / f"{name}.prototxt"
        prototxt.write_text(net.deploy_prototxt)
        paths[f"{name}_prototxt"] = prototxt
    return paths


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def load_npy(path: Path) -> dict:
    return np.load(path, allow_pickle=True, encoding="latin1").item()


@pytest.mark.parametrize("name", ["lenet", "alexnet", "caffenet"])
def test_v1_and_v2_encodings_give_identical_npy(capsys, tmp_path, models, name):
    for encoding in ("v1", "v2"):
        code, _, err = run(
            capsys,
            "caffe2npy",
            models[f"{name}_{encoding}"],
            "-o",
            tmp_path / f"{encoding}.npy",
            "--prototxt",
            models[f"{name}_prototxt"],
        )
        assert code == 0, err
    v1, v2 = load_npy(tmp_path / "v1.npy"), load_npy(tmp_path / "v2.npy")
    assert list(v1) == list(v2)
    for layer in v1:
        for a, b in zip(v1[layer], v2[layer], strict=True):
            np.testing.assert_array_equal(a, b)
    assert (tmp_path / "v1.npy").read_bytes() == (tmp_path / "v2.npy").read_bytes()


def test_caffe2npy_json_summary_lists_transforms(capsys, tmp_path, models):
    out = tmp_path / "alexnet.npy"
    code, stdout, _ = run(
        capsys,
        "caffe2npy",
        models["alexnet_v2"],
        "--prototxt",
        models["alexnet_prototxt"],
        "-o",
        out,
        "--json",
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["ok"] and summary["layers"] == 8 and summary["tensors"] == 16
    net = synthetic.build("alexnet", width=0.125, seed=7)
    assert summary["parameters"] == net.parameter_count
    assert summary["bytes"] == out.stat().st_size
    steps = {item["step"]: item["layers"] for item in summary["transforms"]}
    assert steps["conv kernel OIHW -> HWIO"] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert any(
        step.startswith("flatten order C,H,W -> H,W,C") and layers == ["fc6"]
        for step, layers in steps.items()
    )
    weights = dict(net.weights)
    w, b = load_npy(out)["conv2"]
    np.testing.assert_array_equal(w, weights["conv2"][0].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(b, weights["conv2"][1])


def test_existing_output_is_refused_without_force(capsys, tmp_path, models):
    out = tmp_path / "out.npy"
    out.write_bytes(b"keep me")
    code, _, err = run(capsys, "caffe2npy", models["lenet_v2"], "-o", out)
    assert code == 2 and "--force" in err and out.read_bytes() == b"keep me"
    code, _, _ = run(capsys, "caffe2npy", models["lenet_v2"], "-o", out, "--force", "-q")
    assert code == 0 and set(load_npy(out)) == {"conv1", "conv2", "ip1", "ip2"}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_bad_caffemodel_exits_2_with_one_line_and_no_output(capsys, tmp_path, models, damage):
    original = models["lenet_v2"].read_bytes()
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(
        {"truncate": original[: len(original) // 2], "garbage": os.urandom(4096), "empty": b""}[
            damage
        ]
    )
    before = bad.read_bytes()
    out = tmp_path / "out.npy"
    code, _, err = run(capsys, "caffe2npy", bad, "-o", out)
    assert code == 2
    assert "bad.caffemodel" in _one_error_line(err)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.caffemodel"]
    assert bad.read_bytes() == before


def test_prototxt_mismatch_exits_2_naming_the_layer(capsys, tmp_path, models):
    code, _, err = run(
        capsys,
        "caffe2npy",
        models["lenet_v2"],
        "--prototxt",
        models["alexnet_prototxt"],
        "-o",
        tmp_path / "x.npy",
    )
    assert code == 2
    line = _one_error_line(err)
    assert "do not match" in line or "mismatch" in line
    assert not (tmp_path / "x.npy").exists()


def test_malicious_npy_is_refused_and_runs_nothing(capsys, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = tmp_path / "evil.npy"
    with open(payload, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|O", "fortran_order": False, "shape": ()}
        )
        pickle.dump({"conv1": [Exploit()]}, handle, protocol=2)
    code, _, err = run(capsys, "inspect", payload)
    assert code == 2 and "system" in _one_error_line(err)
    code, _, _ = run(capsys, "convert", payload, tmp_path / "out.npy")
    assert code == 2 and not marker.exists() and not (tmp_path / "out.npy").exists()


def test_inspect_json_and_tensor_statistics(capsys, models):
    code, stdout, _ = run(capsys, "inspect", models["lenet_v2"], "--json")
    report = json.loads(stdout)
    assert code == 0 and report["input"]["format"] == "caffemodel" and report["layout"] == "caffe"
    rows = {row["name"]: row for row in report["tensors"]}
    assert rows["conv1/weights"]["shape"] == [20, 1, 5, 5]
    assert report["totals"]["parameters"] == 431_080
    expected = dict(synthetic.build("lenet", seed=7).weights)["ip2"][1]
    code, stdout, _ = run(
        capsys, "inspect", models["lenet_v2"], "--tensor", "ip2/biases", "--json", "--values"
    )
    tensor = json.loads(stdout)["tensor"]
    assert tensor["shape"] == [10] and tensor["values"] == expected.tolist()
    assert tensor["min"] == pytest.approx(float(expected.min()))
    assert tensor["mean"] == pytest.approx(float(expected.astype(np.float64).mean()))
    code, _, err = run(capsys, "inspect", models["lenet_v2"], "--tensor", "conv1")
    assert code == 2 and "conv1/weights" in err


def test_inspect_canonical_shows_tensorflow_layout(capsys, models):
    code, stdout, _ = run(
        capsys,
        "inspect",
        models["alexnet_v2"],
        "--prototxt",
        models["alexnet_prototxt"],
        "--canonical",
        "--json",
    )
    rows = {row["name"]: row["shape"] for row in json.loads(stdout)["tensors"]}
    assert code == 0 and rows["conv2/weights"] == [5, 5, 6, 32]
    assert rows["fc6/weights"] == [32 * 6 * 6, 512]


def test_json_errors_are_machine_readable(capsys, tmp_path):
    missing = tmp_path / "missing.caffemodel"
    code, stdout, _ = run(capsys, "inspect", missing, "--json")
    assert code == 2 and json.loads(stdout) == {
        "schema_version": 1,
        "verb": "inspect",
        "ok": False,
        "exit_code": 2,
        "error": f"{missing}: no such file",
    }


def test_formats_lists_readers_and_writers(capsys):
    code, stdout, _ = run(capsys, "formats", "--json")
    table = {row["name"]: row for row in json.loads(stdout)["formats"]}
    assert code == 0 and table["npy"]["write"] and table["caffemodel"]["read"]


def test_demo_builds_and_converts(capsys, tmp_path):
    code, stdout, _ = run(capsys, "demo", "--dir", tmp_path, "--width", "0.125", "--no-verify")
    assert code == 0 and "fc6" in stdout
    assert set(load_npy(tmp_path / "alexnet.npy")) == {
        "conv1",
        "conv2",
        "conv3",
        "conv4",
        "conv5",
        "fc6",
        "fc7",
        "fc8",
    }
    assert (tmp_path / "alexnet.ckpt.index").exists()
    assert (tmp_path / "alexnet.weights.h5").exists()


@pytest.mark.oracle
def test_demo_verifies_every_output_against_the_caffemodel(capsys, tmp_path):
    pytest.importorskip("cv2", reason="opencv-python-headless (test extra) absent")
    code, stdout, _ = run(capsys, "demo", "--dir", tmp_path, "--width", "0.125", "--json")
    report = json.loads(stdout)
    assert code == 0 and report["ok"]
    assert [row["step"] for row in report["verified"]] == ["caffe2npy", "npy2ckpt", "ckpt2h5"]
    for row in report["verified"]:
        assert row["summary"]["top1_agree"] == row["summary"]["images"] == 8
        assert row["summary"]["max_abs_prob_diff"] < 1e-4
    graph = report["graph"]  # the SqueezeNet-shaped graph model, NumPy engine
    assert graph["passed"] and graph["engine"] == "numpy"
    assert [blob["blob"] for blob in graph["blobs"]] == ["pool10", "prob"]
    assert all(blob["passed"] for blob in graph["blobs"])


@pytest.mark.oracle
def test_verify_and_reference_verbs(capsys, tmp_path):
    pytest.importorskip("cv2", reason="opencv-python-headless (test extra) absent")
    code, _, _ = run(capsys, "demo", "--dir", tmp_path, "--width", "0.125", "--no-verify")
    assert code == 0
    model, prototxt = tmp_path / "alexnet.caffemodel", tmp_path / "alexnet.prototxt"
    code, stdout, _ = run(
        capsys,
        "verify",
        tmp_path / "alexnet.ckpt",
        "--against",
        model,
        "--prototxt",
        prototxt,
        "--count",
        "3",
        "--json",
    )
    assert code == 0 and json.loads(stdout)["summary"]["top1_agree"] == 3
    code, _, _ = run(
        capsys,
        "reference",
        model,
        "--prototxt",
        prototxt,
        "-o",
        tmp_path / "card.json",
        "--count",
        "3",
    )
    assert code == 0
    code, stdout, _ = run(
        capsys,
        "verify",
        tmp_path / "alexnet.weights.h5",
        "--card",
        tmp_path / "card.json",
        "--prototxt",
        prototxt,
    )
    assert code == 0 and "PASS" in stdout
    # weights converted with the wrong channel order fail, exit 1, naming the disagreement
    code, _, _ = run(
        capsys,
        "npy2ckpt",
        tmp_path / "alexnet.npy",
        "-o",
        tmp_path / "rgb.ckpt",
        "--input-channels",
        "rgb",
        "--source-channels",
        "bgr",
        "-q",
    )
    assert code == 0
    code, stdout, _ = run(
        capsys,
        "verify",
        tmp_path / "rgb.ckpt",
        "--against",
        model,
        "--prototxt",
        prototxt,
        "--count",
        "3",
    )
    assert code == 1 and "FAIL" in stdout
    code, _, err = run(capsys, "verify", tmp_path / "rgb.ckpt", "--prototxt", prototxt)
    assert code == 2 and "exactly one reference" in err


def test_module_entry_point_and_usage_errors(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "weightconv", "formats"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "caffemodel" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "weightconv", "caffe2npy"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "usage" in result.stderr


def test_a_mistyped_verb_is_told_the_verbs_there_are(capsys):
    code, _, err = run(capsys, "inpsect", "model.ckpt")
    assert code == 2
    assert "invalid choice: 'inpsect'" in err
    assert "'inspect'" in err and "'caffe2npy'" in err and "'verify'" in err


def test_only_the_verb_being_run_is_built():
    from weightconv.cli import build_parser

    subparsers = next(a for a in build_parser("inspect")._actions if a.dest == "verb")
    assert list(subparsers.choices) == ["inspect"]
    everything = next(a for a in build_parser(None)._actions if a.dest == "verb")
    assert {"inspect", "caffe2npy", "convert", "verify"} <= set(everything.choices)


@pytest.mark.parametrize(
    "argv",
    [
        ["npy2ckpt", "m.npy", "-o", "a.ckpt", "--output", "b.ckpt"],
        ["onnx2npy", "m.onnx", "--dense-input", "fc6=1,2,2", "--dense-input", "fc7=4"],
        ["inspect", "m.npy", "--from", "npy", "--from", "ckpt"],
        ["caffe2npy", "m.caffemodel", "--names", "tf1", "--names", "keep"],
    ],
    ids=["output", "format option", "input format", "mapping option"],
)
def test_a_flag_given_twice_is_refused_not_overridden(capsys, argv):
    """argparse keeps the last of a flag given twice and drops the first without a word."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "given twice; it takes one value" in err and err.count("\n") <= 2
    several = "--dense-input" in argv
    assert ("several joined by commas" in err) == several


def test_flags_that_add_up_may_be_given_again(tmp_path):
    one = [np.ones(2, np.float32)]
    np.save(tmp_path / "m.npy", {"a": one, "b": one, "c": one}, allow_pickle=True)
    out = tmp_path / "o.npy"
    argv = ["convert", str(tmp_path / "m.npy"), str(out), "--skip", "a", "--skip", "c", "-q"]
    assert main(argv) == 0
    assert list(np.load(out, allow_pickle=True).item()) == ["b"]
