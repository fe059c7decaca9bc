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
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
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
    yield {
        "folder": folder,
        "prototxt": prototxt,
        "largest": largest,
        "total": net.parameter_count * 4,
    }
    shutil.rmtree(folder, ignore_errors=True)


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


#: fc6 of VGG16 at half width, 103 MB, and the input it reads: large enough that a route
#: holding one copy too many, or the mapped input, shows over `SLACK`.
FC6_INPUT = [256, 7, 7]
DENSE = {"fc6": FC6_INPUT}


@pytest.fixture(scope="module")
def fc6(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fc6")
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((256 * 7 * 7, 2048), dtype=np.float32)
    source = folder / "fc6.npy"
    weightconv.save_dict({"fc6/weights": weights, "fc6/biases": np.zeros(2048, np.float32)}, source)
    weightconv.convert(source, folder / "fc6.safetensors")
    weightconv.convert(source, folder / "fc6.npz")
    weightconv.convert(source, folder / "fc6.pt", torch_dense_inputs={"fc6": FC6_INPUT})
    _onnx_gemm(folder / "fc6.onnx", weights.reshape(7, 7, 256, 2048).transpose(3, 2, 0, 1))
    yield folder, weights
    shutil.rmtree(folder, ignore_errors=True)


def _onnx_gemm(path: Path, kernel: np.ndarray) -> None:
    """A model of one Gemm over a (1, C, H, W) input flattened, its (out, C*H*W) kernel held
    inline (raw_data), as torch.onnx.export writes a model under 2 GB."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    out = kernel.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"]),
            helper.make_node("Gemm", ["flat", "fc6.weight", "fc6.bias"], ["y"], transB=1),
        ],
        "fc6",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *kernel.shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out])],
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray(kernel.reshape(out, -1)), "fc6.weight"),
            numpy_helper.from_array(np.zeros(out, np.float32), "fc6.bias"),
        ],
    )
    onnx.save(helper.make_model(graph), str(path))


#: (source, target, options, what the route may add beyond SLACK: a reordered tensor or
#: nothing, the bytes being copied file to file).
LARGE_ROUTES = [
    # The canonical layout to PyTorch's: H,W,C -> C,H,W and transposed.
    ("fc6.npy", "out.pt", {"torch_dense_inputs": {"fc6": FC6_INPUT}}, 1),
    ("fc6.npz", "out.pt", {"torch_dense_inputs": {"fc6": FC6_INPUT}}, 1),
    # PyTorch's layout to the canonical one, from storages checked against their CRC-32.
    ("fc6.pt", "out.npy", {"dense_inputs": {"fc6": FC6_INPUT}}, 1),
    # Nothing to reorder: the tensor's bytes are copied, never held.
    ("fc6.safetensors", "out.npy", {}, 0),
    ("fc6.safetensors", "out.weights.h5", {}, 0),
    ("fc6.npz", "out.npy", {}, 0),
    ("fc6.npz", "o/out.ckpt", {}, 0),
    # ONNX initializers held inline: parsed without them, each a view of the mapped model.
    ("fc6.onnx", "out.npy", {"dense_inputs": {"fc6": FC6_INPUT}}, 1),
    ("fc6.onnx", "out.safetensors", {}, 0),
    # Into an ONNX template held inline, parsed without its data; ours to the data file, or
    # inline, each tensor written at its place in the model (protobuf's encoding of the whole
    # model, and the checker's parse of it, held it twice over: 1.6 GB for a 553 MB model).
    (
        "fc6.npy",
        "out.onnx",
        {
            "model": "{folder}/fc6.onnx",
            "external_data": "always",
            "torch_dense_inputs": {"fc6": FC6_INPUT},
        },
        1,
    ),
    ("fc6.npy", "out.onnx", {"model": "{folder}/fc6.onnx", "torch_dense_inputs": DENSE}, 1),
    ("fc6.onnx", "out.onnx", {"model": "{folder}/fc6.onnx", "dense_inputs": DENSE}, 1),
]


@pytest.mark.parametrize(("source", "target", "options", "tensors"), LARGE_ROUTES)
def test_a_large_tensor_is_held_at_most_once(fc6, tmp_path, source, target, options, tensors):
    """What a route adds for a 103 MB fc6: one tensor where it reorders it, none where it
    copies it; once it added two (a copy read from the file and the reordered one), or the
    whole mapped input."""
    folder, weights = fc6
    baseline = _peak("import")
    given = json.dumps(options).replace("{folder}", str(folder))
    peak = _peak("convert", str(folder / source), str(tmp_path / target), given)
    added = peak - baseline
    assert added <= tensors * weights.nbytes + SLACK, f"{added / MiB:.0f} MiB over the imports"
    torch_layout = weights.reshape(7, 7, 256, 2048).transpose(3, 2, 0, 1).reshape(2048, -1)
    if target.endswith(".pt"):
        loaded = torch.load(tmp_path / target, weights_only=True)["fc6.weight"].numpy()
        np.testing.assert_array_equal(loaded, torch_layout)
    elif source.endswith(".onnx") and target.endswith(".safetensors"):  # kept in its layout
        loaded = safetensors.numpy.load_file(tmp_path / target)["fc6.weight"]
        np.testing.assert_array_equal(loaded, torch_layout)
    elif target.endswith(".onnx"):
        onnx = pytest.importorskip("onnx")
        from onnx import numpy_helper

        model = onnx.load(str(tmp_path / target))
        kernel = next(i for i in model.graph.initializer if i.name == "fc6.weight")
        np.testing.assert_array_equal(numpy_helper.to_array(kernel), torch_layout)
    else:
        back = weightconv.load(tmp_path / target)["fc6"].tensors["weights"]
        assert np.array_equal(np.asarray(back), weights)
