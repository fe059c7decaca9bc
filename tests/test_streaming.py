"""Every route streams: peak memory near one tensor, whatever the model's size.

Each conversion runs in a child process whose peak RSS (its own VmHWM: ru_maxrss would count
this process's pages, which a child starts with until it execs) is compared with the same
child doing nothing but importing what the route imports: what the conversion adds must stay
under the largest tensor plus a little, and well under the model. The model is a synthetic
VGG16 at a quarter width with extra fully-connected layers, so it is several times its
largest tensor.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import weightconv
from weightconv.model import FilledTensor
from weightconv.model.canonical import canonical_layers, to_canonical
from weightconv.testing import synthetic

MiB = 1 << 20
#: What a conversion may hold beyond its largest tensor: HDF5 and protobuf working memory,
#: buffers, a few pages per thread (measured: 14 to 19 MiB in all, with the 6 MiB tensor).
SLACK = 32 * MiB

CHILD = textwrap.dedent(
    """
    import json, sys
    import weightconv, weightconv.cli, concurrent.futures
    from google.protobuf import text_format
    from weightconv import formats
    from weightconv._proto import caffe_pb2, tf_checkpoint_pb2
    for row in formats.FORMATS:  # every reader and writer, so the baseline has their code
        row.implementation()
    if sys.argv[1] == "convert":
        weightconv.convert(sys.argv[2], sys.argv[3], **json.loads(sys.argv[4]))
    with open("/proc/self/status") as status:
        print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
    """
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streaming")
    net = synthetic.build("vgg16", width=0.125, extra_fc=100, seed=3)
    model = folder / "m.caffemodel"
    net.write_caffemodel(model)
    prototxt = folder / "m.prototxt"
    prototxt.write_text(net.deploy_prototxt)
    weightconv.convert(model, folder / "m.npy", prototxt=prototxt)
    weightconv.convert(folder / "m.npy", folder / "ckpt" / "m.ckpt")
    weightconv.convert(folder / "m.npy", folder / "m.h5")
    largest = max(
        int(np.prod(shape)) * 4 for shapes in net.blob_shapes().values() for shape in shapes
    )
    return {
        "folder": folder,
        "prototxt": prototxt,
        "largest": largest,
        "total": net.parameter_count * 4,
    }


def _peak(*arguments: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *arguments], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]) * 1024


ROUTES = [
    ("m.caffemodel", "out.npy", True),
    ("m.caffemodel", "out/o.ckpt", True),
    ("m.caffemodel", "out.weights.h5", True),
    ("m.caffemodel", "out.safetensors", True),
    ("m.caffemodel", "out.npz", True),
    ("m.npy", "out.npz", False),
    ("ckpt/m.ckpt", "out.npz", False),
    ("m.npy", "out/o.ckpt", False),
    ("m.npy", "out.weights.h5", False),
    ("ckpt/m.ckpt", "out.npy", False),
    ("m.h5", "out.npy", False),
    # The canonical layout back to PyTorch's: every kernel transposed, fc6's rows reordered.
    ("m.npy", "out.pt", False),
    ("ckpt/m.ckpt", "out.pt", False),
    ("m.h5", "out.pt", False),
]
#: fc6's input at an eighth of VGG16's width: pool5's 64 channels of 7x7.
TORCH_INPUTS = {"fc6": [64, 7, 7]}


@pytest.mark.parametrize(("source", "target", "caffe"), ROUTES)
def test_a_route_holds_about_one_tensor(files, source, target, caffe, tmp_path):
    options: dict[str, object] = {"prototxt": str(files["prototxt"])} if caffe else {}
    if target.endswith(".pt"):
        options["torch_dense_inputs"] = TORCH_INPUTS
    baseline = _peak("import")
    peak = _peak(
        "convert", str(files["folder"] / source), str(tmp_path / target), json.dumps(options)
    )
    added = peak - baseline
    assert files["total"] > 2 * (files["largest"] + SLACK)  # streaming shows: far more
    assert added <= files["largest"] + SLACK, (
        f"{source} -> {target}: {added / MiB:.0f} MiB over the imports; the largest tensor "
        f"is {files['largest'] / MiB:.0f} MiB, the model {files['total'] / MiB:.0f} MiB"
    )


def test_converted_caffe_kernels_are_made_only_when_asked_for(files):
    weights = weightconv.load(files["folder"] / "m.caffemodel", prototxt=files["prototxt"])
    for layer in canonical_layers(weights):
        kernel = layer.tensors["weights"]
        assert isinstance(kernel, FilledTensor), layer.name
        raw = next(x for x in weights.layers if x.name == layer.name)
        expected = np.asarray(to_canonical(raw).tensors["weights"])
        assert kernel.shape == expected.shape and kernel.dtype == expected.dtype
        assert np.array_equal(np.asarray(kernel), expected)
        into = np.empty(kernel.shape, kernel.dtype)
        kernel.fill(into)
        assert np.array_equal(into, expected)


def test_contiguous_h5_datasets_are_read_as_views_of_the_file(files):
    weights = weightconv.load(files["folder"] / "m.h5")
    fc6 = np.asarray(weights["fc6"].tensors["weights"])
    base = fc6
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert type(getattr(base, "obj", base)).__name__ == "mmap"
    assert not fc6.flags.writeable


def test_h5_outputs_are_filled_after_hdf5_closes_and_equal_the_npy(files, tmp_path):
    for source in ("m.caffemodel", "m.npy"):
        options = {"prototxt": files["prototxt"]} if source.endswith("caffemodel") else {}
        out = tmp_path / f"{Path(source).stem}-{source.rsplit('.', 1)[1]}.weights.h5"
        weightconv.convert(files["folder"] / source, out, **options)
        back = weightconv.load(out)
        reference = np.load(files["folder"] / "m.npy", allow_pickle=True).item()
        for name, arrays in reference.items():
            assert np.array_equal(np.asarray(back[name].tensors["weights"]), arrays[0]), name
            assert np.array_equal(np.asarray(back[name].tensors["biases"]), arrays[1]), name


def test_a_large_dense_layer_back_to_torch_layout_holds_about_one_tensor(tmp_path):
    """fc6 of VGG16 at half width, 103 MB: reordered H,W,C -> C,H,W and transposed for a .pt,
    the conversion adds one tensor, not the two (or the whole mapped input) it once did."""
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((256 * 7 * 7, 2048), dtype=np.float32)
    source = tmp_path / "fc6.npy"
    weightconv.save_dict({"fc6/weights": weights, "fc6/biases": np.zeros(2048, np.float32)}, source)
    baseline = _peak("import")
    options = json.dumps({"torch_dense_inputs": {"fc6": [256, 7, 7]}})
    peak = _peak("convert", str(source), str(tmp_path / "fc6.pt"), options)
    added = peak - baseline
    assert added <= weights.nbytes + SLACK, f"{added / MiB:.0f} MiB over the imports"
    loaded = torch.load(tmp_path / "fc6.pt", weights_only=True)["fc6.weight"].numpy()
    expected = weights.reshape(7, 7, 256, 2048).transpose(3, 2, 0, 1).reshape(2048, -1)
    np.testing.assert_array_equal(loaded, expected)
