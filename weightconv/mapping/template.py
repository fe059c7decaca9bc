"""The pairing with a target model's tensors (``--model TEMPLATE``), as `map --explain` shows it.

The writers of PyTorch and ONNX files pair our layers with a template's tensors themselves
(`weightconv.formats.torch.template`); this shows the same pairing without writing: each of
our tensors (layer/role, shape in PyTorch's layout) -> the template's name and shape.

Example::

    rows = explain_template(weightconv.load("alexnet.caffemodel"), "torchvision_alexnet.pt")
    rows[0]["to"]   # 'features.0.weight'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from weightconv import formats
from weightconv.errors import UsageError
from weightconv.model import WeightSet

#: The formats a template may be in.
TEMPLATE_FORMATS = ("pt", "onnx")


def explain_template(
    weights: WeightSet,
    template: str | os.PathLike[str],
    *,
    dense_inputs: Mapping[str, tuple[int, ...]] | None = None,
) -> list[dict[str, Any]]:
    """Each of our tensors paired with the template's (see `weightconv.formats.torch.template`),
    as rows of `Mapping.explain`'s shape; a pairing that breaks is a MappingError."""
    # Only `map --model` needs the PyTorch reader: kept off every other command's start-up.
    from weightconv.formats.torch.template import explain_rows, pair, state_dict_slots

    fmt = formats.detect(template)
    if fmt.name == "pt":
        slots = state_dict_slots(fmt.read(template))
    elif fmt.name == "onnx":
        from weightconv.formats.onnx.format import read_template  # imports the onnx library

        slots = read_template(template)
    else:
        raise UsageError(
            f"{template}: is {fmt.title}; a template to pair with is a PyTorch state dict "
            f"(.pt) or an ONNX model (.onnx)"
        )
    where = weights.source.path if weights.source else "the weights"
    pairs = pair(weights, slots, dense_inputs=dense_inputs, where=where, template=str(template))
    return explain_rows(pairs)
