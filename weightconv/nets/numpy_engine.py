"""The NumPy engine: a `Graph` run on canonical weights, float32, with Caffe's semantics.

Convolutions are im2col + BLAS matmul (`weightconv.nets.numpy_ops`); blobs are NCHW as in
Caffe. Blobs no later layer reads are freed as soon as they are used, and with
``release=True`` so are each layer's weights (a mapped file's pages are dropped), so a run
costs about one layer of weights and a few activations on top of its inputs. No TensorFlow.

Example::

    graph = Graph.from_prototxt("deploy.prototxt")
    weights = bind(graph, weightconv.load("converted.npy"))
    blobs = run(graph, weights, {"data": batch_nchw})        # every output blob
    trace = run(graph, weights, {"data": batch_nchw}, keep="layers").layers
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from weightconv.errors import ShapeError, UsageError
from weightconv.nets.graph import Graph
from weightconv.nets.graph_weights import GraphWeights
from weightconv.nets.numpy_ops import OPS


@dataclass
class Run:
    """What a run gives: the requested blobs by name and, when asked, every layer's tops as
    that layer wrote them (in-place layers overwrite their blob, so a blob's own value is
    the last writer's)."""

    blobs: dict[str, np.ndarray]
    layers: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)


def check_inputs(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs as float32 C-contiguous arrays, each checked against the graph's declared
    shape (any batch size)."""
    unknown = sorted(set(inputs) - set(graph.inputs))
    missing = sorted(set(graph.inputs) - set(inputs))
    if unknown or missing:
        raise UsageError(
            f"the graph's inputs are {', '.join(graph.inputs)}; "
            + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}")
        )
    batches = {int(np.shape(array)[0]) for array in inputs.values() if np.ndim(array)}
    if len(batches) > 1:
        raise ShapeError(f"the inputs differ in batch size: {sorted(batches)}")
    checked = {}
    for name, array in inputs.items():
        array = np.ascontiguousarray(array, dtype=np.float32)
        declared = graph.inputs[name]
        if array.shape[1:] != tuple(declared[1:]):
            raise ShapeError(
                f"input {name!r} is {tuple(array.shape)}; the net declares "
                f"(N, {', '.join(map(str, declared[1:]))})"
            )
        checked[name] = array
    return checked


def run(
    graph: Graph,
    weights: GraphWeights,
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    keep: str = "outputs",
    release: bool = False,
) -> Run:
    """Run `graph` on `inputs` (blob -> NCHW float32 batch) with `weights`.

    Args:
        outputs: the blobs to return (default: the graph's outputs).
        keep: "outputs", or "layers" to also keep every layer's tops (for tracing).
        release: drop each layer's weights once used (a one-off run over all inputs).
    """
    wanted = list(outputs) if outputs is not None else list(graph.outputs)
    blobs_known = set(graph.blobs())
    unknown = [name for name in wanted if name not in blobs_known]
    if unknown:
        raise UsageError(
            f"no blob {', '.join(map(repr, unknown))} in the graph (outputs: "
            f"{', '.join(graph.outputs)})"
        )
    env: dict[str, np.ndarray] = dict(check_inputs(graph, inputs))
    last_read = {blob: i for i, node in enumerate(graph.nodes) for blob in node.bottoms}
    final_writer = {blob: i for i, node in enumerate(graph.nodes) for blob in node.tops}
    result = Run({name: env[name] for name in wanted if name in env})
    for index, node in enumerate(graph.nodes):
        op = OPS[node.type]
        tensors = weights.tensors.get(node.name, {}) if node.weighted else {}
        with np.errstate(over="ignore", under="ignore"):
            tops = op(node, [env[b] for b in node.bottoms], tensors)
        for top, value in zip(node.tops, tops, strict=True):
            env[top] = value
            if top in wanted and final_writer[top] == index:
                result.blobs[top] = value
        if keep == "layers":
            result.layers[node.name] = tuple(tops)
        if release and node.weighted:
            weights.release(node.name)
        for blob in node.bottoms:
            if blob not in node.tops and last_read.get(blob, -1) <= index and blob in env:
                del env[blob]
    return result


__all__ = ["Run", "check_inputs", "run"]
