"""The programs benchmarks/routes.py runs in child processes: the anchors (what a user would
otherwise run), and the steps that make and check its inputs.

They run as ``python -c SCRIPT ARGS...``. routes.py itself stays small (no numpy, no
weightconv, no hashlib): Linux gives a spawned child's ru_maxrss at least the peak RSS of the
address space it was spawned from (the benchmark's), so everything that needs those runs in
a child.
"""

NET_INFO = """
import json, sys
from weightconv.testing import synthetic
net = synthetic.build("vgg16", seed=0, extra_fc=int(sys.argv[1]), width=float(sys.argv[2]))
print(json.dumps({"parameters": net.parameter_count, "size": net.caffemodel_size(),
                  "input_shape": net.input_shape}))
"""

VERSIONS = """
import json, importlib.metadata, platform
import weightconv
from google.protobuf.internal import api_implementation
def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
print(json.dumps({
    "python": platform.python_version(),
    **{p: version(p) for p in ("numpy", "h5py", "protobuf", "tensorflow", "keras")},
    "backend": api_implementation.Type(),
    "weightconv": weightconv.__version__,
    "location": weightconv.__file__,
}))
"""

WRITE_NET = """
import sys
from pathlib import Path
from weightconv.testing import synthetic
net = synthetic.build("vgg16", seed=0, extra_fc=int(sys.argv[3]), width=float(sys.argv[4]))
net.write_caffemodel(sys.argv[1])
Path(sys.argv[2]).write_text(net.deploy_prototxt)
"""

VERIFY = """
import json, sys
import h5py
import numpy as np
import tensorflow as tf
prefix, npy, h5, parameters = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
expected = np.load(npy, allow_pickle=True).item()
reader = tf.train.load_checkpoint(prefix)
names = sorted(reader.get_variable_to_shape_map())
wanted = sorted(f"{layer}/{role}" for layer in expected for role in ("weights", "biases"))
assert names == wanted, ("checkpoint names", names, wanted)
with h5py.File(h5, "r") as f:
    text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
    layers = [text(v) for v in f.attrs["layer_names"]]
    assert layers == list(expected), ("h5 layers", layers, list(expected))
    for layer, arrays in expected.items():
        weight_names = [text(v) for v in f[layer].attrs["weight_names"]]
        assert len(weight_names) == len(arrays) == 2, (layer, weight_names)
        for name, array in zip(weight_names, arrays):
            value = f[layer][name][()]
            assert value.dtype == array.dtype and np.array_equal(value, array), ("h5", name)
count, largest = 0, ("", 0)
for layer, arrays in expected.items():
    for role, array in zip(("weights", "biases"), arrays):
        value = reader.get_tensor(f"{layer}/{role}")
        assert value.dtype == array.dtype and np.array_equal(value, array), ("ckpt", layer)
        count += array.size
        if array.nbytes > largest[1]:
            largest = (f"{layer}/{role} {'x'.join(map(str, array.shape))}", array.nbytes)
assert count == parameters, ("parameters", count, parameters)
channels = expected["conv5_3"][0].shape[-1]
side = round((expected["fc6"][0].shape[0] // channels) ** 0.5)
assert channels * side * side == expected["fc6"][0].shape[0], ("fc6 input", channels, side)
print(json.dumps({"tensors": len(names), "largest": largest[0], "largest_bytes": largest[1],
                  "fc6_input": f"{channels},{side},{side}"}))
"""

NAIVE_PROTOBUF = """
import sys
import numpy as np
from weightconv._proto import caffe_pb2
net = caffe_pb2.NetParameter()
with open(sys.argv[1], "rb") as handle:
    net.ParseFromString(handle.read())
layers = {
    layer.name: [np.array(b.data, dtype=np.float32).reshape(b.shape.dim) for b in layer.blobs]
    for layer in net.layer
    if layer.blobs
}
np.save(sys.argv[2], layers)
"""

NAIVE_PROTOBUF_TO = """
import sys
import numpy as np
from weightconv._proto import caffe_pb2
net = caffe_pb2.NetParameter()
with open(sys.argv[1], "rb") as handle:
    net.ParseFromString(handle.read())
tensors = {
    f"{layer.name}.{role}": np.array(b.data, dtype=np.float32).reshape(b.shape.dim)
    for layer in net.layer
    for role, b in zip(("weight", "bias"), layer.blobs)
}
if sys.argv[3] == "torch":
    import torch
    torch.save({name: torch.from_numpy(array) for name, array in tensors.items()}, sys.argv[2])
elif sys.argv[3] == "npz":
    np.savez(sys.argv[2], **tensors)
else:
    from safetensors.numpy import save_file
    save_file(tensors, sys.argv[2], metadata={"format": "pt"})
"""

NPY_TO_SAFETENSORS = """
import sys
import numpy as np
weights = np.load(sys.argv[1], allow_pickle=True).item()
tensors = {f"{layer}/{role}": array for layer, pair in weights.items()
           for role, array in zip(("weights", "biases"), pair)}
if sys.argv[2].endswith(".npz"):
    np.savez(sys.argv[2], **tensors)
else:
    from safetensors.numpy import save_file
    save_file(tensors, sys.argv[2], metadata={"format": "tf"})
"""

NPY_TO_TORCH = """
import sys
import numpy as np
import torch
weights = np.load(sys.argv[1], allow_pickle=True).item()
c, h, w = (int(v) for v in sys.argv[3].split(","))
state = {}
for layer, (kernel, bias) in weights.items():
    if kernel.ndim == 4:
        kernel = kernel.transpose(3, 2, 0, 1)
    elif layer == "fc6":
        kernel = kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
    else:
        kernel = kernel.T
    state[f"{layer}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
    state[f"{layer}.bias"] = torch.from_numpy(bias)
torch.save(state, sys.argv[2])
"""

TF_SAVE = """
import sys
import numpy as np
import tensorflow as tf
weights = np.load(sys.argv[1], allow_pickle=True).item()
variables = {}
for layer, (w, b) in weights.items():
    variables[f"{layer}/weights"] = tf.Variable(w)
    variables[f"{layer}/biases"] = tf.Variable(b)
tf.compat.v1.train.Saver(var_list=variables).save(None, sys.argv[2])
"""

TF_READ_SAVE = """
import sys
import numpy as np
import tensorflow as tf
reader = tf.train.load_checkpoint(sys.argv[1])
layers = {}
for name in reader.get_variable_to_shape_map():
    layer, role = name.rsplit("/", 1)
    layers.setdefault(layer, {})[role] = reader.get_tensor(name)
np.save(sys.argv[2], {layer: [t["weights"], t["biases"]] for layer, t in layers.items()})
"""

KERAS_SAVE = """
import sys
import numpy as np
import keras
weights = np.load(sys.argv[1], allow_pickle=True).item()
layers, block = [keras.Input(tuple(int(v) for v in sys.argv[3].split(",")))], None
for name, (kernel, bias) in weights.items():
    if name.startswith("conv"):
        if block is not None and name.split("_")[0] != block:
            layers.append(keras.layers.MaxPooling2D(2))
        block = name.split("_")[0]
        layers.append(
            keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], padding="same", name=name)
        )
    else:
        if block is not None:
            layers += [keras.layers.MaxPooling2D(2), keras.layers.Flatten()]
            block = None
        layers.append(keras.layers.Dense(kernel.shape[-1], name=name))
model = keras.Sequential(layers)
model.set_weights([array for pair in weights.values() for array in pair])
model.save_weights(sys.argv[2])
"""

H5PY_READ = """
import sys
import h5py
import numpy as np
arrays = {}
with h5py.File(sys.argv[1], "r") as f:
    f.visititems(lambda name, o: arrays.update({name: o[()]}) if isinstance(o, h5py.Dataset) else None)
np.save(sys.argv[2], arrays)
"""  # noqa: E501
