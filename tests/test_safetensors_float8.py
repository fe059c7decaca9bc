"""float8 tensors in safetensors files. The package's NumPy side cannot give them (NumPy has no
float8), so they are views of the mapped file with the `ml_dtypes` dtype; torch, which has
float8, is the oracle for their bytes. Formats that cannot hold float8 refuse it in one line."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
import safetensors
import torch
from safetensors.torch import save_file as torch_save_file

import weightconv
from weightconv import cli
from weightconv._util.regions import file_region
from weightconv.errors import FormatError

FLOAT8 = {
    "e4m3": (torch.float8_e4m3fn, np.dtype(ml_dtypes.float8_e4m3fn)),
    "e5m2": (torch.float8_e5m2, np.dtype(ml_dtypes.float8_e5m2)),
}


def _torch_tensors() -> dict[str, torch.Tensor]:
    """A conv and a dense layer in each float8 (edge values included: the largest finite,
    subnormals, -0, inf for e5m2, NaN), float32 biases, a bfloat16 tensor beside them."""
    g = torch.Generator().manual_seed(8)
    edges = torch.tensor([448.0, -448.0, 2.0**-9, -(2.0**-7), -0.0, float("nan"), 1.0, 0.0])
    tensors = {}
    for code, (dtype, _) in FLOAT8.items():
        edge = edges.clone()
        if dtype == torch.float8_e5m2:
            edge[0], edge[2] = float("inf"), 2.0**-16
        tensors[f"{code}_conv.weight"] = torch.randn(4, 3, 2, 2, generator=g).to(dtype)
        tensors[f"{code}_conv.bias"] = torch.randn(4, generator=g)
        tensors[f"{code}_fc.weight"] = edge.reshape(2, 4).to(dtype)
        tensors[f"{code}_fc.bias"] = torch.randn(2, generator=g)
    tensors["half_fc.weight"] = torch.randn(3, 2, generator=g).to(torch.bfloat16)
    tensors["half_fc.bias"] = torch.randn(3, generator=g)
    return tensors


def _bytes(tensor: torch.Tensor) -> bytes:
    if tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16):
        return tensor.view(torch.uint8).numpy().tobytes()
    return tensor.numpy().tobytes()


@pytest.fixture
def saved_by_torch(tmp_path):
    tensors = _torch_tensors()
    path = tmp_path / "f8.safetensors"
    torch_save_file(tensors, path, metadata={"format": "pt"})
    return path, tensors


def test_float8_saved_by_torch_reads_as_torch_has_it(saved_by_torch):
    path, tensors = saved_by_torch
    loaded = weightconv.load_dict(path)
    assert sorted(loaded) == sorted(tensors)  # names as the file has them
    with weightconv.open(path) as handle:
        for key, tensor in tensors.items():
            name = key
            for array in (loaded[name], handle.get_tensor(name)):
                assert array.shape == tuple(tensor.shape), key
                assert array.tobytes() == _bytes(tensor), key
            code = key.split("_")[0]
            if code in FLOAT8 and key.endswith(".weight"):
                assert loaded[name].dtype == FLOAT8[code][1], key
    fc = loaded["e5m2_fc.weight"].astype(np.float32)
    assert fc[0, 0] == np.inf and np.isnan(fc[1, 1]) and fc[0, 2] == 2.0**-16


def test_float8_values_are_views_of_the_mapped_file(saved_by_torch):
    path, _ = saved_by_torch
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    for code in FLOAT8:
        array = weightconv.open(path).get_tensor(f"{code}_conv.weight")
        region = file_region(array)
        assert region is not None and not array.flags.writeable, code
        assert region[1] == 8 + length + header[f"{code}_conv.weight"]["data_offsets"][0]


def test_float8_written_by_us_reads_back_and_torch_reads_it(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {
        f"{code}/weights": rng.standard_normal((5, 3)).astype(dtype)
        for code, (_, dtype) in FLOAT8.items()
    }
    tensors["plain/weights"] = rng.standard_normal((2, 2), dtype=np.float32)
    path = tmp_path / "ours.safetensors"
    weightconv.save_dict(tensors, path)
    back = weightconv.load_dict(path)
    assert sorted(back) == sorted(tensors)
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype and back[name].tobytes() == array.tobytes(), name
    with safetensors.safe_open(path, framework="pt") as handle:
        for code, (dtype, _) in FLOAT8.items():
            theirs = handle.get_tensor(f"{code}/weights")
            assert theirs.dtype == dtype and _bytes(theirs) == tensors[f"{code}/weights"].tobytes()


def test_float8_to_safetensors_again_keeps_the_bytes(saved_by_torch, tmp_path):
    path, tensors = saved_by_torch
    out = tmp_path / "again.safetensors"
    report = weightconv.convert(path, out)
    assert report.transforms == []
    with safetensors.safe_open(out, framework="pt") as handle:
        assert sorted(handle.keys()) == sorted(tensors)
        for key, tensor in tensors.items():
            theirs = handle.get_tensor(key)
            assert theirs.dtype == tensor.dtype and _bytes(theirs) == _bytes(tensor), key


def test_inspect_lists_float8_tensors(saved_by_torch, capsys):
    path, tensors = saved_by_torch
    assert cli.main(["inspect", str(path), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["tensors"]}
    assert rows["e4m3_fc.weight"]["dtype"] == "float8_e4m3fn"
    assert rows["e5m2_conv.weight"]["dtype"] == "float8_e5m2"
    assert rows["e5m2_conv.weight"]["bytes"] == 48
    assert cli.main(["inspect", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if line.split()[:1] and line.split()[0] in rows]
    assert len(table) == len(tensors)
    assert len({len(line) for line in [lines[1], *table]}) == 1  # the columns stay aligned


@pytest.mark.parametrize("code", list(FLOAT8))
def test_float8_to_npy_is_refused_in_one_line(saved_by_torch, tmp_path, capsys, code):
    """The .npy writer widens only bfloat16 (to float32); NumPy cannot load float8 back."""
    path, _ = saved_by_torch
    out = tmp_path / "o.npy"
    only = [f"{code}_conv"]
    with pytest.raises(FormatError, match=rf"o\.npy: tensor {code}_conv/weights has dtype float8"):
        weightconv.convert(path, out, only=only)
    assert not out.exists()
    status = cli.main(["convert", str(path), str(out), "--only", *only, "-q"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{code}_conv/weights" in err and "o.npy" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f8.safetensors"]


def test_a_float8_tensor_changed_after_reading_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    torch_save_file(
        {"w": torch.ones(3, 4).to(torch.float8_e4m3fn)}, path, metadata={"format": "pt"}
    )
    handle = weightconv.open(path)
    torch_save_file(
        {"w": torch.ones(4, 3).to(torch.float8_e4m3fn)}, path, metadata={"format": "pt"}
    )
    with pytest.raises(FormatError, match=r"m\.safetensors: tensor 'w' changed while it was read"):
        handle.get_tensor("w")


@pytest.mark.parametrize("code", list(FLOAT8))
@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_float8_to_npz_or_keras_is_refused_in_one_line(
    saved_by_torch, tmp_path, capsys, code, suffix
):
    """Neither np.load nor HDF5 has a float8 type: refused, not written as raw bytes."""
    path, _ = saved_by_torch
    out = tmp_path / f"o{suffix}"
    status = cli.main(["convert", str(path), str(out), "--only", f"{code}_conv", "-q"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "float8" in err and out.name in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f8.safetensors"]
