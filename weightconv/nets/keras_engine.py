"""The Keras engine: a `Graph` as a Keras 3 functional model, with Caffe's exact semantics.

Every layer of the graph becomes Keras layers on NHWC blobs (a blob of any other rank keeps
Caffe's layout): explicit padding (``ZeroPadding2D``, never ``"same"``), ``Conv2D`` with
``groups`` and ``dilation_rate`` (a convolution both strided and dilated runs at stride 1 and
is subsampled, which is the same sum), Deconvolution as ``Conv2DTranspose`` (one per group)
cropped to Caffe's size, pooling with Caffe's ceil rule and AVE divisor, LRN with Caffe's
own parameters, BatchNorm (``BatchNormalization`` without centre or scale, Caffe's epsilon),
Scale/Bias, Eltwise with coefficients, PReLU, and the shape layers with Caffe's axes
translated to NHWC. Flatten and Reshape give Caffe's C, H, W order (the blob goes back to
NCHW first); an InnerProduct fed a spatial blob flattens NHWC, the H, W, C order its
canonical kernel has, as the NumPy engine does. The layer by layer translation is in
`weightconv.nets.keras_ops`, the layers Keras lacks in `weightconv.nets.keras_layers`. A
layer Keras cannot compute exactly is refused, naming it.

Each layer's last Keras layer is named after the Caffe layer (characters Keras refuses,
such as ``/``, become ``_``; a layer with several tops gets ``__0``, ``__1``...), so a saved
model's blobs can be found again (`model_blobs`). Keras is imported when a model is built.

Example::

    graph = Graph.from_prototxt("deploy.prototxt")
    weights = bind(graph, weightconv.load("converted.npy"))
    model = keras_model(graph, weights)          # NHWC in, the net's output blobs out
    blobs = run(graph, weights, {"data": nchw}).blobs   # NCHW, as numpy_engine.run gives
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from weightconv.errors import UsageError
from weightconv.nets.graph import Graph
from weightconv.nets.graph_weights import GraphWeights
from weightconv.nets.keras_ops import (
    NHWC_AXIS,
    Builder,
    keras_shape,
    layer_names,
    to_caffe_layout,
    to_keras_layout,
)
from weightconv.nets.numpy_engine import Run, check_inputs


def import_keras() -> Any:
    """Keras 3 (TensorFlow's start-up logs quieted); a UsageError naming the extra."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        from weightconv.nets.tf_ops import import_tensorflow

        import_tensorflow()
    try:
        import keras
    except ImportError as exc:
        raise UsageError(
            f"the Keras engine needs Keras 3 ({exc}); pip install 'weightconv[tf]'"
        ) from None
    if int(str(keras.__version__).split(".")[0]) < 3:
        raise UsageError(f"the Keras engine needs Keras 3; this is Keras {keras.__version__}")
    return keras


def keras_model(
    graph: Graph,
    weights: GraphWeights | None,
    *,
    outputs: Sequence[str] | None = None,
    name: str = "caffe_graph",
) -> Any:
    """A ``keras.Model`` computing `graph` (NHWC inputs, in the graph's input order) with
    `weights` set (None: Keras's initial values); its outputs are `outputs` (default the
    graph's outputs), in order."""
    return _build(graph, weights, _wanted(graph, outputs), False, name)[0]


def _build(
    graph: Graph, weights: GraphWeights | None, wanted: list[str], trace: bool, name: str
) -> tuple[Any, list[tuple[str, int]], list[int]]:
    """(model, what each key is: (blob, -1) or, for a trace, (node name, top index), and
    the model output each key reads)."""
    keras = import_keras()
    inputs, tops, env = Builder(keras, graph, weights).build()
    keys: list[tuple[str, int]] = [(blob, -1) for blob in wanted]
    tensors = [env[blob] for blob in wanted]
    if trace:
        for node in graph.nodes:
            for index, tensor in enumerate(tops[node.name]):
                keys.append((node.name, index))
                tensors.append(tensor)
    unique: list[Any] = []
    for tensor in tensors:
        if not any(tensor is seen for seen in unique):
            unique.append(tensor)
    model = keras.Model(inputs, unique, name=re.sub(r"[^A-Za-z0-9_.\-]", "_", name))
    positions = [next(i for i, seen in enumerate(unique) if seen is t) for t in tensors]
    return model, keys, positions


def predict(model: Any, graph: Graph, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """`model` run on NCHW `inputs` (checked against the graph); its outputs as arrays in
    Keras layout."""
    import keras

    feed = check_inputs(graph, inputs)
    given = [to_keras_layout(feed[blob]) for blob in graph.inputs]
    result = model(given, training=False)
    if not isinstance(result, list | tuple):
        result = [result]
    return [np.asarray(keras.ops.convert_to_numpy(r), dtype=np.float32) for r in result]


def run(
    graph: Graph,
    weights: GraphWeights,
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    keep: str = "outputs",
) -> Run:
    """`weightconv.nets.numpy_engine.run` in Keras: the requested blobs (NCHW) and, with
    ``keep="layers"``, every layer's tops."""
    wanted = _wanted(graph, outputs)
    model, keys, positions = _build(graph, weights, wanted, keep == "layers", "caffe_graph")
    return _collect(keys, positions, predict(model, graph, inputs))


def model_blobs(
    model: Any,
    graph: Graph,
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    keep: str = "outputs",
) -> Run:
    """A model `keras_model` built for `graph` (e.g. loaded from a ``.keras``) run on NCHW
    `inputs`: the blobs asked for, found by the layers' names, and with ``keep="layers"``
    every layer's tops. A model that lacks a layer of the graph is refused, naming it."""
    keras = import_keras()
    names = layer_names(graph)
    wanted = _wanted(graph, outputs)

    def tensor(key: tuple[str, int]) -> Any:
        try:
            found = model.get_layer(names[key])
        except ValueError:
            raise UsageError(
                f"the Keras model {model.name!r} has no layer {names[key]!r}; it was not "
                f"built from this graph ({os.path.basename(graph.source) or graph.source}); "
                f"to run the weights it holds instead, use the NumPy engine"
            ) from None
        return found.output

    input_keys = {blob: ("", i) for i, blob in enumerate(graph.inputs)}
    keys: list[tuple[str, int]] = [(blob, -1) for blob in wanted]
    wanted_tensors = []
    for blob in wanted:
        node = graph.producer(blob)
        key = input_keys[blob] if node is None else (node.name, node.tops.index(blob))
        wanted_tensors.append(tensor(key))
    if keep == "layers":
        for node in graph.nodes:
            for index in range(len(node.tops)):
                keys.append((node.name, index))
                wanted_tensors.append(tensor((node.name, index)))
    sub = keras.Model([tensor(input_keys[blob]) for blob in graph.inputs], wanted_tensors)
    return _collect(keys, list(range(len(keys))), predict(sub, graph, inputs))


def _wanted(graph: Graph, outputs: Sequence[str] | None) -> list[str]:
    wanted = list(dict.fromkeys(outputs if outputs is not None else graph.outputs))
    known = set(graph.blobs())
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise UsageError(
            f"no blob {', '.join(map(repr, unknown))} in the graph (outputs: "
            f"{', '.join(graph.outputs)})"
        )
    return wanted


def _collect(keys: list[tuple[str, int]], positions: list[int], arrays: list[np.ndarray]) -> Run:
    result = Run({})
    layers: dict[str, list[np.ndarray]] = {}
    for (key, index), position in zip(keys, positions, strict=True):
        value = to_caffe_layout(arrays[position])
        if index < 0:
            result.blobs[key] = value
        else:
            layers.setdefault(key, []).append(value)
    result.layers = {name: tuple(values) for name, values in layers.items()}
    return result


__all__ = [
    "NHWC_AXIS",
    "import_keras",
    "keras_model",
    "keras_shape",
    "layer_names",
    "model_blobs",
    "predict",
    "run",
    "to_caffe_layout",
    "to_keras_layout",
]
