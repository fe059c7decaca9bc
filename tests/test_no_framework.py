"""No framework on the read, write and inspect paths: a fresh process reads, writes and inspects
every format (writing ONNX into a template) and, at the end, has imported none of torch,
TensorFlow, Keras or ONNX Runtime. The onnx and safetensors packages are format libraries and
may be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weightconv.testing import synthetic

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("torch", "tensorflow", "keras", "tf_keras", "onnxruntime")

CHILD = """
import json, sys
from pathlib import Path

import numpy as np

import weightconv
from weightconv.testing import synthetic

root = Path(sys.argv[1])
net = synthetic.build("lenet", width=0.25, num_classes=10, seed=0)
model, prototxt = root / "m.caffemodel", root / "deploy.prototxt"
net.write_caffemodel(model)
prototxt.write_text(net.deploy_prototxt)
outputs = ["m.npy", "m.ckpt", "m.weights.h5", "m.h5", "m.pt", "m.safetensors", "m.npz", "m.onnx"]
for name in outputs:
    extra = {"model": root / "template.onnx"} if name.endswith(".onnx") else {}
    weightconv.convert(model, root / name, prototxt=prototxt, **extra)
for path in [model, *(root / name for name in outputs)]:
    weights = weightconv.load(path)
    for _layer, _role, tensor in weights.tensors():
        np.asarray(tensor)
    weightconv.inspect(path)
    if path.suffix in (".npy", ".ckpt", ".onnx"):  # the others' fc rows need ip1's input
        weightconv.inspect(path, canonical=True)
weightconv.inspect(model, canonical=True, prototxt=prototxt)
report = weightconv.diff(root / "m.npy", root / "m.onnx")
assert report.equal, [row for row in report.tensors if row.status != "equal"]
frameworks = %r
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in frameworks)))
"""


def _lenet_template(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    shapes = synthetic.build("lenet", width=0.25, num_classes=10, seed=0).blob_shapes()
    inits, nodes, blob = [], [], "data"
    for name in ("conv1", "conv2", "ip1", "ip2"):
        weights, biases = (s for s in shapes[name])
        inits.append(numpy_helper.from_array(_zeros(weights), f"{name}.weight"))
        inits.append(numpy_helper.from_array(_zeros(biases), f"{name}.bias"))
        op = "Conv" if name.startswith("conv") else "Gemm"
        extra = {"transB": 1} if op == "Gemm" else {}
        nodes.append(
            helper.make_node(op, [blob, f"{name}.weight", f"{name}.bias"], [name], **extra)
        )
        blob = name
        if op == "Conv":
            nodes.append(
                helper.make_node(
                    "MaxPool", [blob], [f"{name}p"], kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            blob = f"{name}p"
        if name == "conv2":
            nodes.append(helper.make_node("Flatten", [blob], ["flat"], axis=1))
            blob = "flat"
    graph = helper.make_graph(
        nodes,
        "lenet",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info(blob, TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _zeros(shape):
    import numpy as np

    return np.zeros(shape, np.float32)


def test_reading_writing_and_inspecting_every_format_imports_no_framework(tmp_path):
    _lenet_template(tmp_path / "template.onnx")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    result = subprocess.run(
        [sys.executable, "-c", CHILD % (FRAMEWORKS,), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
