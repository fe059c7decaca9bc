"""The ImageNet class names, for reports and cards."""

from __future__ import annotations

import functools
from importlib import resources


def imagenet_labels() -> list[str]:
    """The 1000 ILSVRC-2012 class names in index order (shipped with the package; from
    caffe-tensorflow's examples/imagenet/imagenet-classes.txt)."""
    return list(_imagenet_labels())


@functools.cache
def _imagenet_labels() -> tuple[str, ...]:
    text = resources.files("weightconv").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def class_label(index: int, num_classes: int | None) -> str:
    """The ImageNet name of `index` for a 1000-class model, else ``class <index>``."""
    labels = _imagenet_labels()
    if num_classes == len(labels) and 0 <= index < len(labels):
        return labels[index]
    return f"class {index}"


__all__ = ["class_label", "imagenet_labels"]
