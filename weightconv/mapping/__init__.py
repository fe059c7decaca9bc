"""From the tensors a file holds to the tensors another format or network expects.

A `Mapping` turns a WeightSet (in any layout) into the WeightSet a writer lays out:
canonical layout, then the rules the user asked for, each by name and shape:

- name schemes: ``keep`` (as the source names them), ``tf1`` (``conv1_1/weights``), ``slim``
  (``vgg_16/conv1/conv1_1/weights``), ``keras`` (``conv1/kernel``); a scope prefix;
- fully-connected layers as slim's convolutions (``fc6`` (25088, 4096) <-> (7, 7, 512, 4096))
  and back;
- BGR <-> RGB on the first convolution's input channels, from the recorded source order;
- grouped convolutions split into per-group kernels (``conv2_group0``, ``conv2_group1``) or
  merged back;
- a user map file (JSON or TOML) with regex renames, skips and per-tensor transforms.

Nothing is computed until a writer asks for a tensor: the mapped tensors are `LazyTensor`s,
and the last converted source layer is the only one kept, so memory stays near one layer.
`Mapping.explain` lists every output tensor with its source, shapes and transforms.

Example::

    mapping = Mapping(names="slim", net="vgg_16", fc_as_conv=True)
    mapped = mapping.apply(weightconv.load("vgg16.caffemodel", prototxt="deploy.prototxt"))
    weightconv.save(mapped, "vgg_16.ckpt")
"""

from __future__ import annotations

from typing import Any

from weightconv.errors import UsageError
from weightconv.mapping.mapper import Mapper, listed
from weightconv.mapping.options import MappingOptions
from weightconv.mapping.rules import (
    CHANNEL_ORDERS,
    NAME_SCHEMES,
    RULES,
    TRANSFORM_KEYS,
    MapFile,
    TensorRule,
)
from weightconv.model import WeightSet

__all__ = [
    "CHANNEL_ORDERS",
    "NAME_SCHEMES",
    "RULES",
    "TRANSFORM_KEYS",
    "MapFile",
    "Mapping",
    "TensorRule",
]


class Mapping(MappingOptions):
    """What to do to a WeightSet on its way to a writer; see the module docstring."""

    def apply(self, weights: WeightSet) -> WeightSet:
        """The mapped WeightSet, in canonical layout, its tensors computed on demand.

        A rule that was asked for and changes nothing (`split_groups` when no convolution is
        grouped, `fc_as_conv` when no layer matches `fc_pattern`, ...) is a UsageError: an
        option is applied or refused, never quietly ignored.
        """
        mapped, unused = self.plan(weights)
        if unused:
            where = weights.source.path if weights.source else "the weights"
            name = unused[0]
            value = self.changed()[name]
            raise UsageError(f"{name}={value}: {RULES[name]} in {where}")
        return mapped

    def plan(self, weights: WeightSet) -> tuple[WeightSet, list[str]]:
        """The mapped WeightSet and the rules asked for that changed nothing in it."""
        mapper = Mapper(self, weights)
        mapped = mapper.run()
        asked = [name for name in RULES if name in self.changed()]
        return mapped, [name for name in asked if name not in mapper.used]

    def explain(self, weights: WeightSet) -> list[dict[str, Any]]:
        """Every output tensor: source name and shape -> target name and shape, transforms."""
        mapped = self.apply(weights)
        rows = []
        for layer in mapped.layers:
            for role, tensor in layer.tensors.items():
                origin = layer.origins[role]
                rows.append(
                    {
                        "from": origin.source,
                        "from_shape": listed(origin.source_shape),
                        "to": layer.tensor_name(role),
                        "to_shape": list(tensor.shape),
                        "dtype": str(tensor.dtype),
                        "transforms": list(origin.transforms),
                    }
                )
        return rows


# The work -------------------------------------------------------------------------------------
