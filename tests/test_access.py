"""weightconv.open / load_dict / save_dict: names as the file has them, values read on demand."""

from __future__ import annotations

import doctest
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import weightconv
from weightconv import access
from weightconv.testing import synthetic


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("access")
    net = synthetic.build("lenet", seed=4)
    model = folder / "lenet.caffemodel"
    net.write_caffemodel(model)
    (folder / "lenet.prototxt").write_text(net.deploy_prototxt)
    return folder, net


def test_the_module_examples_run():
    assert doctest.testmod(access, raise_on_error=True).attempted >= 4


@pytest.mark.parametrize("suffix", [".npy", ".ckpt", ".weights.h5"])
def test_open_lists_and_reads_what_the_file_holds(lenet, suffix, tmp_path):
    folder, _ = lenet
    path = tmp_path / f"lenet{suffix}"
    weightconv.convert(folder / "lenet.caffemodel", path, prototxt=folder / "lenet.prototxt")
    reference = weightconv.load(path)
    with weightconv.open(path) as f:
        assert f.keys() == [layer.location(role) for layer, role, _ in reference.tensors()]
        for layer, role, tensor in reference.tensors():
            name = layer.location(role)
            assert name in f and f.shape(name) == tuple(tensor.shape)
            assert f.dtype(name) == tensor.dtype
            assert np.array_equal(f.get_tensor(name), np.asarray(tensor))
    with pytest.raises(weightconv.UsageError, match="closed"):
        f.get_tensor(name)


def test_a_caffemodel_opens_with_blobs_as_stored(lenet):
    folder, net = lenet
    with weightconv.open(folder / "lenet.caffemodel") as f:
        assert f.keys()[:2] == ["conv1/weights", "conv1/biases"]
        assert f.shape("conv1/weights") == net.weights["conv1"][0].shape  # OIHW, untouched
        assert np.array_equal(f.get_tensor("ip2/weights"), net.weights["ip2"][0])


def test_an_unknown_name_is_refused_with_the_close_ones(lenet):
    folder, _ = lenet
    with (
        weightconv.open(folder / "lenet.caffemodel") as f,
        pytest.raises(weightconv.MappingError, match=r"'conv1/weight'.*mean 'conv1/weights'"),
    ):
        f.get_tensor("conv1/weight")


@pytest.mark.parametrize("suffix", [".npy", ".ckpt"])
def test_dicts_round_trip_with_their_names(tmp_path, suffix):
    tensors = {
        "block/conv/kernel": np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4),
        "block/conv/bias": np.ones(4, np.float64),
        "step": np.array(7, np.int64),
    }
    path = tmp_path / f"d{suffix}"
    weightconv.save_dict(tensors, path)
    back = weightconv.load_dict(path)
    assert list(back) == list(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value)
    with pytest.raises(weightconv.OutputExistsError):
        weightconv.save_dict(tensors, path)


def test_save_dict_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(weightconv.UsageError, match="empty"):
        weightconv.save_dict({}, tmp_path / "x.npy")
    with pytest.raises(weightconv.UsageError, match="non-empty strings"):
        weightconv.save_dict({"": np.zeros(1)}, tmp_path / "x.npy")
    with pytest.raises(weightconv.UsageError, match=r"takes no option .shards."):
        weightconv.save_dict({"a": np.zeros(1)}, tmp_path / "x.npy", shards=2)


@pytest.mark.parametrize("kind", ["ckpt", "caffemodel"])
def test_get_tensor_reads_about_that_tensor(tmp_path, kind):
    """Opening a large file and taking one tensor costs that tensor's pages, not the file's:
    measured in a child by its own peak RSS (VmHWM) against the same child that only opens
    the file."""
    if kind == "ckpt":
        big = {f"layer{i}/weights": np.full((1024, 1024), i, np.float32) for i in range(24)}
        path, name, nbytes = tmp_path / "big.ckpt", "layer5/weights", 4 << 20
        weightconv.save_dict(big, path)
    else:
        net = synthetic.build("vgg16", width=0.125, extra_fc=40, seed=5)
        path, name = tmp_path / "big.caffemodel", "fc6/weights"
        net.write_caffemodel(path)
        nbytes = net.weights["fc6"][0].nbytes
        assert net.parameter_count * 4 > 8 * nbytes  # the file is far more than the tensor
    child = textwrap.dedent(
        """
        import sys, numpy as np, weightconv
        with weightconv.open(sys.argv[1]) as f:
            if sys.argv[2] != "-":
                assert np.isfinite(float(np.asarray(f.get_tensor(sys.argv[2])).sum()))
        print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))
        """
    )

    def peak(tensor: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", child, str(path), tensor], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1]) * 1024

    added = peak(name) - peak("-")
    assert added < 1.5 * nbytes, f"{added / (1 << 20):.1f} MiB for a {nbytes >> 20} MiB tensor"


def test_state_dict_keys_are_the_names_open_lists(tmp_path):
    """A .pt or a torch-layout safetensors file is opened by its own keys, as torch.load
    and safetensors' safe_open list them, not by our layer/role names."""
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file

    state = {
        "features.0.weight": np.arange(108, dtype=np.float32).reshape(4, 3, 3, 3),
        "features.0.bias": np.arange(4, dtype=np.float32),
        "classifier.weight": np.ones((10, 4), np.float32),
    }
    pt, st = tmp_path / "m.pt", tmp_path / "m.safetensors"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pt)
    save_file(state, st, metadata={"format": "pt"})
    for path in (pt, st):
        with weightconv.open(path) as f:
            assert sorted(f.keys()) == sorted(state), path
            for name, array in state.items():
                assert np.array_equal(f.get_tensor(name), array), (path, name)
        assert sorted(weightconv.load_dict(path)) == sorted(state)


def test_a_plain_state_dict_saves_to_a_pt_torch_loads_as_given(tmp_path):
    torch = pytest.importorskip("torch")
    state = {
        "features.0.weight": np.arange(108, dtype=np.float32).reshape(4, 3, 3, 3),
        "features.0.bias": np.arange(4, dtype=np.float32),
        "classifier.weight": np.arange(40, dtype=np.float32).reshape(10, 4),
    }
    path = tmp_path / "m.pt"
    weightconv.save_dict(state, path)
    loaded = torch.load(path, weights_only=True)
    assert sorted(loaded) == sorted(state)
    for name, array in state.items():
        assert np.array_equal(loaded[name].numpy(), array), name  # no layout change
    assert sorted(weightconv.load_dict(path)) == sorted(state)
