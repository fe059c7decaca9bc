"""Our safetensors writer against the reference: the bytes ``safetensors.numpy.save_file``
writes for the same tensors and metadata, read back by the package itself; Caffe models in
both layouts checked against the generator's own blobs; the transforms reported are the ones
applied; a failure leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors
import torch
from safetensors.numpy import load_file, save_file

import weightconv
from weightconv.errors import FormatError, MappingError, OutputExistsError
from weightconv.formats.safetensors import write as st_write
from weightconv.formats.safetensors.write import write_file
from weightconv.model import (
    VALUE_ROLE,
    FilledTensor,
    Layer,
    WeightSet,
)
from weightconv.testing import synthetic

from .live_tensors import LiveArrays, values


def _mixed() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "w32": rng.standard_normal((3, 4), dtype=np.float32),
        "h16": rng.standard_normal(5).astype(np.float16),
        "bf": rng.standard_normal((2, 2)).astype(ml_dtypes.bfloat16),
        "steps": np.arange(6, dtype=np.int64).reshape(2, 3),
        "pixels": rng.integers(0, 255, (4, 2), dtype=np.uint8),
        "mask": rng.random(7) > 0.5,
        "f64": rng.standard_normal(3),
        "i8": np.array([-3, 0, 7], np.int8),
        "i16": np.array([-300, 2], np.int16),
        "u16": np.array([60000], np.uint16),
        "i32": np.array([[-(2**31)]], np.int32),
        "u32": np.array([2**32 - 1], np.uint32),
        "u64": np.array([2**64 - 1], np.uint64),
        "c64": np.array([1 + 2j, -3j], np.complex64),
        "e4m3": np.array([0.5, -2.0], ml_dtypes.float8_e4m3fn),
        "e5m2": np.array([4.0, -0.25], ml_dtypes.float8_e5m2),
    }


def _names() -> dict[str, np.ndarray]:
    """Names whose order differs by code point, case and punctuation; some JSON must escape."""
    names = ["b", "a", "B", "_", "a.b", "a/b", "a0", "é", "z", "Z9", 'q"uote', "tab\there", "\x01"]
    return {name: np.full(2, index, np.float32) for index, name in enumerate(names)}


def _edges() -> dict[str, np.ndarray]:
    return {
        "scalar": np.array(3.5, np.float32),
        "scalar_i": np.array(-2, np.int64),
        "empty": np.zeros((0, 4), np.float32),
        "empty_u8": np.zeros(0, np.uint8),
        "empty_mid": np.zeros((2, 0, 3), np.float16),
        "one": np.ones(1, np.bool_),
    }


CASES = {"mixed": _mixed, "names": _names, "edges": _edges}
METADATA = {"none": None, "format": {"format": "pt"}, "empty": {}, "note": {"note": "été"}}


def _reference(
    tensors: dict[str, np.ndarray], metadata: dict[str, str] | None, path: Path
) -> bytes:
    save_file(tensors, path, metadata=metadata)
    return path.read_bytes()


def _flat(tensors: dict[str, np.ndarray]) -> WeightSet:
    """Each array a layer of its own in the canonical layout, written under its own name."""
    return WeightSet(
        layers=[
            Layer(name=name, tensors={VALUE_ROLE: array}, stored_names={VALUE_ROLE: name})
            for name, array in tensors.items()
        ]
    )


def specs_of(tensors: dict[str, np.ndarray]) -> dict:
    return {name: (array.shape, array.dtype) for name, array in tensors.items()}


def _header(data: bytes) -> tuple[bytes, dict]:
    length = int.from_bytes(data[:8], "little")
    text = data[8 : 8 + length]
    return text, json.loads(text)


@pytest.mark.parametrize("meta", METADATA, ids=list(METADATA))
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_write_file_gives_the_bytes_save_file_writes(tmp_path, case, meta):
    tensors = CASES[case]()
    metadata = METADATA[meta]
    expected = _reference(tensors, metadata, tmp_path / "reference.safetensors")
    specs = specs_of(tensors)
    out = tmp_path / "ours.safetensors"
    size = write_file(out, specs, reversed(list(tensors.items())), metadata)
    assert out.read_bytes() == expected
    assert size == len(expected)


def test_big_endian_transposed_and_chunked_tensors_give_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(st_write, "CHUNK_BYTES", 40)  # many chunks per tensor
    rng = np.random.default_rng(3)
    given = {
        "be": rng.standard_normal((6, 7)).astype(">f4"),
        "be64": np.arange(10, dtype=">i8"),
        "t": rng.standard_normal((5, 9), dtype=np.float32).T,
        "strided": rng.standard_normal((8, 8))[::2, 1::3],
    }
    contiguous = {
        name: np.ascontiguousarray(a, a.dtype.newbyteorder("<")) for name, a in given.items()
    }
    expected = _reference(contiguous, {"format": "tf"}, tmp_path / "reference.safetensors")
    specs = specs_of(given)
    write_file(tmp_path / "ours.safetensors", specs, given.items(), {"format": "tf"})
    assert (tmp_path / "ours.safetensors").read_bytes() == expected


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_save_gives_the_bytes_save_file_writes(tmp_path, case):
    tensors = CASES[case]()
    expected = _reference(tensors, {"format": "tf"}, tmp_path / "reference.safetensors")
    result = weightconv.save(_flat(tensors), tmp_path / "ours.safetensors")
    assert (tmp_path / "ours.safetensors").read_bytes() == expected
    assert result.bytes == len(expected) and result.tensors == len(tensors)
    assert result.detail["transforms"] == []


def test_several_metadata_keys_are_sorted_where_the_reference_orders_them_at_random(tmp_path):
    tensors = _mixed()
    metadata = {"format": "pt", "b": "2", "a": "1", "origin": "test"}
    expected = _reference(tensors, metadata, tmp_path / "reference.safetensors")
    specs = specs_of(tensors)
    write_file(tmp_path / "ours.safetensors", specs, tensors.items(), metadata)
    ours = (tmp_path / "ours.safetensors").read_bytes()
    (their_text, theirs), (our_text, mine) = _header(expected), _header(ours)
    assert mine == theirs and len(our_text) == len(their_text)
    assert list(mine["__metadata__"]) == sorted(metadata)
    assert list(mine) == list(theirs)  # the tensors in the same order
    assert ours[8 + len(our_text) :] == expected[8 + len(their_text) :]


def test_the_package_reads_what_we_write(tmp_path):
    tensors = {**_mixed(), **_edges(), **_names()}
    specs = specs_of(tensors)
    path = tmp_path / "ours.safetensors"
    write_file(path, specs, tensors.items(), {"format": "pt", "origin": "test"})
    float8 = {"e4m3", "e5m2"}  # the package's NumPy side has no float8: read through torch
    with safetensors.safe_open(path, framework="np") as handle:
        assert handle.metadata() == {"format": "pt", "origin": "test"}
        assert sorted(handle.keys()) == sorted(tensors)
        for name in sorted(set(tensors) - float8):
            got = handle.get_tensor(name)
            assert got.shape == tensors[name].shape, name
            assert got.tobytes() == tensors[name].tobytes(), name
    with safetensors.safe_open(path, framework="pt") as handle:
        for name in float8:
            got = handle.get_tensor(name)
            assert got.dtype == getattr(torch, tensors[name].dtype.name), name
            assert got.view(torch.uint8).numpy().tobytes() == tensors[name].tobytes(), name
    plain = {k: v for k, v in tensors.items() if k not in float8}
    write_file(tmp_path / "plain.safetensors", specs_of(plain), plain.items())
    loaded = load_file(tmp_path / "plain.safetensors")
    assert sorted(loaded) == sorted(plain)
    assert all(
        loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v) for k, v in plain.items()
    )


def test_a_name_or_dtype_the_format_cannot_hold_is_refused_before_writing(tmp_path):
    out = tmp_path / "o.safetensors"
    with pytest.raises(MappingError, match="__metadata__"):
        write_file(out, {"__metadata__": ((1,), np.dtype(np.float32))}, [])
    with pytest.raises(FormatError, match=r"complex128.*does not store"):
        write_file(out, {"c": ((1,), np.dtype(np.complex128))}, [])
    with pytest.raises(FormatError, match="not valid Unicode"):
        write_file(out, {"bad\udc80": ((1,), np.dtype(np.float32))}, [])
    assert list(tmp_path.iterdir()) == []


# Caffe models ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lenet(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("lenet")
    net = synthetic.build("lenet", seed=5)
    net.write_caffemodel(folder / "m.caffemodel")
    (folder / "m.prototxt").write_text(net.deploy_prototxt)
    return {"net": net, "model": folder / "m.caffemodel", "prototxt": folder / "m.prototxt"}


def _caffe_in_torch_layout(net: synthetic.SyntheticNet) -> dict[str, np.ndarray]:
    """The generator's own blobs under PyTorch's names: PyTorch keeps Caffe's layout."""
    out = {}
    for name, (weights, biases) in net.weights.items():
        out[f"{name}.weight"], out[f"{name}.bias"] = weights, biases
    return out


def _caffe_in_tf_layout(net: synthetic.SyntheticNet) -> dict[str, np.ndarray]:
    """The generator's blobs in TensorFlow's layout, worked out here from LeNet's shapes: conv
    (O, I, H, W) -> (H, W, I, O); ip1 reads pool2, 50x4x4, flattened C,H,W by Caffe and H,W,C
    by TensorFlow; ip2 reads ip1, flat."""
    blobs = dict(net.weights)
    out = {}
    for name in ("conv1", "conv2"):
        weights, biases = blobs[name]
        out[f"{name}/weights"] = np.ascontiguousarray(weights.transpose(2, 3, 1, 0))
        out[f"{name}/biases"] = biases
    ip1, ip1_biases = blobs["ip1"]
    assert ip1.shape == (500, 50 * 4 * 4)
    out["ip1/weights"] = np.ascontiguousarray(
        ip1.reshape(500, 50, 4, 4).transpose(0, 2, 3, 1).reshape(500, 800).T
    )
    out["ip1/biases"] = ip1_biases
    ip2, ip2_biases = blobs["ip2"]
    out["ip2/weights"] = np.ascontiguousarray(ip2.T)
    out["ip2/biases"] = ip2_biases
    return out


def test_a_caffe_model_in_the_torch_layout_is_its_blobs_and_no_transform(lenet, tmp_path):
    out = tmp_path / "m.safetensors"
    report = weightconv.convert(lenet["model"], out, prototxt=lenet["prototxt"])
    expected = _caffe_in_torch_layout(lenet["net"])
    reference = _reference(expected, {"format": "pt"}, tmp_path / "reference.safetensors")
    assert out.read_bytes() == reference
    loaded = load_file(out)
    assert all(np.array_equal(loaded[k], v) for k, v in expected.items())
    assert report.transforms == []
    assert report.detail["layout"] == "torch" and report.detail["transforms"] == []


def test_a_caffe_model_in_the_tf_layout_reports_the_transposes_it_applied(lenet, tmp_path):
    out = tmp_path / "m.safetensors"
    report = weightconv.convert(
        lenet["model"], out, prototxt=lenet["prototxt"], safetensors_layout="tf"
    )
    expected = _caffe_in_tf_layout(lenet["net"])
    reference = _reference(expected, {"format": "tf"}, tmp_path / "reference.safetensors")
    assert out.read_bytes() == reference
    assert report.transforms == [
        {"step": "conv kernel OIHW -> HWIO", "layers": ["conv1", "conv2"]},
        {"step": "dense (out, in) -> (in, out)", "layers": ["ip1", "ip2"]},
        {"step": "flatten order C,H,W -> H,W,C (50x4x4)", "layers": ["ip1"]},
    ]


def test_a_tf_layout_file_written_in_the_torch_layout_reports_the_way_back(lenet, tmp_path):
    tf_file, torch_file = tmp_path / "tf.safetensors", tmp_path / "pt.safetensors"
    weightconv.convert(lenet["model"], tf_file, prototxt=lenet["prototxt"], safetensors_layout="tf")
    report = weightconv.convert(
        tf_file, torch_file, safetensors_layout="torch", torch_dense_inputs={"ip1": (50, 4, 4)}
    )
    expected = _caffe_in_torch_layout(lenet["net"])
    reference = _reference(expected, {"format": "pt"}, tmp_path / "reference.safetensors")
    assert torch_file.read_bytes() == reference
    assert report.transforms == [
        {"step": "conv kernel HWIO -> OIHW", "layers": ["conv1", "conv2"]},
        {"step": "dense (in, out) -> (out, in)", "layers": ["ip1", "ip2"]},
        {"step": "flatten order H,W,C -> C,H,W (50x4x4)", "layers": ["ip1"]},
    ]


# One tensor at a time, and nothing left on failure -------------------------------------------


@pytest.mark.parametrize("layout", ["tf", "torch"])
def test_tensors_are_made_one_at_a_time_as_they_are_written(tmp_path, layout):
    live = LiveArrays()
    layers = live.layers(6)
    weightconv.save(WeightSet(layers=layers), tmp_path / "m.safetensors", safetensors_layout=layout)
    assert live.most == 1 and not live.alive
    back = load_file(tmp_path / "m.safetensors")
    for i in range(6):
        expected = values((8, 8), i)
        name = f"fc{i}/weights" if layout == "tf" else f"fc{i}.weight"
        assert np.array_equal(back[name], expected if layout == "tf" else expected.T)


def _failing_weights() -> WeightSet:
    def fail(out: np.ndarray) -> None:
        out[...] = 1  # half done when it fails
        raise RuntimeError("the source went away")

    return WeightSet(
        layers=[
            Layer(name="a", tensors={"weights": np.ones((64, 64), np.float32)}),
            Layer(name="b", tensors={"weights": FilledTensor((256, 256), np.float32, fail)}),
            Layer(name="c", tensors={"weights": np.ones((3,), np.float32)}),
        ]
    )


def test_a_failure_midway_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError, match="went away"):
        weightconv.save(_failing_weights(), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_midway_leaves_the_file_it_would_have_replaced(tmp_path):
    out = tmp_path / "m.safetensors"
    save_file({"old": np.zeros(2, np.float32)}, out, metadata={"format": "tf"})
    before = out.read_bytes()
    with pytest.raises(OutputExistsError):
        weightconv.save(_flat({"new": np.ones(2, np.float32)}), out)
    with pytest.raises(RuntimeError, match="went away"):
        weightconv.save(_failing_weights(), out, force=True)
    assert out.read_bytes() == before
    assert list(tmp_path.iterdir()) == [out]
