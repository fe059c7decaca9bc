"""Which data file each tensor of a checkpoint goes to.

Every data file holds a run of consecutive tensors: the reader lists a checkpoint's tensors
by data file and offset, so runs keep the layers in the order they were written (TensorFlow's
reader does not mind which file holds which tensor). Within that rule the plan is as even as
whole tensors allow: first the largest file is made as small as it can be, then, among the
plans with that largest file, the one with the smallest sum of squared file sizes is taken.

Example::

    plan_shards([411_041_792, 16_384, 67_108_864, 16_384_000], shards=3)   # [0, 1, 1, 2]
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

import numpy as np

from weightconv.errors import UsageError
from weightconv.formats.ckpt.naming import MAX_SHARDS


def plan_shards(
    sizes: Sequence[int], shards: int = 1, max_shard_size: int | None = None, target: str = ""
) -> list[int]:
    """The data file (from 0) of each tensor, given the tensors' sizes in writing order.

    Without `max_shard_size` there are `shards` files, or one per tensor when there are
    fewer tensors; the largest file is as small as runs of whole tensors allow, which is at
    most the ideal share (the total over `shards`) plus the largest tensor. With
    `max_shard_size` there are as many files as keep each within it, and at least `shards`;
    a tensor larger than the limit has a file to itself. Every file holds data when at least
    as many tensors do: a tensor of no bytes shares the file of the tensor before it.
    `target` names the output in messages.
    """
    if shards < 1:
        raise UsageError(f"{target}: shards must be at least 1, got {shards}")
    if max_shard_size is not None and max_shard_size < 1:
        raise UsageError(f"{target}: max_shard_size must be at least 1 byte, got {max_shard_size}")
    if not sizes:
        return []
    units = _units(sizes, shards)
    prefix = [0]
    for unit in units:
        prefix.append(prefix[-1] + sum(sizes[i] for i in unit))
    count = min(shards, len(units))
    if max_shard_size is not None:
        cap = max_shard_size
        count = max(count, _fewest_runs(prefix, cap))
    else:
        largest = max(b - a for a, b in itertools.pairwise(prefix))
        cap = _smallest_cap(prefix, largest, count)
    if count > MAX_SHARDS:
        raise UsageError(
            f"{target}: max_shard_size={max_shard_size} needs {count} data files; a checkpoint "
            f"has at most {MAX_SHARDS}"
            if max_shard_size is not None
            else f"{target}: shards={shards}: a checkpoint has at most {MAX_SHARDS} data files"
        )
    assignment = [0] * len(sizes)
    start = 0
    for shard, end in enumerate(_even_runs(prefix, cap, count)):
        for unit in units[start:end]:
            for i in unit:
                assignment[i] = shard
        start = end
    return assignment


def _units(sizes: Sequence[int], shards: int) -> list[list[int]]:
    """Each tensor holding data with the empty tensors after it (those before any data join
    the first), so that no file holds only empty tensors; one unit per tensor when fewer
    than `shards` tensors hold data."""
    units: list[list[int]] = []
    for i, size in enumerate(sizes):
        if size or not units:
            units.append([i])
        else:
            units[-1].append(i)
    if len(units) > 1 and not sizes[units[0][0]]:
        leading = units.pop(0)
        units[0][:0] = leading
    if len(units) < min(shards, len(sizes)):
        return [[i] for i in range(len(sizes))]
    return units


def _run_end(prefix: list[int], start: int, cap: int) -> int:
    """The end of the longest run from unit `start` within `cap` bytes (one unit at least)."""
    return max(bisect.bisect_right(prefix, prefix[start] + cap) - 1, start + 1)


def _run_start(prefix: list[int], end: int, cap: int) -> int:
    """The start of the longest run ending at unit `end` within `cap` bytes (one at least)."""
    return min(bisect.bisect_left(prefix, prefix[end] - cap), end - 1)


def _fewest_runs(prefix: list[int], cap: int) -> int:
    """How many runs within `cap` all units need at least: filling each as far as it goes
    needs the fewest."""
    count, start, end = 0, 0, len(prefix) - 1
    while start < end:
        start = _run_end(prefix, start, cap)
        count += 1
    return count


def _smallest_cap(prefix: list[int], largest: int, count: int) -> int:
    """The smallest size within which the units fit in `count` runs."""
    low, high = largest, prefix[-1]
    while low < high:
        middle = (low + high) // 2
        if _fewest_runs(prefix, middle) <= count:
            high = middle
        else:
            low = middle + 1
    return low


def _even_runs(prefix: list[int], cap: int, count: int) -> list[int]:
    """The end (in units) of each of `count` runs, each within `cap` or a single unit, with
    the smallest sum of squared run sizes.

    A dynamic programme over (runs, units covered); each row is filled by divide and conquer
    (the best start of a run moves right as its end does, since the cost of a run, the square
    of its size or infinite when over `cap`, satisfies the quadrangle inequality), one NumPy
    pass per level of the recursion.
    """
    units = len(prefix) - 1
    if count == 1:
        return [units]
    sums = np.asarray(prefix, dtype=np.float64)
    head = [0] * (units + 1)  # the fewest runs units [0, j) need
    for j in range(1, units + 1):
        head[j] = 1 + head[_run_start(prefix, j, cap)]
    tail = [0] * (units + 1)  # the fewest runs units [j, units) need
    for j in range(units - 1, -1, -1):
        tail[j] = 1 + tail[_run_end(prefix, j, cap)]
    falling = [-n for n in tail]  # `tail` falls as j grows; this rises, for bisect
    cost = np.full(units + 1, np.inf)
    cost[0] = 0.0
    starts: list[np.ndarray] = []
    for runs in range(1, count + 1):
        rest = count - runs
        # the ends this run may have: the units before fit in `runs` runs, the rest in `rest`
        low = max(runs, bisect.bisect_left(falling, -rest))
        high = min(units - rest, bisect.bisect_right(head, runs) - 1)
        best, start = _fill_row(sums, cost, cap, low, high, runs - 1)
        cost = best
        starts.append(start)
    ends = [units]
    for start in reversed(starts[1:]):
        ends.append(int(start[ends[-1]]))
    return ends[::-1]


def _fill_row(
    sums: np.ndarray, cost: np.ndarray, cap: int, low: int, high: int, first: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each end j in [low, high]: the least ``cost[i] + (sums[j] - sums[i])**2`` over
    starts i (the run [i, j) within `cap` or a single unit), and the smallest such i."""
    size = len(sums)
    best = np.full(size, np.inf)
    start = np.zeros(size, dtype=np.int64)
    # pending: (lowest end, highest end, lowest start, highest start), one row per task
    pending = np.array([[low, high, first, high - 1]], dtype=np.int64)
    while len(pending):
        j_low, j_high, i_low, i_high = pending.T
        middle = (j_low + j_high) // 2
        i_top = np.minimum(middle - 1, i_high)
        lengths = i_top - i_low + 1
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        ends = np.repeat(middle, lengths)
        candidates = np.arange(int(lengths.sum())) - np.repeat(offsets - i_low, lengths)
        run = sums[ends] - sums[candidates]
        allowed = (run <= cap) | (candidates == ends - 1)
        values = np.where(allowed, cost[candidates] + run * run, np.inf)
        least = np.minimum.reduceat(values, offsets)
        chosen = np.minimum.reduceat(
            np.where(values == np.repeat(least, lengths), candidates, size), offsets
        )
        best[middle] = least
        start[middle] = chosen
        left = j_low <= middle - 1
        right = middle + 1 <= j_high
        pending = np.concatenate(
            (
                np.stack([j_low, middle - 1, i_low, chosen], axis=1)[left],
                np.stack([middle + 1, j_high, chosen, i_high], axis=1)[right],
            )
        )
    return best, start
