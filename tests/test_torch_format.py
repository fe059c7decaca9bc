"""PyTorch state dicts (.pt/.pth/.bin) read and written without importing torch in the package.

Oracles: torch itself (CPU build, in the test extra): `torch.save` writes the files we read, in
the zip format and the legacy one, and `torch.load(..., weights_only=True)` loads the files we
write; real files of ../shared/corpus are compared with what torch reads of them.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import weightconv
from weightconv import cli
from weightconv.errors import FormatError, ShapeError, UnsafeInputError, UsageError
from weightconv.formats import detect
from weightconv.formats.torch import parse_dense_inputs
from weightconv.model import CAFFE, Kind
from weightconv.testing import synthetic

from .cli_refusal import refused
from .conftest import corpus_file


def _same(ours, theirs: torch.Tensor) -> None:
    array = np.asarray(ours)
    assert tuple(array.shape) == tuple(theirs.shape)
    expected = theirs.contiguous()
    if expected.dtype == torch.bfloat16:
        assert array.dtype.name == "bfloat16"
        assert array.view(np.uint16).tobytes() == expected.view(torch.int16).numpy().tobytes()
        return
    assert array.dtype == expected.numpy().dtype
    assert array.tobytes() == expected.numpy().tobytes()


def _tensors(weights) -> dict[str, np.ndarray]:
    return {layer.location(role): t for layer, role, t in weights.tensors()}


def _state_dict() -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(12, generator=g)
    return OrderedDict(
        [
            ("conv1.weight", torch.randn(4, 3, 3, 3, generator=g)),
            ("conv1.bias", torch.randn(4, generator=g)),
            ("bn1.weight", torch.randn(4, generator=g)),
            ("bn1.bias", torch.randn(4, generator=g)),
            ("bn1.running_mean", torch.randn(4, generator=g)),
            ("bn1.running_var", torch.rand(4, generator=g)),
            ("bn1.num_batches_tracked", torch.tensor(7)),
            ("fc.weight", torch.randn(36, 5, generator=g).t()),  # not contiguous
            ("fc.bias", torch.randn(5, generator=g).to(torch.bfloat16)),
            ("half", torch.randn(2, 3, generator=g).half()),
            ("steps", torch.arange(6, dtype=torch.int64).reshape(2, 3)),
            ("view_a", base[2:6]),  # two tensors on one storage, at offsets
            ("view_b", base[4:12].reshape(2, 4)),
            ("mask", torch.tensor([True, False])),
        ]
    )


# Reading what torch.save writes ---------------------------------------------------------------


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_we_read_what_torch_save_writes(tmp_path, zipped):
    state = _state_dict()
    path = tmp_path / "m.pt"
    torch.save(state, path, _use_new_zipfile_serialization=zipped)
    assert detect(path).name == "pt"
    weights = weightconv.load(path)
    assert weights.source.detail["container"] == ("zip" if zipped else "legacy")
    ours = _tensors(weights)
    assert list(ours) == list(state)  # the state dict's order
    for key, tensor in state.items():
        _same(ours[key], tensor)
    kinds = {layer.name: layer.kind for layer in weights.layers}
    assert kinds["conv1"] == Kind.CONV and kinds["fc"] == Kind.DENSE
    assert kinds["bn1"] == Kind.BATCHNORM
    assert list(weights["bn1"].tensors) == [
        "gamma",
        "beta",
        "mean",
        "variance",
        "num_batches_tracked",
    ]
    assert all(layer.layout == CAFFE for layer in weights.layers)


def test_a_fortran_order_tensor_keeps_its_values(tmp_path):
    tensor = torch.arange(24, dtype=torch.float32).reshape(4, 3, 2).permute(2, 1, 0)
    torch.save({"t": tensor}, tmp_path / "f.pt")
    array = np.asarray(weightconv.load(tmp_path / "f.pt")["t"].tensors["value"])
    assert array.strides != tensor.contiguous().numpy().strides  # a view, not a copy
    assert np.array_equal(array, tensor.numpy())


def test_nested_checkpoint_reads_its_state_dict_and_lists_the_rest(tmp_path):
    state = _state_dict()
    optimizer = {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]}
    checkpoint = {"epoch": 5, "state_dict": state, "optimizer": optimizer, "arch": "net"}
    torch.save(checkpoint, tmp_path / "ckpt.pth")
    weights = weightconv.load(tmp_path / "ckpt.pth")
    assert list(_tensors(weights)) == list(state)
    assert weights.source.detail["state_dict"] == "state_dict"
    assert any("'state_dict'" in n and "epoch (int 5)" in n and "arch" in n for n in weights.notes)
    assert [a.name for a in weights.set_aside] == ["optimizer.state.0.momentum_buffer"]
    inventory = weightconv.inspect(tmp_path / "ckpt.pth")
    assert inventory.totals["set_aside"] == 1


@pytest.mark.parametrize("wrapper", ["model", "model_state_dict"])
def test_other_wrappers(tmp_path, wrapper):
    torch.save({wrapper: {"a.weight": torch.ones(2, 2)}, "step": 3}, tmp_path / "w.pt")
    assert weightconv.load(tmp_path / "w.pt").names() == ["a"]


def test_a_corrupt_storage_is_refused_by_its_crc(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.arange(64, dtype=torch.float32)}, path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("m/data/0")
    start = info.header_offset + 30 + struct.unpack_from("<HH", data, info.header_offset + 26)[0]
    start += struct.unpack_from("<HH", data, info.header_offset + 26)[1]
    data[start + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    weights = weightconv.load(path)  # listing reads no values
    with pytest.raises(FormatError, match=r"m\.pt:m/data/0: CRC-32"):
        np.asarray(weights["w"].tensors["value"])


def _corrupted(path: Path, member: str, at: int = 10) -> None:
    """Byte `at` of the stored `member` flipped in place (its CRC-32 then differs)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    data[info.header_offset + 30 + name_length + extra_length + at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("target", ["out.npy", "o/out.ckpt", "out.h5", "out.npz", "out.pt"])
@pytest.mark.parametrize("key", ["conv.weight", "fc.weight"])
def test_a_corrupt_kernel_is_refused_whether_it_is_reordered_or_copied(tmp_path, key, target):
    """A conv or dense kernel reordered into its output has its CRC checked beside the
    reorder, one copied as it is beside the copy: either way the conversion is refused and
    leaves no output."""
    g = torch.Generator().manual_seed(4)
    state = {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(8, generator=g),
        "fc.weight": torch.randn(10, 8 * 4 * 4, generator=g),
        "fc.bias": torch.randn(10, generator=g),
    }
    source = tmp_path / "m.pt"
    torch.save(state, source)
    with zipfile.ZipFile(source) as archive:
        members = [n for n in archive.namelist() if "/data/" in n and not n.endswith(".pkl")]
    _corrupted(source, members[list(state).index(key)])
    out = tmp_path / "out"
    with pytest.raises(FormatError, match=r"m\.pt:m/data/\d+: CRC-32 .* the member is corrupt"):
        weightconv.convert(source, out / target, dense_inputs={"fc": (8, 4, 4)})
    assert not out.exists() or not any(out.rglob("*"))


@pytest.mark.parametrize("target", ["out.pt", "out.safetensors"])
@pytest.mark.parametrize("source", ["m.npz", "ckpt/m.ckpt"])
def test_a_corrupt_kernel_reordered_into_pytorch_s_layout_is_refused(tmp_path, source, target):
    """A TensorFlow-layout kernel (an .npz member, a checkpoint tensor) has its CRC checked
    beside its reorder into PyTorch's layout (.pt) or its copy (.safetensors keeps the
    layout): a mismatch refuses the conversion and leaves no output."""
    rng = np.random.default_rng(6)
    arrays = {"conv/weights": rng.standard_normal((3, 3, 8, 16), dtype=np.float32)}
    arrays["conv/biases"] = np.zeros(16, np.float32)
    weightconv.save_dict(arrays, tmp_path / "m.npy")
    weightconv.convert(tmp_path / "m.npy", tmp_path / source)
    if source.endswith(".npz"):
        _corrupted(tmp_path / source, "conv/weights.npy", at=300)  # past the .npy header
    else:
        shard = tmp_path / "ckpt" / "m.ckpt.data-00000-of-00001"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF  # inside the kernel, 4.6 kB of the shard's 4.7
        shard.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(FormatError, match=r"conv/weights.*(CRC-32|checksum mismatch)"):
        weightconv.convert(tmp_path / source, out / target)
    assert not out.exists() or not any(out.rglob("*"))


# Writing what torch.load loads ------------------------------------------------------------------


def test_torch_loads_what_we_write_with_weights_only(tmp_path):
    state = _state_dict()
    torch.save(state, tmp_path / "in.pt")
    result = weightconv.save(weightconv.load(tmp_path / "in.pt"), tmp_path / "out.pt")
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert list(loaded) == list(state)
    for key, tensor in state.items():
        assert loaded[key].dtype == tensor.dtype and loaded[key].shape == tensor.shape, key
        assert torch.equal(loaded[key], tensor), key
    assert result.tensors == len(state) and result.detail["layout"] == "torch"
    with zipfile.ZipFile(tmp_path / "out.pt") as archive:  # storages stored, 64-byte aligned
        raw = (tmp_path / "out.pt").read_bytes()
        for info in archive.infolist():
            name_length, extra_length = struct.unpack_from("<HH", raw, info.header_offset + 26)
            assert info.compress_type == zipfile.ZIP_STORED
            assert (info.header_offset + 30 + name_length + extra_length) % 64 == 0


def test_a_module_loads_what_we_write(tmp_path):
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(36, 2),
    )
    net.eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    weightconv.convert(tmp_path / "net.pt", tmp_path / "copy.pt")
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(36, 2),
    )
    twin.load_state_dict(torch.load(tmp_path / "copy.pt", weights_only=True))
    twin.eval()
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(net(x), twin(x))


def test_a_caffe_model_goes_to_pytorch_with_no_transform(tmp_path, capsys):
    net = synthetic.build("lenet", seed=3)
    model, prototxt = tmp_path / "lenet.caffemodel", tmp_path / "lenet.prototxt"
    net.write_caffemodel(model)
    prototxt.write_text(net.deploy_prototxt)
    code = cli.main(["caffe2pt", str(model), "--prototxt", str(prototxt), "-q"])
    assert code == 0, capsys.readouterr().err
    loaded = torch.load(tmp_path / "lenet.pt", weights_only=True)
    caffe = weightconv.load(model, prototxt=prototxt)
    for layer in caffe.weighted_layers():
        assert torch.equal(
            loaded[f"{layer.name}.weight"], torch.from_numpy(np.array(layer.tensors["weights"]))
        )
        assert torch.equal(
            loaded[f"{layer.name}.bias"], torch.from_numpy(np.array(layer.tensors["biases"]))
        )


def _cnn_state() -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return OrderedDict(
        [
            ("conv1.weight", torch.randn(4, 3, 3, 3, generator=g)),
            ("conv1.bias", torch.randn(4, generator=g)),
            ("fc1.weight", torch.randn(5, 36, generator=g)),
            ("fc1.bias", torch.randn(5, generator=g)),
            ("fc2.weight", torch.randn(2, 5, generator=g)),
            ("fc2.bias", torch.randn(2, generator=g)),
        ]
    )


@pytest.mark.parametrize("middle", ["ckpt", "npy"])
def test_torch_to_canonical_and_back_gives_the_same_bytes(tmp_path, middle):
    state = _cnn_state()
    torch.save(state, tmp_path / "m.pt")
    inner = tmp_path / f"m.{middle}"
    report = weightconv.convert(tmp_path / "m.pt", inner, dense_inputs={"fc1": (4, 3, 3)})
    steps = {step["step"] for step in report.transforms}
    assert "flatten order C,H,W -> H,W,C (4x3x3)" in steps
    back = weightconv.convert(inner, tmp_path / "back.pt", torch_dense_inputs={"fc1": (4, 3, 3)})
    assert back.detail["layout"] == "torch"
    loaded = torch.load(tmp_path / "back.pt", weights_only=True)
    assert list(loaded) == list(state)
    for key, tensor in state.items():
        assert loaded[key].numpy().tobytes() == tensor.numpy().tobytes(), key


def test_the_canonical_fc_computes_what_torch_computes(tmp_path):
    state = _cnn_state()
    torch.save(state, tmp_path / "m.pt")
    weightconv.convert(tmp_path / "m.pt", tmp_path / "m.npy", dense_inputs={"fc1": (4, 3, 3)})
    d = np.load(tmp_path / "m.npy", allow_pickle=True).item()
    x = torch.randn(1, 3, 5, 5)
    y = torch.nn.functional.conv2d(x, state["conv1.weight"], state["conv1.bias"])
    expected = torch.nn.functional.linear(y.flatten(1), state["fc1.weight"], state["fc1.bias"])
    hwc = y.permute(0, 2, 3, 1).reshape(1, -1).numpy()  # TensorFlow's Flatten
    assert np.allclose(hwc @ d["fc1"][0] + d["fc1"][1], expected.numpy(), atol=1e-5)


def test_a_dense_layer_after_a_spatial_one_needs_its_shape(tmp_path, capsys):
    torch.save(_cnn_state(), tmp_path / "m.pt")
    weightconv.convert(tmp_path / "m.pt", tmp_path / "m.npy", dense_inputs={"fc1": (4, 3, 3)})
    with pytest.raises(ShapeError, match=r"'fc1'.*C,H,W.*torch_dense_inputs=fc1=C,H,W"):
        weightconv.convert(tmp_path / "m.npy", tmp_path / "back.pt")
    with pytest.raises(ShapeError, match=r"layer 'fc1'.*unknown height and width"):
        weightconv.convert(tmp_path / "m.pt", tmp_path / "x.npy")
    assert not (tmp_path / "back.pt").exists() and not (tmp_path / "x.npy").exists()
    out = str(tmp_path / "cli.pt")
    code = cli.main(["npy2pt", str(tmp_path / "m.npy"), "-o", out, "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--torch-dense-input fc1=C,H,W" in err and err.count("\n") == 1
    code = cli.main(
        ["npy2pt", str(tmp_path / "m.npy"), "-o", out, "--torch-dense-input", "fc1=4,3,3"]
    )
    assert code == 0 and (tmp_path / "cli.pt").exists()


def test_a_dense_input_shape_for_no_such_layer_is_refused(tmp_path):
    torch.save(_cnn_state(), tmp_path / "m.pt")
    with pytest.raises(UsageError, match="dense_inputs=fc9"):
        weightconv.load(tmp_path / "m.pt", dense_inputs={"fc9": (4, 3, 3)})
    with pytest.raises(UsageError, match=r"'fc1' has 36 inputs"):
        weightconv.load(tmp_path / "m.pt", dense_inputs={"fc1": (4, 3, 4)})
    weightconv.convert(tmp_path / "m.pt", tmp_path / "m.npy", dense_inputs={"fc1": (36,)})
    with pytest.raises(UsageError, match="torch_dense_inputs=fc9"):
        weightconv.convert(
            tmp_path / "m.npy", tmp_path / "b.pt", torch_dense_inputs={"fc1": (36,), "fc9": (1,)}
        )
    assert not (tmp_path / "b.pt").exists()


def test_parse_dense_inputs():
    assert parse_dense_inputs("fc6=256,6,6,fc1=784") == {"fc6": (256, 6, 6), "fc1": (784,)}
    assert parse_dense_inputs("fc6=256x6x6") == {"fc6": (256, 6, 6)}
    for bad in ("fc6", "fc6=1,2", "=1", "fc6=0", "fc6=a,b,c", "fc6=1,fc6=2"):
        with pytest.raises(ValueError, match="NAME=C,H,W"):
            parse_dense_inputs(bad)


# Refusing what would run code ------------------------------------------------------------------


def _payload_pickle(marker: Path, module: str = "os", name: str = "system") -> bytes:
    argument = f"touch {marker}" if name == "system" else f"open({str(marker)!r}, 'w')"
    return (
        b"\x80\x02c"
        + f"{module}\n{name}\n".encode()
        + pickle.dumps(argument, protocol=2)[2:-1]
        + b"\x85R."
    )


def test_a_pt_whose_pickle_calls_os_system_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", _payload_pickle(marker))
        archive.writestr("evil/version", "3\n")
    with pytest.raises(UnsafeInputError, match=r"evil\.pt.*'os\.system'"):
        weightconv.load(path)
    assert not marker.exists()


def test_a_legacy_pt_with_a_bad_global_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    stream = io.BytesIO()
    for value in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(value, stream, protocol=2)
    stream.write(_payload_pickle(marker, "builtins", "eval"))
    path = tmp_path / "evil_legacy.pt"
    path.write_bytes(stream.getvalue())
    assert detect(path).name == "pt"
    with pytest.raises(UnsafeInputError, match=r"'builtins\.eval'"):
        weightconv.load(path)
    assert not marker.exists()


# Real files -------------------------------------------------------------------------------------


@pytest.mark.corpus
@pytest.mark.parametrize(
    "relative",
    [
        "torch/candle/test.pt",
        "torch/candle/fortran_tensor_3d.pth",
        "torch/candle/test_with_key.pt",
        "torch/facenet-pytorch/pnet.pt",
    ],
)
def test_corpus_files_read_as_torch_reads_them(relative):
    path = corpus_file(relative)
    expected = torch.load(path, weights_only=True)
    if "model_state_dict" in expected:
        expected = expected["model_state_dict"]
    ours = _tensors(weightconv.load(path))
    assert list(ours) == list(expected)
    for key, tensor in expected.items():
        _same(ours[key], tensor)


@pytest.mark.corpus
def test_the_legacy_pnet_is_caffes_det1():
    weights = weightconv.load(corpus_file("torch/facenet-pytorch/pnet.pt"))
    assert weights.source.detail["container"] == "legacy"
    assert weights["prelu1"].kind == Kind.PRELU
    assert list(weights["conv1"].tensors) == ["weights", "biases"]
    caffe = weightconv.load(corpus_file("caffe/mtcnn/det1.caffemodel"))
    ours = np.sort(np.asarray(weights["conv1"].tensors["weights"]).ravel())
    theirs = np.sort(np.asarray(caffe["conv1"].tensors["weights"]).ravel())
    assert np.array_equal(ours, theirs)


@pytest.mark.corpus
def test_a_torchscript_archive_is_read_as_its_state_dict():
    path = corpus_file("torch/mnist-onnxjs/mnist_cnn.pt")
    weights = weightconv.load(path)
    assert weights.source.detail["container"] == "torchscript"
    expected = torch.jit.load(path).state_dict()
    ours = _tensors(weights)
    assert sorted(ours) == sorted(expected)
    for key, tensor in expected.items():
        _same(ours[key], tensor)


# The command line -------------------------------------------------------------------------------


def test_help_lists_the_pytorch_options(capsys):
    assert cli.main(["caffe2pt", "--help"]) == 0
    out = capsys.readouterr().out
    assert "pt/safetensors/onnx output options" in out and "--torch-dense-input" in out
    assert cli.main(["pt2ckpt", "--help"]) == 0
    assert "--dense-input" in capsys.readouterr().out


def test_inspect_json_lists_the_state_dict(tmp_path, capsys):
    torch.save(_state_dict(), tmp_path / "m.pt")
    assert cli.main(["inspect", str(tmp_path / "m.pt"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    names = [t["name"] for t in document["tensors"]]
    assert names == list(_state_dict()) and document["layout"] == CAFFE


@pytest.mark.parametrize(
    "content",
    [b"PK\x03\x04" + b"\0" * 60, b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.garbage", b""],
    ids=["broken zip", "legacy garbage", "truncated"],
)
def test_garbage_is_one_line_and_exit_2(tmp_path, content):
    path = tmp_path / "bad.pt"
    if not content:
        torch.save(_state_dict(), path)
        content = path.read_bytes()[:-300]
    path.write_bytes(content)
    refused(path, ["pt2npy", str(path), "-o", str(tmp_path / "out.npy")])
    assert not (tmp_path / "out.npy").exists()


def test_a_storage_declaring_more_than_its_member_is_refused(tmp_path):
    path = tmp_path / "huge.pt"
    torch.save({"w": torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    pickled = members["huge/data.pkl"]
    assert b"K\x04t" in pickled  # the storage's numel, 4, before the TUPLE closing its id
    members["huge/data.pkl"] = pickled.replace(
        b"K\x04t", b"\x8a\x08" + (2**62).to_bytes(8, "little") + b"t", 1
    )
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    message = refused(path, ["pt2npy", str(path), "-o", str(tmp_path / "o.npy")])
    assert "huge/data/0: holds 16 bytes" in message


def test_a_dtype_pytorch_cannot_store_is_refused_before_anything_is_left(tmp_path):
    from weightconv.model import Layer, WeightSet

    weights = WeightSet(layers=[Layer("x", tensors={"value": np.arange(3, dtype=np.uint32)})])
    with pytest.raises(FormatError, match=r"'x' has dtype uint32"):
        weightconv.save(weights, tmp_path / "x.pth")
    assert list(tmp_path.iterdir()) == []


def test_a_bin_file_is_a_state_dict_by_its_content(tmp_path):
    torch.save({"a.weight": torch.ones(2, 3)}, tmp_path / "pytorch_model.bin")
    assert detect(tmp_path / "pytorch_model.bin").name == "pt"
    assert weightconv.load(tmp_path / "pytorch_model.bin")["a"].kind == Kind.DENSE


def test_one_layer_is_converted_at_a_time_as_it_is_written(tmp_path):
    from weightconv.model import WeightSet

    from .live_tensors import LiveArrays, values

    live = LiveArrays()
    weightconv.save(WeightSet(layers=live.layers(4)), tmp_path / "m.pt")
    assert live.most == 1 and not live.alive
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    for i in range(4):
        np.testing.assert_array_equal(state[f"fc{i}.weight"].numpy(), values((8, 8), i).T)
