"""NumPy .npz archives: NumPy writes what we read (np.savez, np.savez_compressed) and reads what
we write (np.load); a pickled member is refused, never loaded."""

from __future__ import annotations

import zipfile

import ml_dtypes
import numpy as np
import pytest

import weightconv
from weightconv import cli
from weightconv.errors import FormatError, MappingError
from weightconv.formats import detect
from weightconv.model import CANONICAL, Kind, Layer, WeightSet

from .cli_refusal import refused
from .conftest import corpus_file


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "conv1/weights": rng.standard_normal((3, 3, 1, 4), dtype=np.float32),
        "conv1/biases": rng.standard_normal(4, dtype=np.float32),
        "fc/weights": np.asfortranarray(rng.standard_normal((36, 2))),
        "fc/biases": np.arange(2, dtype=np.int64),
        "global_step": np.array(9, dtype=np.int64),
    }


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["savez", "compressed"])
def test_we_read_what_numpy_writes(tmp_path, save):
    arrays = _arrays()
    path = tmp_path / "m.npz"
    save(path, **arrays)
    assert detect(path).name == "npz"
    weights = weightconv.load(path)
    assert weights.names() == ["conv1", "fc", "global_step"]
    assert weights["conv1"].kind == Kind.CONV and weights["fc"].kind == Kind.DENSE
    assert all(layer.layout == CANONICAL for layer in weights.layers)
    expected = np.load(path)
    for layer, role, tensor in weights.tensors():
        name = layer.tensor_name(role)
        ours = np.asarray(tensor)
        assert ours.dtype == expected[name].dtype and np.array_equal(ours, expected[name])
        assert ours.shape == arrays[name].shape


def test_numpy_reads_what_we_write(tmp_path):
    arrays = _arrays()
    np.savez(tmp_path / "in.npz", **arrays)
    result = weightconv.convert(tmp_path / "in.npz", tmp_path / "out.npz")
    back = np.load(tmp_path / "out.npz", allow_pickle=False)
    assert list(back) == list(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and np.array_equal(back[name], array)
    assert result.tensors == len(arrays) and result.detail == {"compressed": False}


def test_converted_copied_and_streamed_members_all_check(tmp_path):
    """A Caffe kernel made in place in the archive, arrays copied from a mapped .npy, and
    arrays in memory (big-endian, Fortran order) written in chunks: zipfile checks every
    member's CRC-32 and np.load gives the values back, little-endian and in C order."""
    rng = np.random.default_rng(5)
    kernel = rng.standard_normal((8, 3, 5, 5), dtype=np.float32)
    dense = np.asfortranarray(rng.standard_normal((6, 4)))
    big_endian = np.arange(5, dtype=">i4")
    weights = WeightSet(
        layers=[
            Layer("conv", Kind.CONV, {"weights": kernel}, layout="caffe"),
            Layer("fc", Kind.DENSE, {"weights": dense, "biases": big_endian}),
        ]
    )
    weightconv.save(weights, tmp_path / "made.npz")
    np.save(tmp_path / "m.npy", {"fc": [dense, big_endian.astype("<i4")]}, allow_pickle=True)
    weightconv.convert(tmp_path / "m.npy", tmp_path / "copied.npz")
    for name in ("made.npz", "copied.npz"):
        with zipfile.ZipFile(tmp_path / name) as archive:
            assert archive.testzip() is None
            assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
        with np.load(tmp_path / name, allow_pickle=False) as back:
            assert (
                np.array_equal(back["fc/weights"], dense) and back["fc/weights"].flags.c_contiguous
            )
            assert back["fc/biases"].dtype == np.dtype("<i4")
            assert np.array_equal(back["fc/biases"], big_endian)
    with np.load(tmp_path / "made.npz") as back:
        assert np.array_equal(back["conv/weights"], kernel.transpose(2, 3, 1, 0))


def test_np_savez_keywords_are_names_only_when_not_compressed(tmp_path):
    weights = WeightSet(layers=[Layer("file", tensors={"value": np.ones(3, np.float32)})])
    weightconv.save(weights, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as back:
        assert list(back) == ["file"] and np.array_equal(back["file"], np.ones(3))
    with pytest.raises(MappingError, match=r"'file' cannot be stored by np\.savez_compressed"):
        weightconv.save(weights, tmp_path / "z.npz", compressed=True)
    assert not (tmp_path / "z.npz").exists()


def test_the_compressed_option_deflates(tmp_path):
    weights = WeightSet(
        layers=[Layer("fc", Kind.DENSE, {"weights": np.zeros((64, 64), np.float32)})]
    )
    weightconv.save(weights, tmp_path / "plain.npz")
    weightconv.save(weights, tmp_path / "small.npz", compressed=True)
    for name, kind in [("plain.npz", zipfile.ZIP_STORED), ("small.npz", zipfile.ZIP_DEFLATED)]:
        with zipfile.ZipFile(tmp_path / name) as archive:
            assert {info.compress_type for info in archive.infolist()} == {kind}
    assert (tmp_path / "small.npz").stat().st_size < (tmp_path / "plain.npz").stat().st_size
    assert np.array_equal(np.load(tmp_path / "small.npz")["fc/weights"], np.zeros((64, 64)))


def test_caffe_layout_is_written_canonical(tmp_path):
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((4, 2, 3, 3), dtype=np.float32)  # OIHW
    weights = WeightSet(layers=[Layer("conv", Kind.CONV, {"weights": kernel}, layout="caffe")])
    weightconv.save(weights, tmp_path / "m.npz")
    assert np.array_equal(np.load(tmp_path / "m.npz")["conv/weights"], kernel.transpose(2, 3, 1, 0))


def test_bfloat16_is_written_as_float32_and_says_so(tmp_path):
    values = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    result = weightconv.save(
        WeightSet(layers=[Layer("b", tensors={"v": values})]), tmp_path / "m.npz"
    )
    back = np.load(tmp_path / "m.npz")["b/v"]
    assert back.dtype == np.float32 and np.array_equal(back, values.astype(np.float32))
    assert any("bfloat16" in note for note in result.notes)


@pytest.mark.parametrize("use", ["load", "copy"])
def test_a_stored_member_is_a_view_checked_against_its_crc(tmp_path, use):
    """A stored member's values are a view of the mapped archive; a flipped byte in them is
    refused by its CRC-32 when they are read, and when a conversion copies them file to file
    (the check runs alongside), leaving no output."""
    weights = np.arange(300_000, dtype=np.float32).reshape(600, 500)
    path = tmp_path / "m.npz"
    np.savez(path, **{"fc/weights": weights, "fc/biases": np.ones(500, np.float32)})
    view = np.asarray(weightconv.load(path)["fc"].tensors["weights"])
    assert not view.flags.writeable and view.base is not None
    assert np.array_equal(view, weights)
    del view
    raw = bytearray(path.read_bytes())
    raw[raw.find(weights.tobytes()) + 1000] ^= 0x01
    path.write_bytes(raw)
    out = tmp_path / "out.npy"
    with pytest.raises(FormatError, match=r"fc/weights\.npy: CRC-32 [0-9a-f]{8} of its data"):
        if use == "load":
            np.asarray(weightconv.load(path)["fc"].tensors["weights"])
        else:
            weightconv.convert(path, out)
    assert not out.exists()


def test_a_pickled_member_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, w=np.ones(3), names=np.array(["a", None], dtype=object))
    with pytest.raises(FormatError, match=r"objects\.npz:names\.npy: holds pickled Python objects"):
        weightconv.load(path)


def test_npy2npz_on_the_command_line(tmp_path, capsys):
    np.save(tmp_path / "m.npy", {"fc": [np.ones((3, 2), np.float32), np.zeros(2, np.float32)]})
    assert cli.main(["npy2npz", str(tmp_path / "m.npy"), "--compressed", "-q"]) == 0
    assert sorted(np.load(tmp_path / "m.npz")) == ["fc/biases", "fc/weights"]
    assert (
        cli.main(["convert", str(tmp_path / "m.npy"), str(tmp_path / "o.npy"), "--compressed"]) == 2
    )
    assert "--compressed applies to npz output" in capsys.readouterr().err


@pytest.mark.corpus
def test_the_corpus_npz_reads_as_numpy_reads_it():
    path = corpus_file("npz/candle/test.npz")
    expected = np.load(path)
    weights = weightconv.load(path)
    ours = {layer.tensor_name(role): np.asarray(t) for layer, role, t in weights.tensors()}
    assert list(ours) == list(expected)
    assert all(
        ours[k].dtype == expected[k].dtype and np.array_equal(ours[k], expected[k]) for k in ours
    )


@pytest.mark.parametrize("cut", [10, 200, -30], ids=["header", "member", "directory"])
def test_a_truncated_npz_is_one_line_and_exit_2(tmp_path, cut):
    np.savez(tmp_path / "whole.npz", **_arrays())
    path = tmp_path / "cut.npz"
    path.write_bytes((tmp_path / "whole.npz").read_bytes()[:cut])
    refused(path, ["npz2npy", str(path), "-o", str(tmp_path / "o.npy")])
    assert not (tmp_path / "o.npy").exists()
