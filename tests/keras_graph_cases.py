"""The nets the Keras engine and export tests run, built once per session.

Every layer net of `tests.test_graph_engine` and the whole-net graphs of
`tests.test_graph_nets` (a SqueezeNet Fire module, a ResNet block, Deconvolution + Crop +
dilated convolution, MTCNN's two heads), plus the real BVLC GoogLeNet deploy net with
generated weights and the real MTCNN det1 when ../shared/corpus is present. Seeded weights
are converted to .npy by weightconv (no Keras); one child process runs them all in the Keras
engine and exports the whole nets as ``.keras``; a second, fresh one loads those with plain
Keras and our layers' import. The expected values are OpenCV's, computed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import weightconv
from weightconv.nets.graph import Graph

from .conftest import CORPUS
from .graph_oracle import Case, opencv_forward, prototxt
from .keras_graph_oracle import run_oracle
from .test_graph_engine import NETS, conv, layer
from .test_graph_nets import GRAPHS

#: Keras against OpenCV: max |Δ| / max |OpenCV| per blob.
RELATIVE = 1e-4
#: The whole nets that are also exported as .keras and loaded in a fresh process.
EXPORTED = ("squeezenet-fire", "resnet-block", "deconv-crop-dilated", "googlenet", "mtcnn-det1")
GOOGLENET = "prototxt/bvlc_googlenet.deploy.prototxt"
#: Nets whose numbers only Caffe's AVE divisor gets right: a rounded-up last window reaches
#: past the input (and its padding), and Caffe divides by the part that does not.
OVERHANG = {
    "pool-ave-ceil-overhang": (
        layer(
            "p", "Pooling", ["data"], extra="pooling_param { pool: AVE kernel_size: 3 stride: 2 }"
        ),
        (2, 3, 10, 12),
    ),
    "pool-ave-pad-overhang": (
        layer(
            "p",
            "Pooling",
            ["data"],
            extra="pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }",
        )
        + layer(
            "q", "Pooling", ["data"], extra="pooling_param { pool: MAX kernel_size: 3 stride: 2 }"
        ),
        (2, 3, 10, 12),
    ),
}
#: Nets run again with a deliberate mistake in the engine, which OpenCV must expose.
MUTATED = {
    "pool-ave-ceil-overhang": "ave-divisor-whole-window",
    "inner-product": "dense-rows-chw",
}
#: Nets the Keras engine must refuse, and the words of the refusal.
REFUSED = {
    "dilated-deconvolution": (
        conv(
            "up", "data", "num_output: 3 kernel_size: 3 stride: 2 dilation: 2", kind="Deconvolution"
        ),
        "layer 'up' (Deconvolution): the Keras engine cannot run a dilated Deconvolution",
    ),
}
MTCNN = ("caffe/mtcnn/det1.caffemodel", "caffe/mtcnn/det1.prototxt")


@dataclass
class Net:
    """A net on disk, its feed, the blobs compared and OpenCV's values of them."""

    name: str
    prototxt: Path
    model: Path
    npy: Path | None
    graph: Graph
    feed: dict[str, np.ndarray]
    blobs: list[str]
    expected: dict[str, np.ndarray] = field(default_factory=dict)
    feed_file: Path | None = None


@dataclass
class Results:
    nets: dict[str, Net]
    engine: dict[str, Any]
    load: dict[str, Any]
    root: Path
    seconds: dict[str, float] = field(default_factory=dict)


_CACHE: dict[str, Results] = {}


def _from_case(name: str, case: Case, batch: int = 2) -> Net:
    feed = case.feed(1, batch)
    blobs = list(case.graph.outputs)
    npy = case.npy if case.blobs else None
    return Net(name, case.prototxt, case.model, npy, case.graph, feed, blobs)


def _nets(root: Path) -> dict[str, Net]:
    nets: dict[str, Net] = {}
    for name, body in NETS.items():
        nets[name] = _from_case(name, Case(root / name, prototxt(body)))
    for name, (body, shape) in {**GRAPHS, **OVERHANG}.items():
        nets[name] = _from_case(name, Case(root / name, prototxt(body, {"data": shape})))
    if (CORPUS / GOOGLENET).exists():
        text = (CORPUS / GOOGLENET).read_text()
        net = _from_case("googlenet", Case(root / "googlenet", text), batch=1)
        net.blobs = ["loss3/classifier", "prob"]
        nets["googlenet"] = net
    if all((CORPUS / part).exists() for part in MTCNN):
        model, deploy = (CORPUS / part for part in MTCNN)
        graph = Graph.from_prototxt(deploy)
        npy = root / "mtcnn-det1.npy"
        weightconv.convert(model, npy, prototxt=deploy)
        rng = np.random.default_rng(3)
        feed = {
            blob: rng.standard_normal((2, *shape[1:])).astype(np.float32)
            for blob, shape in graph.inputs.items()
        }
        nets["mtcnn-det1"] = Net("mtcnn-det1", deploy, model, npy, graph, feed, list(graph.outputs))
    for net in nets.values():
        net.feed_file = root / f"{net.name}.feed.npz"
        np.savez(net.feed_file, **net.feed)
        net.expected = opencv_forward(net.prototxt, net.model, net.graph, net.feed, net.blobs)
    return nets


def keras_results(tmp_path_factory: Any) -> Results:
    """Every net run in the Keras engine and, for `EXPORTED`, loaded from its .keras."""
    if "results" in _CACHE:
        return _CACHE["results"]
    import time

    root = tmp_path_factory.mktemp("keras_graphs")
    start = time.perf_counter()
    nets = _nets(root)
    prepared = time.perf_counter()
    jobs = [
        {
            "id": net.name,
            "prototxt": str(net.prototxt),
            "weights": str(net.npy) if net.npy else None,
            "feed": str(net.feed_file),
            "blobs": net.blobs,
            "out": str(root / f"{net.name}.engine.npz"),
            "export": str(root / f"{net.name}.keras") if net.name in EXPORTED else None,
        }
        for net in nets.values()
    ]
    for name, (body, _) in REFUSED.items():
        case = Case(root / name, prototxt(body))
        feed = root / f"{name}.feed.npz"
        np.savez(feed, **case.feed(1, 2))
        jobs.append(
            {
                "id": name,
                "prototxt": str(case.prototxt),
                "weights": str(case.npy),
                "feed": str(feed),
                "blobs": ["up"],
                "out": str(root / f"{name}.engine.npz"),
            }
        )
    for name, mutation in MUTATED.items():
        net = nets[name]
        jobs.append(
            {
                "id": f"{name}+{mutation}",
                "prototxt": str(net.prototxt),
                "weights": str(net.npy) if net.npy else None,
                "feed": str(net.feed_file),
                "blobs": net.blobs,
                "out": str(root / f"{name}+{mutation}.engine.npz"),
                "mutate": mutation,
            }
        )
    engine = run_oracle("engine", jobs, root)
    ran = time.perf_counter()
    loads = [
        {
            "id": net.name,
            "model": str(root / f"{net.name}.keras"),
            "inputs": list(net.graph.inputs),
            "feed": str(net.feed_file),
            "out": str(root / f"{net.name}.load.npz"),
        }
        for net in nets.values()
        if net.name in EXPORTED and "error" not in engine[net.name]
    ]
    load = run_oracle("load", loads, root) if loads else {}
    seconds = {
        "prepare (OpenCV, conversions)": prepared - start,
        "engine child": ran - prepared,
        "load child": time.perf_counter() - ran,
    }
    _CACHE["results"] = Results(nets, engine, load, root, seconds)
    return _CACHE["results"]


def relative_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    theirs = np.asarray(theirs, dtype=np.float64).reshape(np.shape(ours))
    scale = float(np.abs(theirs).max()) or 1.0
    return float(np.abs(np.asarray(ours, dtype=np.float64) - theirs).max()) / scale


def engine_blobs(results: Results, name: str, mutation: str | None = None) -> dict[str, np.ndarray]:
    net = results.nets[name]
    key = name if mutation is None else f"{name}+{mutation}"
    entry = results.engine[key]
    assert "error" not in entry, entry["error"]
    with np.load(results.root / f"{key}.engine.npz") as data:
        return {blob: data[f"b{i}"] for i, blob in enumerate(net.blobs)}


def loaded_blobs(results: Results, name: str) -> dict[str, np.ndarray]:
    """The loaded model's outputs (the graph's outputs, in order), back in NCHW."""
    net = results.nets[name]
    entry = results.load[name]
    assert "error" not in entry, entry["error"]
    assert entry["outputs"] == len(net.graph.outputs)
    with np.load(results.root / f"{name}.load.npz") as data:
        outs = [data[f"o{i}"] for i in range(entry["outputs"])]
    return {
        blob: out.transpose(0, 3, 1, 2) if out.ndim == 4 else out
        for blob, out in zip(net.graph.outputs, outs, strict=True)
    }


__all__ = [
    "EXPORTED",
    "MUTATED",
    "OVERHANG",
    "REFUSED",
    "RELATIVE",
    "Results",
    "engine_blobs",
    "keras_results",
    "loaded_blobs",
    "relative_difference",
]
