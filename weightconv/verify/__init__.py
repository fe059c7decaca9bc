"""Proof of a conversion: the converted weights run against the source model's predictions
(OpenCV's Caffe importer) or a reference card.

- `inputs`: image files or synthetic images, preprocessed as Caffe's examples do;
- `predictions`: what OpenCV, the built-in graph or a card predicts on them;
- `comparison`: image by image, top-k classes and probabilities, and the verdict;
- `cards`: reference cards, written from a source model and read back;
- `verification`: `verify`, which puts them together.

Example::

    result = verify("alexnet.npy", against="alexnet.caffemodel", prototxt="deploy.prototxt")
    print(result.report())
    sys.exit(result.exit_code)          # 0 pass, 1 fail

    write_card("alexnet.caffemodel", "alexnet.card.json", prototxt="deploy.prototxt")
    verify("alexnet.ckpt", card="alexnet.card.json").exit_code
"""

from weightconv.verify.cards import CARD_FORMAT, card_inputs, load_card, write_card
from weightconv.verify.comparison import (
    PUBLISHED_CARD_TOLERANCE,
    Tolerance,
    VerifyResult,
    compare,
)
from weightconv.verify.inputs import (
    IMAGENET_MEAN_BGR,
    Inputs,
    Preprocessing,
    make_inputs,
    read_image,
    synthetic_images,
)
from weightconv.verify.labels import class_label, imagenet_labels
from weightconv.verify.predictions import (
    Predictions,
    card_predictions,
    graph_predictions,
    opencv_predictions,
)
from weightconv.verify.verification import verify

__all__ = [
    "CARD_FORMAT",
    "IMAGENET_MEAN_BGR",
    "PUBLISHED_CARD_TOLERANCE",
    "Inputs",
    "Predictions",
    "Preprocessing",
    "Tolerance",
    "VerifyResult",
    "card_inputs",
    "card_predictions",
    "class_label",
    "compare",
    "graph_predictions",
    "imagenet_labels",
    "load_card",
    "make_inputs",
    "opencv_predictions",
    "read_image",
    "synthetic_images",
    "verify",
    "write_card",
]
