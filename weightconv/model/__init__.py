"""The canonical model every reader fills and every writer lays out."""

from weightconv.model.layers import (
    CAFFE,
    CANONICAL,
    VALUE_ROLE,
    Kind,
    Layer,
    Provenance,
    SetAside,
    TensorOrigin,
    WeightSet,
    join_tensor_name,
    split_tensor_name,
)
from weightconv.model.tensors import CheckedTensor, FilledTensor, LazyTensor, Tensor

__all__ = [
    "CAFFE",
    "CANONICAL",
    "VALUE_ROLE",
    "CheckedTensor",
    "FilledTensor",
    "Kind",
    "Layer",
    "LazyTensor",
    "Provenance",
    "SetAside",
    "Tensor",
    "TensorOrigin",
    "WeightSet",
    "join_tensor_name",
    "split_tensor_name",
]
