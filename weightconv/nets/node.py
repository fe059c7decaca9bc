"""A layer of a `weightconv.nets.graph.Graph`: its Caffe type, links and parameters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Layer types that hold weights, and the roles of their tensors in canonical layout.
WEIGHTED_TYPES = {
    "Convolution": ("weights", "biases"),
    "Deconvolution": ("weights", "biases"),
    "InnerProduct": ("weights", "biases"),
    "PReLU": ("alpha",),
    "BatchNorm": ("mean", "variance"),
    "Scale": ("scale", "offset"),
    "Bias": ("biases",),
}


@dataclass(frozen=True)
class Node:
    """One layer of the graph: its Caffe type, the blobs it reads and writes (a top equal to
    a bottom is in place), and its parameters with Caffe's defaults."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def weighted(self) -> bool:
        """Whether the layer reads weights (a Scale or Bias with a second bottom does not
        read its scale or bias from weights, but may still hold a bias)."""
        if self.type not in WEIGHTED_TYPES:
            return False
        if self.type == "Bias" and len(self.bottoms) > 1:
            return False
        return not (
            self.type == "Scale" and len(self.bottoms) > 1 and not self.params.get("bias_term")
        )

    def roles(self) -> tuple[str, ...]:
        """The canonical roles of the tensors this node needs."""
        p = self.params
        if self.type in ("Convolution", "Deconvolution", "InnerProduct"):
            return ("weights", "biases") if p.get("bias_term", True) else ("weights",)
        if self.type == "Scale":
            own = ("scale",) if len(self.bottoms) == 1 else ()
            return (*own, "offset") if p.get("bias_term") else own
        if self.type == "Bias":
            return ("biases",) if len(self.bottoms) == 1 else ()
        return WEIGHTED_TYPES.get(self.type, ())


__all__ = ["WEIGHTED_TYPES", "Node"]
