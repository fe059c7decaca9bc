"""What V2 bundles and V1 files share: the tensor listing, and partitioned variables.

A partitioned variable is stored as slices. Each slice is a list of extents, one per
dimension: ``(start, length)``, with length -1 for the whole dimension (TensorFlow's
``TensorSliceProto`` without a ``length``). `assemble` puts the slices back together and
refuses slices that overlap, leave gaps or lie outside the tensor.

Example::

    full = assemble((10, 6), np.dtype("f4"), [[(0, 4), (0, -1)], [(4, 6), (0, -1)]],
                    read_piece, "model.ckpt: tensor 'w'")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from weightconv._util.limits import declared_bytes, describe_shape
from weightconv.errors import FormatError
from weightconv.formats.ckpt import dtypes as tf_types

#: One dimension of a slice: (start, length), length -1 for all of it.
Extent = tuple[int, int]
#: Up to this many slices are checked for overlaps pair by pair; more, with a mask.
PAIRWISE_LIMIT = 256


@dataclass
class TensorInfo:
    """One tensor of a checkpoint: what the index says, and how to get its values."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]
    #: Bytes of its values: element count times item size, or as stored for strings (V2).
    nbytes: int = 0
    slices: int = 0
    #: (shard, byte offset) of the tensor's data: the order it was written in.
    position: tuple[int, int] = (0, 0)
    release: Callable[[], Any] | None = None
    #: The unchecked values and their check, for a plain numeric tensor (None: `load`).
    deferred: Callable[[], tuple[np.ndarray, Callable[[], None]] | None] | None = None

    @property
    def dtype_name(self) -> str:
        return tf_types.name(self.dtype)


def extents_of(slice_protos: Iterable[Any]) -> list[list[Extent]]:
    """The extents of each ``TensorSliceProto``."""
    return [
        [(int(e.start), int(e.length) if e.HasField("length") else -1) for e in proto.extent]
        for proto in slice_protos
    ]


def region(extents: list[Extent], shape: tuple[int, ...], what: str) -> tuple[slice, ...]:
    """The index of the slice in the full tensor; refused when it lies outside."""
    if len(extents) != len(shape):
        raise FormatError(
            f"{what}: slice {describe_extents(extents)} has rank {len(extents)}, "
            f"the tensor {len(shape)}"
        )
    parts = []
    for (start, length), size in zip(extents, shape, strict=True):
        stop = size if length < 0 else start + length
        if not 0 <= start <= stop <= size:
            raise FormatError(
                f"{what}: slice {describe_extents(extents)} lies outside shape {list(shape)}"
            )
        parts.append(slice(start, stop))
    return tuple(parts)


def describe_extents(extents: list[Extent]) -> str:
    """TensorFlow's text form of a slice: ``0,4:-`` is rows 0..3, every column."""
    return ":".join("-" if length < 0 else f"{start},{length}" for start, length in extents)


def assemble(
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    slices: list[list[Extent]],
    read_piece: Callable[[list[Extent], tuple[int, ...]], np.ndarray],
    what: str,
    held: tuple[int, int] | None = None,
) -> np.ndarray:
    """The full tensor from its slices; `read_piece(extents, shape)` reads one slice.

    Raises FormatError when a slice has the wrong shape or rank, lies outside the tensor,
    overlaps another, or when the slices leave part of the tensor uncovered. `held` is
    (bytes the stored slices hold, fewest bytes one element can be stored in): a shape
    needing more is refused before the tensor is allocated.
    """
    regions = [region(extents, shape, what) for extents in slices]
    pairwise = len(slices) <= PAIRWISE_LIMIT
    if pairwise:
        _refuse_overlaps(slices, regions, what)
    # Disjoint regions inside the tensor cover it exactly when their sizes add up to it.
    total = math.prod(shape)
    listed = sum(math.prod(s.stop - s.start for s in index) for index in regions)
    if listed != total:
        raise FormatError(f"{what}: its slices cover {listed} of {total} elements")
    if held is not None:
        stored, per_element = held
        needed = declared_bytes(shape, per_element, what)
        if needed > stored:
            raise FormatError(
                f"{what}: declares shape {describe_shape(shape)} ({needed:,} bytes at "
                f"least), its {len(slices)} stored slice(s) hold {stored:,} bytes"
            )
    full = np.empty(shape, dtype=dtype)
    if not pairwise:  # a mask costs a byte an element, no more than the tensor itself
        _refuse_overlaps_by_mask(shape, slices, regions, what)
    covered = 0
    for extents, index in zip(slices, regions, strict=True):
        target_shape = full[index].shape
        values = read_piece(extents, target_shape)
        if values.shape != target_shape:
            raise FormatError(
                f"{what}: slice {describe_extents(extents)} holds shape "
                f"{list(values.shape)}, expected {list(target_shape)}"
            )
        full[index] = values
        covered += values.size
    if covered != full.size:
        raise FormatError(f"{what}: its slices cover {covered} of {full.size} elements")
    return full


def _refuse_overlaps_by_mask(
    shape: tuple[int, ...], slices: list[list[Extent]], regions: list[tuple[slice, ...]], what: str
) -> None:
    """`_refuse_overlaps` in time linear in the elements, for many slices."""
    mask = np.zeros(shape, dtype=np.bool_)
    for i, index in enumerate(regions):
        if mask[index].any():
            boxes = [[(s.start, s.stop) for s in r] for r in regions[: i + 1]]
            j = next(
                j
                for j in range(i)
                if all(a < d and c < b for (a, b), (c, d) in zip(boxes[j], boxes[i], strict=True))
            )
            raise FormatError(
                f"{what}: slices {describe_extents(slices[j])} and "
                f"{describe_extents(slices[i])} overlap"
            )
        mask[index] = True


def _refuse_overlaps(
    slices: list[list[Extent]], regions: list[tuple[slice, ...]], what: str
) -> None:
    """Disjoint slices whose sizes add up to the tensor's cover it exactly; overlapping
    ones could add up while leaving a gap unfilled."""
    boxes = [[(s.start, s.stop) for s in index] for index in regions]
    for i, first in enumerate(boxes):
        if any(start == stop for start, stop in first):
            continue
        for j in range(i + 1, len(boxes)):
            second = boxes[j]
            if all(a < d and c < b for (a, b), (c, d) in zip(first, second, strict=True)):
                raise FormatError(
                    f"{what}: slices {describe_extents(slices[i])} and "
                    f"{describe_extents(slices[j])} overlap"
                )
