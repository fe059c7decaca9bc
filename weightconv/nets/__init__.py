"""Built-in network graphs that run converted weights, for verification.

`alexnet` builds AlexNet and CaffeNet with Caffe's semantics (symmetric padding, ceil-mode
max pooling, grouped convolution, Caffe's LRN translated to TensorFlow's) from a WeightSet
read from any format. TensorFlow is imported only when a graph is run or a Keras model built.

Example::

    from weightconv.nets import AlexNet
    net = AlexNet.from_weights("alexnet.npy", prototxt="deploy.prototxt")
    probabilities = net.probabilities(images_nhwc)
"""

from __future__ import annotations

from weightconv.nets.alexnet import VARIANTS, AlexNet, Architecture, Step

__all__ = ["VARIANTS", "AlexNet", "Architecture", "Step"]
