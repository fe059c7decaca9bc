"""Proof of a conversion: the converted weights run against the source model's predictions
(OpenCV's Caffe importer) or a reference card."""

from weightconv.verify.core import (
    IMAGENET_MEAN_BGR,
    Preprocessing,
    Tolerance,
    VerifyResult,
    verify,
    write_card,
)

__all__ = [
    "IMAGENET_MEAN_BGR",
    "Preprocessing",
    "Tolerance",
    "VerifyResult",
    "verify",
    "write_card",
]
