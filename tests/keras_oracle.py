"""Keras as the oracle for weightconv's Keras HDF5 reader and writer.

Run as a script (pytest runs it in a subprocess, so the test process never imports Keras);
every command prints one JSON document on stdout:

    python tests/keras_oracle.py save DIR     # Keras 3: build the models, save every layout
    python tests/keras_oracle.py save2 DIR    # Keras 2 (tf_keras): the legacy .h5 layouts
    python tests/keras_oracle.py load JOBS    # Keras 3: load each file of JOBS into its model
    python tests/keras_oracle.py load2 JOBS   # the same with Keras 2 (tf_keras)

JOBS is a JSON file: a list of {"model": builder name, "file": path, "id": any}. For each
job the model is built fresh, ``load_weights(file)`` runs and the result holds its outputs
on the seeded input and the sha256 of every weight (or the "error" Keras raised).

Models (`BUILDERS`): "alexnet" (AlexNet-shaped Sequential on 67x67x3: conv1..conv5 with
groups 1, 2, 1, 2, 2, max pooling, Flatten, Dropout, fc6..fc8), "branchy" (Functional: a
bias-less Conv2D, BatchNormalization, DepthwiseConv2D, a parallel 1x1 Conv2D, Add,
BatchNormalization(center=False), Dense), "nested" (a Sequential holding a Functional
and a Sequential), "halfs" (bfloat16 and float16 Dense layers; Keras 3 only). Weights are
set with ``layer.set_weights`` from a seeded generator and kept in ``<model>.source.npz``
(``<layer>/<i>`` in the layer's weight order; bfloat16 as uint16 bits, key suffix
``:bfloat16``).

`save` writes, per model: ``.weights.h5`` (``save_weights``), ``.keras``, ``.legacy.h5``
(Keras 3's legacy weights-only writer), ``.full.h5`` (``model.save`` legacy HDF5), and
for alexnet ``.plain.weights.h5`` before it is trained one step (so the other files of
alexnet hold optimizer state). `save2` writes ``.k2.h5`` (``save_weights``) and
``.k2full.h5`` (``model.save``, alexnet trained one step first). The manifest lists every
file's datasets as h5py sees them (path, shape, dtype, sha256) and every layer's weights as
Keras holds them after saving.

Exit status: 0 ok; 1 Keras reported an error (the JSON has "error"); 2 bad usage; 3 Keras
(or tf_keras for save2/load2) cannot be imported (the JSON has "skip").

Keras 2 runs in the Python named by the environment variable WEIGHTCONV_TF_KERAS_PYTHON
when it is set (a venv with tensorflow and tf_keras), else in this Python.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

SCRIPT = Path(__file__).resolve()
EXIT_OK, EXIT_KERAS_ERROR, EXIT_USAGE, EXIT_NO_KERAS = 0, 1, 2, 3
MODELS = ("alexnet", "branchy", "nested", "halfs")
KERAS2_MODELS = ("alexnet", "branchy", "nested")
#: Class names whose Keras 3 snake-case names the manifest records.
SNAKE_CLASSES = (
    "Conv2D",
    "Dense",
    "BatchNormalization",
    "DepthwiseConv2D",
    "MaxPooling2D",
    "ReLU",
    "PReLU",
    "GlobalAveragePooling2D",
    "Conv2DTranspose",
    "InputLayer",
    "SeparableConv2D",
    "LayerNormalization",
    "UpSampling2D",
    "Functional",
    "Sequential",
    "XY2Layer",
    "HTTPServer2X",
)
KERAS2_PYTHON_ENV = "WEIGHTCONV_TF_KERAS_PYTHON"


# --- helpers for the tests (no Keras) ----------------------------------------------------


def digest(array: Any) -> str:
    """sha256 of an array's C-order little-endian bytes (bfloat16: its 2 raw bytes)."""
    a = np.asarray(array)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        a = a.byteswap()
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def load_source(npz: str | Path) -> dict[str, np.ndarray]:
    """`<model>.source.npz` as {"layer/i": array}, bfloat16 restored from its bits."""
    out = {}
    with np.load(npz) as data:
        for key in data.files:
            if key.endswith(":bfloat16"):
                import ml_dtypes

                out[key.removesuffix(":bfloat16")] = data[key].view(ml_dtypes.bfloat16)
            else:
                out[key] = data[key]
    return out


def run_oracle(*args: str, keras2: bool = False, timeout: float = 600) -> dict[str, Any]:
    """Run this script with `args`; return its JSON. Skips the calling test when Keras (or
    tf_keras, with `keras2`) is missing; raises AssertionError on any other failure."""
    python = os.environ.get(KERAS2_PYTHON_ENV) if keras2 else None
    env = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES=""
    )
    proc = subprocess.run(
        [python or sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"keras_oracle {' '.join(args)} exited {proc.returncode} "
            f"without JSON on stdout; stderr tail:\n{tail}"
        ) from None
    if proc.returncode == EXIT_NO_KERAS:
        import pytest

        pytest.skip(result.get("skip", "keras is not importable"))
    if proc.returncode != EXIT_OK:
        raise AssertionError(
            f"keras_oracle {' '.join(args)} exited {proc.returncode}: "
            f"{str(result.get('error', result))[:2000]}; stderr tail:\n{tail}"
        )
    return result


# --- Keras side (only when run as a script) ----------------------------------------------

K: Any = None  # keras or tf_keras, imported by main()


def _alexnet() -> Any:
    L = K.layers
    return K.Sequential(
        [
            K.Input((67, 67, 3)),
            L.Conv2D(16, 11, strides=4, activation="relu", name="conv1"),
            L.MaxPooling2D(3, 2, name="pool1"),
            L.Conv2D(32, 5, padding="same", groups=2, activation="relu", name="conv2"),
            L.MaxPooling2D(3, 2, name="pool2"),
            L.Conv2D(48, 3, padding="same", activation="relu", name="conv3"),
            L.Conv2D(48, 3, padding="same", groups=2, activation="relu", name="conv4"),
            L.Conv2D(32, 3, padding="same", groups=2, activation="relu", name="conv5"),
            L.MaxPooling2D(3, 2, name="pool5"),
            L.Flatten(name="flatten"),
            L.Dense(64, activation="relu", name="fc6"),
            L.Dropout(0.5, name="drop6"),
            L.Dense(64, activation="relu", name="fc7"),
            L.Dropout(0.5, name="drop7"),
            L.Dense(10, name="fc8"),
        ],
        name="alexnet",
    )


def _branchy() -> Any:
    L = K.layers
    image = K.Input((12, 12, 3), name="img")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(image)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="r1")(x)
    deep = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    wide = L.Conv2D(16, 1, name="proj")(x)
    x = L.Add(name="add")([deep, wide])
    x = L.BatchNormalization(center=False, name="bn2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return K.Model(image, L.Dense(5, name="head")(x), name="branchy")


def _nested() -> Any:
    L = K.layers
    image = K.Input((9, 9, 4), name="img")
    x = L.Conv2D(6, 3, name="c1")(image)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    inner = K.Model(image, L.Dense(5, name="head")(x), name="inner")
    tail = K.Sequential(
        [K.Input((5,)), L.Dense(4, activation="tanh", name="t1"), L.Dense(3, name="t2")],
        name="tail",
    )
    return K.Sequential([K.Input((9, 9, 4)), inner, tail, L.Dense(2, name="top")], name="outer")


def _halfs() -> Any:
    L = K.layers
    return K.Sequential(
        [
            K.Input((5,)),
            L.Dense(4, dtype="bfloat16", name="hb"),
            L.Dense(3, dtype="float16", name="hf"),
            L.Dense(2, name="h32"),
        ],
        name="halfs",
    )


BUILDERS = {"alexnet": _alexnet, "branchy": _branchy, "nested": _nested, "halfs": _halfs}
INPUTS = {"alexnet": (67, 67, 3), "branchy": (12, 12, 3), "nested": (9, 9, 4), "halfs": (5,)}


def _leaves(model: Any) -> list[Any]:
    """Every non-model layer in order, recursing into nested models."""
    out = []
    for layer in model.layers:
        out.extend(_leaves(layer) if hasattr(layer, "layers") else [layer])
    return out


def _ordered_weights(layer: Any) -> list[Any]:
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _set_seeded_weights(model: Any, seed: int) -> dict[str, np.ndarray]:
    """Seeded values for every weight, set with layer.set_weights; {"layer/i": array}."""
    rng = np.random.default_rng(seed)
    source = {}
    for layer in _leaves(model):
        variables = layer.weights  # the order set_weights takes
        if not variables:
            continue
        values = []
        for v in variables:
            shape = tuple(v.shape)
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
            if "variance" in v.name:
                value = np.abs(value) + 0.5
            values.append(value.astype(_dtype_name(v)))
        layer.set_weights(values)
        by_variable = {id(v): value for v, value in zip(variables, values, strict=True)}
        for i, v in enumerate(_ordered_weights(layer)):
            source[f"{layer.name}/{i}"] = by_variable[id(v)]
    return source


def _dtype_name(variable: Any) -> Any:
    name = getattr(variable.dtype, "name", str(variable.dtype))
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def _save_npz(path: Path, source: dict[str, np.ndarray]) -> None:
    arrays = {}
    for key, value in source.items():
        if value.dtype.name == "bfloat16":
            arrays[key + ":bfloat16"] = value.view(np.uint16)
        else:
            arrays[key] = value
    np.savez(path, **arrays)


def _seeded_input(name: str) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, *INPUTS[name])).astype(np.float32)


def _outputs(model: Any, name: str) -> dict[str, Any]:
    out = model(_seeded_input(name), training=False)
    array = np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float64)
    return {"values": array.tolist(), "sha256": digest(array)}


def _layer_records(model: Any) -> list[dict[str, Any]]:
    records = []
    for layer in _leaves(model):
        weights = []
        for v in _ordered_weights(layer):
            value = np.asarray(v.numpy())
            weights.append(
                {
                    "path": getattr(v, "path", v.name),
                    "name": v.name,
                    "shape": list(value.shape),
                    "dtype": value.dtype.name,
                    "sha256": digest(value),
                }
            )
        records.append({"name": layer.name, "class": type(layer).__name__, "weights": weights})
    return records


def _h5_listing(source: Any) -> dict[str, Any]:
    """Every dataset h5py sees (path, shape, dtype, its dtype attribute, sha256), and
    groups with their attributes."""
    import h5py

    datasets: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    with h5py.File(source, "r") as handle:

        def visit(name: str, obj: Any) -> None:
            attrs = {k: _attr_json(v) for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                value = np.asarray(obj[()])
                if obj.attrs.get("dtype") == "bfloat16":
                    import ml_dtypes

                    value = value.view(ml_dtypes.bfloat16)
                datasets[name] = {
                    "shape": list(obj.shape),
                    "dtype": value.dtype.name,
                    "sha256": digest(value),
                    "attrs": attrs,
                }
            else:
                groups[name] = attrs

        handle.visititems(visit)
        root = {
            k: _attr_json(v)[:200] if isinstance(_attr_json(v), str) else _attr_json(v)
            for k, v in handle.attrs.items()
        }
    return {"datasets": datasets, "groups": groups, "root_attrs": root}


def _attr_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_attr_json(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _archive_listing(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        listing = _h5_listing(io.BytesIO(archive.read("model.weights.h5")))
        listing["members"] = archive.namelist()
        listing["config"] = json.loads(archive.read("config.json"))
    return listing


def _train_one_step(model: Any, name: str) -> None:
    model.compile(optimizer=K.optimizers.Adam(1e-3), loss="mse")
    x = _seeded_input(name)
    y = np.zeros((x.shape[0], *model.output_shape[1:]), dtype=np.float32)
    model.fit(x, y, epochs=1, verbose=0, batch_size=2)


def save(root: Path) -> dict[str, Any]:
    """Keras 3: every model in every layout Keras 3 writes."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.utils import naming

    root.mkdir(parents=True, exist_ok=True)
    models = {}
    for index, name in enumerate(MODELS):
        model = BUILDERS[name]()
        source = _set_seeded_weights(model, seed=100 + index)
        npz = root / f"{name}.source.npz"
        _save_npz(npz, source)
        entry: dict[str, Any] = {
            "class": type(model).__name__,
            "config": json.loads(model.to_json()),
            "source_npz": str(npz),
            "outputs": _outputs(model, name),
            "source_layers": _layer_records(model),
            "files": {},
        }
        if name == "alexnet":
            plain = root / f"{name}.plain.weights.h5"
            model.save_weights(plain)
            entry["files"]["plain_weights_h5"] = {"path": str(plain), **_h5_listing(plain)}
            _train_one_step(model, name)
        paths = {
            "weights_h5": root / f"{name}.weights.h5",
            "keras": root / f"{name}.keras",
            "legacy_h5": root / f"{name}.legacy.h5",
            "full_h5": root / f"{name}.full.h5",
        }
        model.save_weights(paths["weights_h5"])
        model.save(paths["keras"])
        with h5py.File(paths["legacy_h5"], "w") as handle:
            legacy_h5_format.save_weights_to_hdf5_group(handle, model)
        model.save(paths["full_h5"])
        for kind, path in paths.items():
            listing = _archive_listing(path) if kind == "keras" else _h5_listing(path)
            entry["files"][kind] = {"path": str(path), **listing}
        entry["layers"] = _layer_records(model)
        models[name] = entry
    return {
        "keras": K.__version__,
        "models": models,
        "snake_names": {c: naming.to_snake_case(c) for c in SNAKE_CLASSES},
    }


def save2(root: Path) -> dict[str, Any]:
    """Keras 2 (tf_keras): save_weights .h5 and model.save .h5 of the same models."""
    root.mkdir(parents=True, exist_ok=True)
    models = {}
    for index, name in enumerate(KERAS2_MODELS):
        model = BUILDERS[name]()
        _set_seeded_weights(model, seed=200 + index)
        if name == "alexnet":
            _train_one_step(model, name)
        weights, full = root / f"{name}.k2.h5", root / f"{name}.k2full.h5"
        model.save_weights(str(weights))
        model.save(str(full), save_format="h5")
        models[name] = {
            "class": type(model).__name__,
            "layers": _layer_records(model),
            "files": {
                "k2_h5": {"path": str(weights), **_h5_listing(weights)},
                "k2full_h5": {"path": str(full), **_h5_listing(full)},
            },
        }
    return {"keras": K.__version__, "models": models}


def load(jobs_file: Path) -> dict[str, Any]:
    """Build each job's model, load its file, report outputs and weight digests."""
    jobs = json.loads(jobs_file.read_text())
    results = []
    for job in jobs:
        model = BUILDERS[job["model"]]()
        result: dict[str, Any] = {"id": job.get("id"), "model": job["model"], "file": job["file"]}
        try:
            model.load_weights(job["file"])
        except Exception as exc:  # the job reports whatever Keras raised
            result["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
        else:
            result["outputs"] = _outputs(model, job["model"])
            result["layers"] = _layer_records(model)
        results.append(result)
    return {"keras": K.__version__, "results": results}


def _run(argv: list[str]) -> tuple[int, dict[str, Any]]:
    global K
    commands = {"save": save, "save2": save2, "load": load, "load2": load}
    if len(argv) != 2 or argv[0] not in commands:
        return EXIT_USAGE, {
            "error": "usage: keras_oracle.py save DIR | save2 DIR | "
            "load JOBS.json | load2 JOBS.json"
        }
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    module = "tf_keras" if argv[0].endswith("2") else "keras"
    try:
        K = __import__(module)
    except Exception as exc:  # any import failure means: no usable Keras
        return EXIT_NO_KERAS, {
            "error": f"{type(exc).__name__}: {exc}",
            "skip": f"{module} is not importable here ({sys.executable}): "
            f"{type(exc).__name__}: {exc}",
        }
    if module == "keras" and not K.__version__.startswith("3."):
        return EXIT_NO_KERAS, {"skip": f"keras {K.__version__} is not Keras 3"}
    try:
        return EXIT_OK, commands[argv[0]](Path(argv[1]))
    except Exception as exc:
        return EXIT_KERAS_ERROR, {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str]) -> int:
    """Run a command with stdout (fd 1) pointed at stderr; print the JSON last."""
    sys.stdout.flush()
    json_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        status, result = _run(argv)
    finally:
        sys.stdout.flush()
    with os.fdopen(json_fd, "w") as out:
        json.dump(result, out)
        out.write("\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
