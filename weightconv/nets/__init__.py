"""Built-in network graphs that run converted weights, for verification.

`alexnet` builds AlexNet and CaffeNet with Caffe's semantics (symmetric padding, ceil-mode
max pooling, grouped convolution, Caffe's LRN translated to TensorFlow's) from a WeightSet
read from any format: `architecture` describes the chain (from a deploy prototxt or BVLC's
definitions), `params` fits the weights to it, `tf_ops` holds the TensorFlow side and
`keras_model` the Keras export. TensorFlow is imported only when a graph is run or a Keras
model built.

Example::

    from weightconv.nets import AlexNet
    net = AlexNet.from_weights("alexnet.npy", prototxt="deploy.prototxt")
    probabilities = net.probabilities(images_nhwc)
"""

from __future__ import annotations

from weightconv.nets.alexnet import AlexNet, describe, softmax
from weightconv.nets.architecture import VARIANTS, Architecture, Step, net_input_size

__all__ = ["VARIANTS", "AlexNet", "Architecture", "Step", "describe", "net_input_size", "softmax"]
