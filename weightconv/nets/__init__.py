"""Network graphs that run converted weights, for verification.

`graph` describes any Caffe deploy net (V0/V1/V2) as one graph of Caffe layers with their
parameters, inputs, outputs and blob shapes; `graph_weights` finds the canonical-layout
weights of its layers in a WeightSet; `numpy_engine` (ops in `numpy_ops`) runs it in NumPy,
float32, with Caffe's exact semantics. `keras_engine` builds the same graph as a Keras 3
functional model (NHWC, the same semantics; the layers Keras lacks are in `keras_layers`,
which a process loading a saved model imports) and `keras_export` saves it as a runnable
``.keras``; Keras is imported only when a model is built or loaded.

`alexnet` builds AlexNet and CaffeNet with Caffe's semantics (symmetric padding, ceil-mode
max pooling, grouped convolution, Caffe's LRN translated to TensorFlow's) from a WeightSet
read from any format: `architecture` describes the chain (from a deploy prototxt or BVLC's
definitions), `params` fits the weights to it, `tf_ops` holds the TensorFlow side and
`keras_model` the Keras export. TensorFlow is imported only when a graph is run or a Keras
model built.

Example::

    graph = Graph.from_prototxt("deploy.prototxt")
    blobs = run(graph, bind(graph, weightconv.load("converted.npy")), {"data": nchw}).blobs

    from weightconv.nets import AlexNet
    net = AlexNet.from_weights("alexnet.npy", prototxt="deploy.prototxt")
    probabilities = net.probabilities(images_nhwc)
"""

from __future__ import annotations

from weightconv.nets.alexnet import AlexNet, describe, softmax
from weightconv.nets.architecture import VARIANTS, Architecture, Step, net_input_size
from weightconv.nets.graph import Graph
from weightconv.nets.graph_weights import GraphWeights, bind
from weightconv.nets.node import Node
from weightconv.nets.numpy_engine import run

__all__ = [
    "VARIANTS",
    "AlexNet",
    "Architecture",
    "Graph",
    "GraphWeights",
    "Node",
    "Step",
    "bind",
    "describe",
    "net_input_size",
    "run",
    "softmax",
]
