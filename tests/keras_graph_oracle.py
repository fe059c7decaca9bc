"""Keras, in a child process, for the Keras engine and ``.keras`` export tests.

Run as a script (pytest runs it in a subprocess, so the test process never imports Keras);
each command reads a JSON list of jobs and writes one JSON document on stdout:

    python tests/keras_graph_oracle.py engine JOBS   # weightconv's Keras engine runs each net
    python tests/keras_graph_oracle.py load JOBS     # plain Keras loads each .keras and runs it
    python tests/keras_graph_oracle.py cli JOBS      # weightconv's command line, argv by argv

engine job: {"id", "prototxt", "weights" (.npy or null), "feed" (.npz of NCHW inputs),
"blobs", "out" (.npz written: blob i as "b<i>", NCHW), "export" (optional .keras path),
"mutate" (optional: one of `MUTATIONS`, a deliberate mistake in the engine for that job)}.
load job: {"id", "model" (.keras), "inputs" (input blob names in order), "feed", "out"
(.npz: the model's outputs in order, as Keras gives them, "o<i>")}: only ``keras`` and
``weightconv.nets.keras_layers`` are imported for it. cli job: {"id", "argv"}. Each result
holds "seconds" and, when the job raised, "error".

Exit status: 0 ok; 3 Keras cannot be imported (the JSON has "skip").
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SCRIPT = Path(__file__).resolve()
EXIT_OK, EXIT_NO_KERAS = 0, 3


def run_oracle(command: str, jobs: list[dict[str, Any]], folder: Path, timeout: float = 600):
    """Run this script's `command` on `jobs`; its JSON (results by job id). Skips the calling
    test when Keras is missing; raises AssertionError on any other failure."""
    job_file = folder / f"{command}-jobs.json"
    job_file.write_text(json.dumps(jobs))
    env = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES=""
    )
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), command, str(job_file)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=SCRIPT.parent.parent,
    )
    tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"keras_graph_oracle {command} exited {proc.returncode} without JSON; "
            f"stderr tail:\n{tail}"
        ) from None
    if proc.returncode == EXIT_NO_KERAS:
        import pytest

        pytest.skip(result.get("skip", "keras is not importable"))
    assert proc.returncode == EXIT_OK, f"exit {proc.returncode}: {result}\n{tail}"
    return result


def _tf_divisor(size: int, out: int, kernel: int, stride: int, pad: int) -> list[float]:
    return [float(kernel)] * out  # the whole window, overhang included


def _chw_flatten(self: Any, node: Any, b: Any, shapes: Any, out: Any, final: Any) -> Any:
    x = self.to_caffe(b[0], shapes[0], f"{final[0]}__nchw")  # C, H, W rows: the wrong order
    x = self.L.Flatten(name=f"{final[0]}__flatten")(x)
    layer = self.L.Dense(int(node.params["num_output"]), name=final[0])
    return [self.weighted(layer, x, [self.tensors(node)[r] for r in node.roles()])]


#: Mistakes an engine could make, each swapped in for one job: (module, attribute, stand-in).
MUTATIONS = {
    "ave-divisor-whole-window": ("weightconv.nets.keras_layers", "ave_divisors", _tf_divisor),
    "dense-rows-chw": ("weightconv.nets.keras_ops", "Builder.op_innerproduct", _chw_flatten),
}


@contextlib.contextmanager
def _mutated(name: str | None):
    if name is None:
        yield
        return
    import importlib

    module, attribute, replacement = MUTATIONS[name]
    owner: Any = importlib.import_module(module)
    *path, leaf = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, leaf)
    setattr(owner, leaf, replacement)
    try:
        yield
    finally:
        setattr(owner, leaf, original)


def _engine(job: dict[str, Any]) -> dict[str, Any]:
    with _mutated(job.get("mutate")):
        return _engine_run(job)


def _engine_run(job: dict[str, Any]) -> dict[str, Any]:
    import weightconv
    from weightconv.nets import keras_engine
    from weightconv.nets.graph import Graph
    from weightconv.nets.graph_weights import bind

    feed = dict(np.load(job["feed"]))
    graph = Graph.from_prototxt(job["prototxt"])
    graph = graph.with_batch(next(iter(feed.values())).shape[0])
    weights = weightconv.load(job["weights"]) if job["weights"] else weightconv.WeightSet()
    ran = keras_engine.run(graph, bind(graph, weights), feed, outputs=job["blobs"])
    np.savez(job["out"], **{f"b{i}": ran.blobs[blob] for i, blob in enumerate(job["blobs"])})
    if job.get("export"):
        from weightconv.nets.keras_export import export_keras

        export_keras(job["weights"], job["prototxt"], job["export"], force=True)
    return {}


def _load(job: dict[str, Any]) -> dict[str, Any]:
    import keras

    import weightconv.nets.keras_layers  # noqa: F401 - what a user imports

    model = keras.saving.load_model(job["model"])
    feed = np.load(job["feed"])
    given = []
    for blob in job["inputs"]:
        x = feed[blob]
        given.append(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x)
    outputs = model.predict(given, verbose=0)
    if not isinstance(outputs, list | tuple):
        outputs = [outputs]
    np.savez(job["out"], **{f"o{i}": np.asarray(o) for i, o in enumerate(outputs)})
    engine_loaded = "weightconv.nets.keras_engine" in sys.modules
    return {"outputs": len(outputs), "engine_imported": engine_loaded}


def _cli(job: dict[str, Any]) -> dict[str, Any]:
    from weightconv import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(job["argv"])
    return {"rc": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main(argv: list[str]) -> int:
    command, job_file = argv
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras  # noqa: F401
    except ImportError as exc:
        print(json.dumps({"skip": f"keras is not importable: {exc}"}))
        return EXIT_NO_KERAS
    handler = {"engine": _engine, "load": _load, "cli": _cli}[command]
    results: dict[str, Any] = {}
    for job in json.loads(Path(job_file).read_text()):
        start = time.perf_counter()
        try:
            entry = handler(job)
        except Exception as exc:  # reported to the test, which decides
            entry = {"error": f"{type(exc).__name__}: {exc}"}
        entry["seconds"] = round(time.perf_counter() - start, 3)
        results[job["id"]] = entry
    print(json.dumps(results))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
