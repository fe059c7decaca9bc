"""safetensors through the `safetensors` package: it reads what we write and writes what we
read; the layout comes from ``__metadata__["format"]`` or the `layout` option, never a guess.
torch, where used, is the oracle for the PyTorch layout."""

from __future__ import annotations

import json
from collections import OrderedDict

import ml_dtypes
import numpy as np
import pytest
import safetensors
import torch
from safetensors.numpy import load_file, save_file

import weightconv
from weightconv import cli
from weightconv.errors import UsageError
from weightconv.formats import detect
from weightconv.model import CAFFE, CANONICAL, Kind

from .cli_refusal import refused
from .conftest import corpus_file


def _torch_named(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv1.weight": rng.standard_normal((4, 3, 3, 3), dtype=np.float32),
        "conv1.bias": rng.standard_normal(4, dtype=np.float32),
        "fc1.weight": rng.standard_normal((5, 36), dtype=np.float32),
        "fc1.bias": rng.standard_normal(5, dtype=np.float32),
        "fc2.weight": rng.standard_normal((2, 5)).astype(np.float16),
        "fc2.bias": np.arange(2, dtype=np.int64),
    }


def test_we_read_what_the_package_writes_in_the_pt_layout(tmp_path):
    tensors = _torch_named()
    path = tmp_path / "m.safetensors"
    save_file(tensors, path, metadata={"format": "pt", "note": "made by save_file"})
    assert detect(path).name == "safetensors"
    weights = weightconv.load(path)
    assert weights.source.detail["metadata"] == {"format": "pt", "note": "made by save_file"}
    assert weights.source.detail["layout"] == "torch"
    assert {layer.name: layer.kind for layer in weights.layers} == {
        "conv1": Kind.CONV,
        "fc1": Kind.DENSE,
        "fc2": Kind.DENSE,
    }
    assert all(layer.layout == CAFFE for layer in weights.layers)
    ours = {layer.location(role): np.asarray(t) for layer, role, t in weights.tensors()}
    assert sorted(ours) == sorted(tensors)
    for name, array in tensors.items():
        assert ours[name].dtype == array.dtype and np.array_equal(ours[name], array)


def test_a_file_that_does_not_say_its_layout_is_not_guessed(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(_torch_named(), path)
    with pytest.raises(UsageError, match=r"no format.*layout=torch.*layout=tf"):
        weightconv.load(path)
    assert weightconv.load(path, layout="torch")["conv1"].layout == CAFFE
    canonical = weightconv.load(path, layout="tf")
    assert canonical["conv1.weight"].layout == CANONICAL


def test_the_layout_option_wins_over_the_metadata_and_says_so(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"conv1/weights": np.ones((3, 3, 3, 4), np.float32)}, path, metadata={"format": "pt"})
    weights = weightconv.load(path, layout="tf")
    assert weights["conv1"].kind == Kind.CONV and weights["conv1"].layout == CANONICAL
    assert any("as asked" in note and "format pt" in note for note in weights.notes)


def test_the_package_reads_what_we_write_in_both_layouts(tmp_path):
    source = tmp_path / "m.safetensors"
    tensors = _torch_named()
    save_file(tensors, source, metadata={"format": "pt", "origin": "test"})
    weightconv.save(weightconv.load(source), tmp_path / "pt.safetensors")
    back = load_file(tmp_path / "pt.safetensors")
    assert sorted(back) == sorted(tensors)
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items())
    with safetensors.safe_open(tmp_path / "pt.safetensors", framework="np") as handle:
        assert handle.metadata() == {"format": "pt", "origin": "test"}
    weightconv.convert(
        source,
        tmp_path / "tf.safetensors",
        safetensors_layout="tf",
        read_options={"dense_inputs": {"fc1": (4, 3, 3), "fc2": (5,)}},
    )
    canonical = load_file(tmp_path / "tf.safetensors")
    assert canonical["conv1/weights"].shape == (3, 3, 3, 4)
    assert np.array_equal(canonical["conv1/weights"], tensors["conv1.weight"].transpose(2, 3, 1, 0))
    hwc = tensors["fc1.weight"].reshape(5, 4, 3, 3).transpose(0, 2, 3, 1).reshape(5, 36).T
    assert np.array_equal(canonical["fc1/weights"], hwc)
    with safetensors.safe_open(tmp_path / "tf.safetensors", framework="np") as handle:
        assert handle.metadata()["format"] == "tf"


def test_pt_to_safetensors_and_back_gives_the_same_bytes(tmp_path):
    g = torch.Generator().manual_seed(4)
    state = OrderedDict(
        [
            ("conv.weight", torch.randn(2, 3, 1, 1, generator=g).to(torch.bfloat16)),
            ("bn.weight", torch.randn(2, generator=g)),
            ("bn.bias", torch.randn(2, generator=g)),
            ("bn.running_mean", torch.randn(2, generator=g)),
            ("bn.running_var", torch.rand(2, generator=g)),
            ("bn.num_batches_tracked", torch.tensor(3)),
        ]
    )
    torch.save(state, tmp_path / "m.pt")
    weightconv.convert(tmp_path / "m.pt", tmp_path / "m.safetensors")
    with safetensors.safe_open(tmp_path / "m.safetensors", framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        for key, tensor in state.items():
            assert torch.equal(handle.get_tensor(key), tensor), key
    weightconv.convert(tmp_path / "m.safetensors", tmp_path / "back.pt")
    loaded = torch.load(tmp_path / "back.pt", weights_only=True)
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in state.items())


def test_bfloat16_saved_by_torch_reads_as_ml_dtypes_bfloat16(tmp_path):
    path = tmp_path / "m.safetensors"
    values = np.array([1.5, -2.0, 3.25], dtype=ml_dtypes.bfloat16)
    with torch.no_grad():
        torch_values = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)
    from safetensors.torch import save_file as torch_save_file

    torch_save_file({"w": torch_values}, path, metadata={"format": "pt"})
    array = np.asarray(weightconv.load(path)["w"].tensors["value"])
    assert array.dtype == values.dtype and array.tobytes() == values.tobytes()


def test_npy2safetensors_and_inspect_show_the_metadata(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.save(
        tmp_path / "m.npy",
        {"conv1": [rng.standard_normal((3, 3, 1, 2), dtype=np.float32), np.zeros(2, np.float32)]},
    )
    code = cli.main(["npy2safetensors", str(tmp_path / "m.npy"), "-q"])
    assert code == 0
    capsys.readouterr()
    written = load_file(tmp_path / "m.safetensors")
    assert sorted(written) == ["conv1/biases", "conv1/weights"]
    assert cli.main(["inspect", str(tmp_path / "m.safetensors"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["detail"]["metadata"] == {"format": "tf"}
    assert document["layout"] == CANONICAL
    assert cli.main(["inspect", str(tmp_path / "m.safetensors")]) == 0
    assert "format" in capsys.readouterr().out


def test_a_write_option_that_cannot_apply_is_refused(tmp_path):
    np.save(tmp_path / "m.npy", {"fc": [np.ones((4, 2), np.float32)]})
    with pytest.raises(UsageError, match="torch_dense_inputs applies to the torch layout"):
        weightconv.convert(
            tmp_path / "m.npy", tmp_path / "m.safetensors", torch_dense_inputs={"fc": (4,)}
        )
    assert not (tmp_path / "m.safetensors").exists()
    with pytest.raises(UsageError, match="safetensors_layout must be one of torch, tf"):
        weightconv.convert(tmp_path / "m.npy", tmp_path / "m.safetensors", safetensors_layout="pt")


@pytest.mark.corpus
@pytest.mark.parametrize(
    "relative",
    [
        "safetensors/model-saving-test/model.safetensors",
        "safetensors/mnist-tinygrad/model.safetensors",
    ],
)
def test_corpus_files_read_as_the_package_reads_them(relative):
    path = corpus_file(relative)
    expected = load_file(path)
    weights = weightconv.load(path, layout="torch")
    ours = {layer.location(role): np.asarray(t) for layer, role, t in weights.tensors()}
    assert sorted(ours) == sorted(expected)
    for name, array in expected.items():
        assert ours[name].dtype == array.dtype and np.array_equal(ours[name], array)
    with safetensors.safe_open(path, framework="np") as handle:
        assert weights.source.detail["metadata"] == (handle.metadata() or {})


@pytest.mark.parametrize("cut", [4, 20, -3], ids=["in the length", "in the header", "in the data"])
def test_a_truncated_file_is_one_line_and_exit_2(tmp_path, cut):
    whole = tmp_path / "whole.safetensors"
    save_file(_torch_named(), whole, metadata={"format": "pt"})
    path = tmp_path / "cut.safetensors"
    path.write_bytes(whole.read_bytes()[:cut])
    refused(path, ["safetensors2npy", str(path), "-o", str(tmp_path / "o.npy")], layout="torch")
    assert not (tmp_path / "o.npy").exists()
