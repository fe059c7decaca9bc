"""TensorFlow as the oracle for weightconv's TF checkpoint reader and writer.

Run as a script (pytest runs it in a subprocess, so the test process never imports
TensorFlow); every command prints one JSON document on stdout:

    python tests/tf_oracle.py make DIR               # write reference checkpoints, print manifest
    python tests/tf_oracle.py read PREFIX            # what TF reads from a checkpoint
    python tests/tf_oracle.py read PREFIX PREFIX..   # {"reads": [one read's JSON per prefix]}
    python tests/tf_oracle.py restore PREFIX NAME..  # what a graph-mode Saver restores

Exit status: 0 ok; 1 TF reported an error (the JSON has "error": "Class: message");
2 bad usage; 3 TensorFlow cannot be imported (the JSON has "skip").

Importing this module imports only the standard library and numpy; the helpers
`run_oracle` and `tensor_digest` are for the tests.

Tensor digests (`tensor_digest`): sha256 of the C-order little-endian element bytes
(bool: one 0/1 byte each; bfloat16: its raw 2 bytes, so an ml_dtypes.bfloat16 array and
a uint16 array of the same bits agree); for string tensors (object, bytes or str arrays)
sha256 of the concatenation of 8-byte little-endian length + bytes, per element in C
order (str is UTF-8 encoded). Fixed-width numpy "S" arrays drop trailing NULs, so use
object arrays of bytes to hold TF strings faithfully.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SCRIPT = Path(__file__).resolve()

#: Tensors with more elements than this get no "values" in the JSON (sha256 only).
MAX_VALUES = 64
#: String tensors with more payload bytes than this get no "values" either.
MAX_STRING_VALUE_BYTES = 4096

EXIT_OK, EXIT_TF_ERROR, EXIT_USAGE, EXIT_NO_TF = 0, 1, 2, 3

#: The subdirectories `make` writes, one checkpoint each, in manifest order.
CHECKPOINT_NAMES = (
    "saver_v2_dtypes",
    "saver_v2_scoped",
    "partitioned",
    "sharded",
    "object_based",
    "sharded_policy",
    "saver_v1",
    "saver_v1_partitioned",
)


# --- helpers for the tests (no TensorFlow) -------------------------------------------------


def tensor_digest(array: Any) -> str:
    """sha256 hex of a tensor by the manifest's rule (see the module docstring)."""
    a = np.asarray(array)
    if a.dtype.kind in "OSU":
        h = hashlib.sha256()
        for item in a.reshape(-1).tolist():
            data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        a = a.byteswap()
    return hashlib.sha256(a.tobytes(order="C")).hexdigest()


def json_values(array: np.ndarray) -> Any:
    """The array as nested lists for JSON: floats (bfloat16/half widened), complex as
    [re, im], bytes as latin-1 str; None when it is too big to list."""
    a = np.asarray(array)
    if a.size > MAX_VALUES:
        return None
    kind = a.dtype.kind
    if kind in "OSU":
        items = a.reshape(-1).tolist()
        if sum(len(x) for x in items) > MAX_STRING_VALUE_BYTES:
            return None
        flat = [x.decode("latin-1") if isinstance(x, bytes) else str(x) for x in items]
        return np.array(flat, dtype=object).reshape(a.shape).tolist() if a.ndim else flat[0]
    if kind == "c":
        pairs = np.stack([a.real.astype(np.float64), a.imag.astype(np.float64)], axis=-1)
        return pairs.tolist()
    if kind in "fV":  # float16/32/64 and ml_dtypes (bfloat16) widen exactly to float64
        return a.astype(np.float64).tolist()
    return a.tolist()


def run_oracle(*args: str, timeout: float = 600) -> dict[str, Any]:
    """Run this script with `args` in a subprocess; return its JSON (which may hold an
    "error" the script reported). Skips the calling test when TensorFlow is missing;
    raises AssertionError with the stderr tail on any other failure."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
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
            f"tf_oracle {' '.join(args)} exited {proc.returncode} without "
            f"JSON on stdout; stderr tail:\n{tail}"
        ) from None
    if proc.returncode == EXIT_NO_TF:
        import pytest

        pytest.skip(result.get("skip", "tensorflow is not importable"))
    if proc.returncode not in (EXIT_OK, EXIT_TF_ERROR) or (
        proc.returncode == EXIT_TF_ERROR and "error" not in result
    ):
        reported = str(result.get("error", result))[:2000]
        raise AssertionError(
            f"tf_oracle {' '.join(args)} exited {proc.returncode}: {reported}; stderr tail:\n{tail}"
        )
    return result


# --- TensorFlow side (only when run as a script) -------------------------------------------

tf: Any = None  # tensorflow, imported by _run() when run as a script


class OracleError(Exception):
    """A failure reported as {"error": ...} with exit status 1."""


def _error_text(exc: BaseException) -> str:
    """'Class: message' with TF's graph-execution boilerplate removed."""
    message = getattr(exc, "message", None) or str(exc)
    noise = (
        "Graph execution error",
        "Detected at node",
        "Node:",
        "Original stack trace",
        "0 successful operations",
        "0 derived errors",
        " ",
        "\t",
    )
    lines = [
        line.strip()
        for line in str(message).splitlines()
        if line.strip() and not line.startswith(noise)
    ]
    return f"{type(exc).__name__}: {'; '.join(lines) or message}"


def tensor_record(array: np.ndarray, tf_dtype: Any = None, via: str = "reader") -> dict:
    """dtype/shape/sha256 (and values when small) of one tensor as TF returned it. TF
    returns a scalar string as bytes: it becomes a 0-d object array (dtype "object", like
    every string tensor), so no trailing NUL is lost."""
    array = np.array(array, dtype=object) if isinstance(array, bytes) else np.asarray(array)
    record: dict[str, Any] = {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "sha256": tensor_digest(array),
    }
    if tf_dtype is not None:
        record["tf_dtype"] = tf_dtype.name
    values = json_values(array)
    if values is not None:
        record["values"] = values
    record["via"] = via
    return record


_DEBUG_ENTRY = re.compile(
    rb"(.*?) \((DT_[A-Z0-9_]+)\) \[([-0-9,]*)\](?:, (\d+) slices)?\n", re.DOTALL
)


def _raw_entries(reader: Any) -> list[dict]:
    """Parse CheckpointReader.debug_string(): one entry per stored key. For V2 it lists
    the slice keys of partitioned tensors (but neither the header entry nor the
    full-tensor entries that carry the slice list); for V1 the full tensors with a
    slice count."""
    text = reader.debug_string()
    entries, pos = [], 0
    while pos < len(text):
        match = _DEBUG_ENTRY.match(text, pos)
        if match is None:
            entries.append({"unparsed": text[pos:].decode("latin-1")})
            break
        key, dtype, shape, slices = match.groups()
        entry: dict[str, Any] = {
            "key": key.decode("latin-1"),
            "dtype": dtype.decode(),
            "shape": [int(d) for d in shape.split(b",") if d],
        }
        if slices:
            entry["slices"] = int(slices)
        entries.append(entry)
        pos = match.end()
    return entries


def checkpoint_format(prefix: str) -> str:
    return "v2" if os.path.exists(prefix + ".index") else "v1"


def describe(prefix: str) -> dict[str, Any]:
    """Everything tf.train.load_checkpoint shows about a checkpoint; tensors the reader
    cannot return go to "errors"."""
    reader = tf.train.load_checkpoint(prefix)
    variables = tf.train.list_variables(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    tensors: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, _shape in variables:
        try:
            tensors[name] = tensor_record(reader.get_tensor(name), dtypes.get(name))
        except tf.errors.OpError as exc:
            errors[name] = _error_text(exc)
    entries = _raw_entries(reader)
    result: dict[str, Any] = {
        "prefix": prefix,
        "format": checkpoint_format(prefix),
        "variables": [[name, list(shape)] for name, shape in variables],
        "tensors": tensors,
        "raw_entries": entries,
    }
    if result["format"] == "v2":
        result["raw_keys"] = [e["key"] for e in entries if "key" in e]
    if errors:
        result["errors"] = errors
    return result


def _empty_like(dtype: Any, shape: list[int]) -> np.ndarray:
    if dtype == tf.string:
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=dtype.as_numpy_dtype)


def saver_restore(prefix: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """Restore `names` from `prefix` into fresh graph-mode variables (dtype and shape as
    the checkpoint lists them) with a tf.compat.v1 Saver; {name: tensor record}."""
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    shapes = reader.get_variable_to_shape_map()
    missing = [name for name in names if name not in dtypes]
    if missing:
        raise OracleError(f"NotFoundError: not listed in the checkpoint: {missing}")
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        var_list = {}
        for i, name in enumerate(names):
            init = _empty_like(dtypes[name], shapes[name])
            var_list[name] = tf.compat.v1.Variable(
                tf.constant(init, dtype=dtypes[name]), name=f"restored_{i}"
            )
        saver = tf.compat.v1.train.Saver(var_list=var_list)
        saver.restore(sess, prefix)
        values = sess.run(var_list)
    return {name: tensor_record(values[name], dtypes[name], via="saver_restore") for name in names}


# --- make: reference checkpoints -----------------------------------------------------------

V1 = None  # tf.compat.v1.train.SaverDef.V1, set by main()


def _graph_save(
    prefix: Path,
    arrays: dict[str, tuple[np.ndarray, Any]],
    *,
    devices: dict[str, str] | None = None,
    global_step: int | None = None,
    **saver_kwargs: Any,
) -> str:
    """Save `arrays` ({checkpoint name: (value, tf dtype)}) as graph-mode variables with
    tf.compat.v1.train.Saver; initial values are fed so the .meta stays small."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        var_list, feeds, inits = {}, {}, []
        for i, (name, (value, dtype)) in enumerate(arrays.items()):
            op_name = re.sub(r"[^A-Za-z0-9_./-]", "_", name).lstrip("_./-") or f"v{i}"
            with tf.device((devices or {}).get(name)):
                placeholder = tf.compat.v1.placeholder(dtype, value.shape, name=f"init_{i}")
                var = tf.compat.v1.Variable(placeholder, name=op_name)
            var_list[name] = var
            feeds[placeholder] = value
            inits.append(var.initializer)
        sess.run(inits, feed_dict=feeds)
        saver = tf.compat.v1.train.Saver(var_list=var_list, **saver_kwargs)
        return saver.save(sess, str(prefix), global_step=global_step)


def _slice_init(full: np.ndarray) -> Any:
    """A get_variable initializer giving each partition its part of `full`."""

    def init(shape: Any, dtype: Any = None, partition_info: Any = None) -> Any:
        offset = partition_info.var_offset if partition_info is not None else [0] * len(full.shape)
        index = tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))
        return tf.constant(full[index], dtype=dtype)

    return init


def _partitioned_save(prefix: Path, **saver_kwargs: Any) -> str:
    """part/w (10, 6) in 3 row slices, part/cols (4, 6) in 2 column slices, part/b whole."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    w = rng.standard_normal((10, 6)).astype(np.float32)
    cols = rng.standard_normal((4, 6))
    b = np.arange(6, dtype=np.float32) - 2.5
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        tf.compat.v1.get_variable(
            "part/w",
            shape=w.shape,
            dtype=tf.float32,
            initializer=_slice_init(w),
            partitioner=tf.compat.v1.fixed_size_partitioner(3),
        )
        tf.compat.v1.get_variable(
            "part/cols",
            shape=cols.shape,
            dtype=tf.float64,
            initializer=_slice_init(cols),
            partitioner=lambda shape, dtype: [1, 2],
        )
        tf.compat.v1.get_variable(
            "part/b", shape=b.shape, dtype=tf.float32, initializer=_slice_init(b)
        )
        sess.run(tf.compat.v1.global_variables_initializer())
        return tf.compat.v1.train.Saver(**saver_kwargs).save(sess, str(prefix))


def _special_floats(rng: np.random.Generator, dtype: Any, n: int) -> np.ndarray:
    specials = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -2.5]
    rest = rng.standard_normal(n - len(specials)) * 100
    return np.array(specials + list(rest)).astype(dtype)


def _dtype_arrays() -> dict[str, tuple[np.ndarray, Any]]:
    """One variable per Saver dtype plus the usual shapes (seeded, deterministic)."""
    import ml_dtypes

    rng = np.random.default_rng(2024)
    ints = {}
    for name in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        info = np.iinfo(name)
        extremes = [info.min, info.max, 0, 1]
        random = rng.integers(info.min, info.max, size=8, dtype=name, endpoint=True)
        ints[name] = np.array(extremes + random.tolist(), dtype=name).reshape(3, 4)
    ints["int64"].flat[4:8] = [2**53 + 1, -(2**53 + 1), -(2**62) - 7, 2**63 - 2]
    ints["uint64"].flat[4:6] = [2**53 + 1, 2**64 - 2]
    complex64 = (_special_floats(rng, np.float32, 8) + 1j * rng.standard_normal(8)).astype(
        np.complex64
    )
    complex128 = rng.standard_normal(5) - 1j * rng.standard_normal(5)
    complex128[0] = complex(np.nan, -0.0)
    strings = np.array(
        [
            b"a\x00b",
            "naïve ✓ 日本".encode(),
            b"",
            b"\xff\xfe\x00\x00",
            bytes(range(256)) + b"x" * 44,
        ],
        dtype=object,
    )
    arrays: dict[str, tuple[np.ndarray, Any]] = {
        "dtypes/float16": (_special_floats(rng, np.float16, 10), tf.float16),
        "dtypes/float32": (_special_floats(rng, np.float32, 12).reshape(2, 6), tf.float32),
        "dtypes/float64": (_special_floats(rng, np.float64, 9), tf.float64),
        "dtypes/bfloat16": (_special_floats(rng, ml_dtypes.bfloat16, 10), tf.bfloat16),
        "dtypes/bool": (np.array([True, False, False, True, True]), tf.bool),
        "dtypes/complex64": (complex64, tf.complex64),
        "dtypes/complex128": (complex128, tf.complex128),
        "dtypes/string": (strings, tf.string),
        "dtypes/string_scalar": (np.array(b"scalar \x00 string\x00", dtype=object), tf.string),
        "shapes/scalar": (np.array(3.25, dtype=np.float32), tf.float32),
        "shapes/empty": (np.zeros((0, 3), dtype=np.float32), tf.float32),
        "shapes/vector": (np.arange(7, dtype=np.int32) * -3, tf.int32),
        "conv1/weights": (rng.standard_normal((3, 3, 3, 8)).astype(np.float32), tf.float32),
        "conv1/biases": (rng.standard_normal(8).astype(np.float32), tf.float32),
        "fc/weights": (rng.standard_normal((2048, 300)).astype(np.float32), tf.float32),
        "global_step": (np.array(123456, dtype=np.int64), tf.int64),
    }
    for name, value in ints.items():
        arrays[f"dtypes/{name}"] = (value, tf.as_dtype(name))
    return arrays


def _scoped_arrays() -> dict[str, tuple[np.ndarray, Any]]:
    rng = np.random.default_rng(7)

    def f32(*shape: int) -> tuple[np.ndarray, Any]:
        return rng.standard_normal(shape).astype(np.float32), tf.float32

    return {
        "my/conv1/weights": f32(5, 5, 3, 16),
        "my/conv1/biases": f32(16),
        "my/fc6/weights": f32(64, 10),
        "my/fc6/biases": f32(10),
        "my/conv1/weights/Adam": f32(5, 5, 3, 16),
        "my/conv1/weights/Adam_1": f32(5, 5, 3, 16),
        "Variable_3": (np.array(0.9, dtype=np.float32), tf.float32),
    }


def _sharded_arrays() -> tuple[dict[str, tuple[np.ndarray, Any]], dict[str, str]]:
    rng = np.random.default_rng(11)
    arrays = {
        "shard0/kernel": (rng.standard_normal((16, 8)).astype(np.float32), tf.float32),
        "shard0/bias": (rng.standard_normal(8).astype(np.float32), tf.float32),
        "shard1/table": (rng.integers(-(2**40), 2**40, size=(5, 3)), tf.int64),
        "shard1/names": (np.array([b"alpha", b"", b"\x00gamma"], dtype=object), tf.string),
        "shard1/scale": (np.array(0.5), tf.float64),
    }
    devices = {name: "/cpu:0" if name.startswith("shard0") else "/cpu:1" for name in arrays}
    return arrays, devices


def _v1_arrays() -> dict[str, tuple[np.ndarray, Any]]:
    rng = np.random.default_rng(5)
    return {
        "v1/big": (rng.standard_normal((600, 600)).astype(np.float32), tf.float32),
        "v1/float32": (_special_floats(rng, np.float32, 8), tf.float32),
        "v1/float64": (_special_floats(rng, np.float64, 8).reshape(2, 4), tf.float64),
        "v1/int32": (np.array([-(2**31), 2**31 - 1, 0, -1, 7], dtype=np.int32), tf.int32),
        "v1/int64": (np.array([-(2**63), 2**63 - 1, 2**53 + 1, -1], dtype=np.int64), tf.int64),
        "v1/uint8": (np.array([0, 1, 127, 128, 255], dtype=np.uint8), tf.uint8),
        "v1/int16": (np.array([-32768, 32767, -1, 0], dtype=np.int16), tf.int16),
        "v1/int8": (np.array([-128, 127, -1, 0], dtype=np.int8), tf.int8),
        "v1/bool": (np.array([[True, False], [False, True]]), tf.bool),
        "v1/string": (np.array([b"a\x00b", "é✓".encode(), b""], dtype=object), tf.string),
        "v1/scalar": (np.array(-4.5, dtype=np.float32), tf.float32),
        "v1/empty": (np.zeros((0, 3), dtype=np.float32), tf.float32),
        "v1/float16": (_special_floats(rng, np.float16, 8), tf.float16),
        "v1/uint16": (np.array([0, 1, 65535, 40000], dtype=np.uint16), tf.uint16),
        "v1/complex64": (np.array([1 + 2j, -0.5j, np.nan], dtype=np.complex64), tf.complex64),
        "v1/complex128": (np.array([3 - 4j, 1e300 + 1e-300j]), tf.complex128),
    }


def _v1_unsavable() -> dict[str, str]:
    """Try a V1 save of each dtype expected to fail; {dtype: TF's error}."""
    failures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("bfloat16", "uint32", "uint64"):
            value = np.zeros(2, dtype=tf.as_dtype(name).as_numpy_dtype)
            try:
                _graph_save(Path(tmp) / name, {"v": (value, tf.as_dtype(name))}, write_version=V1)
                failures[name] = "saved (unexpectedly)"
            except (tf.errors.OpError, ValueError) as exc:
                failures[name] = _error_text(exc)
    return failures


def _object_based(prefix: Path) -> tuple[str, str]:
    """tf.train.Checkpoint of a tf.Module and a Keras Dense layer, saved with .save()."""
    import keras

    rng = np.random.default_rng(13)
    model = tf.Module(name="net")
    model.conv_kernel = tf.Variable(rng.standard_normal((3, 3, 1, 4)).astype(np.float32))
    model.dense = {
        "kernel": tf.Variable(rng.standard_normal((4, 3)).astype(np.float32)),
        "bias": tf.Variable(np.array([0.5, -0.25, 0.0], dtype=np.float32)),
    }
    model.blocks = [tf.Variable(np.arange(3, dtype=np.int32))]
    head = keras.layers.Dense(2, name="head")
    head.build((None, 3))
    head.set_weights(
        [rng.standard_normal((3, 2)).astype(np.float32), np.array([0.1, -0.1], dtype=np.float32)]
    )
    checkpoint = tf.train.Checkpoint(model=model, head=head, step=tf.Variable(42, dtype=tf.int64))
    return checkpoint.save(str(prefix)), f"keras {keras.__version__}"


def _policy_sharded(prefix: Path) -> str:
    """tf.train.Checkpoint.write with MaxShardSizePolicy: several shards, sliced tensors."""
    rng = np.random.default_rng(17)
    module = tf.Module()
    module.a = tf.Variable(rng.standard_normal((10, 10)).astype(np.float32))
    module.b = tf.Variable(np.arange(30, dtype=np.int64) * 3 - 40)
    module.c = tf.Variable(1.5)
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=200)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy)
    return tf.train.Checkpoint(m=module).write(str(prefix), options=options)


def _entry(name: str, root: Path, prefix: str, writer: str, notes: list[str]) -> dict:
    """The manifest entry: describe() plus files, data files and checkpoint state."""
    entry = {"name": name, "writer": writer, **describe(prefix)}
    directory = root / name
    entry["files"] = [
        {"path": p.relative_to(root).as_posix(), "size": p.stat().st_size}
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    ]
    entry["data_files"] = [f["path"] for f in entry["files"] if ".data-" in f["path"]]
    state = tf.train.get_checkpoint_state(str(directory))
    if state is not None:
        entry["checkpoint_state"] = {
            "model_checkpoint_path": state.model_checkpoint_path,
            "all_model_checkpoint_paths": list(state.all_model_checkpoint_paths),
            "latest_checkpoint": tf.train.latest_checkpoint(str(directory)),
        }
    failed = [n for n in entry.get("errors", {}) if n not in entry["tensors"]]
    if failed:  # what the reader refuses, a Saver may still restore
        try:
            entry["tensors"].update(saver_restore(prefix, failed))
        except (tf.errors.OpError, OracleError) as exc:
            notes.append(f"Saver.restore of {failed} failed too: {_error_text(exc)}")
    entry["notes"] = notes
    return entry


def make(root: Path) -> dict[str, Any]:
    """Write every reference checkpoint under `root`; return the manifest."""
    start = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    for name in CHECKPOINT_NAMES:
        if (root / name).exists():
            raise FileExistsError(f"{root / name} exists; make needs a fresh directory")
    saver_v2 = "tf.compat.v1.train.Saver (V2, graph mode)"
    out = []

    prefix = _graph_save(root / "saver_v2_dtypes" / "model.ckpt", _dtype_arrays())
    out.append(
        _entry(
            "saver_v2_dtypes",
            root,
            prefix,
            saver_v2,
            [
                "all 16 dtypes (incl. uint32/uint64/bfloat16/string) saved as "
                "tf.compat.v1.Variable on CPU; none left out"
            ],
        )
    )

    prefix = _graph_save(
        root / "saver_v2_scoped" / "model.ckpt", _scoped_arrays(), global_step=1000
    )
    out.append(_entry("saver_v2_scoped", root, prefix, saver_v2 + ", global_step=1000", []))

    prefix = _partitioned_save(root / "partitioned" / "model.ckpt")
    out.append(
        _entry(
            "partitioned",
            root,
            prefix,
            saver_v2 + ", partitioned variables",
            [
                "part/w: fixed_size_partitioner(3) -> rows 0:4, 4:7, 7:10; part/cols: partitioner "
                "returning [1, 2] -> columns 0:3, 3:6; part/b unpartitioned",
                "raw_keys come from CheckpointReader.debug_string(), which skips the header entry "
                "(key '') and the full-tensor entries of sliced tensors (key = plain name, "
                "BundleEntryProto with slices); slice keys hold OrderedCode bytes (latin-1 here)",
            ],
        )
    )

    arrays, devices = _sharded_arrays()
    prefix = _graph_save(root / "sharded" / "model.ckpt", arrays, devices=devices, sharded=True)
    sharded = _entry(
        "sharded",
        root,
        prefix,
        "tf.compat.v1.train.Saver(sharded=True), V2",
        [
            "two logical CPU devices via tf.config.set_logical_device_configuration; "
            "shard0/* on /cpu:0, shard1/* on /cpu:1"
        ],
    )
    sharded["devices"] = devices
    out.append(sharded)

    prefix, keras_version = _object_based(root / "object_based" / "ckpt")
    out.append(
        _entry(
            "object_based",
            root,
            prefix,
            "tf.train.Checkpoint.save (eager)",
            [
                "model is a tf.Module (conv_kernel, dense dict, blocks list); head is a "
                f"{keras_version} Dense layer"
            ],
        )
    )

    prefix = _policy_sharded(root / "sharded_policy" / "ckpt")
    out.append(
        _entry(
            "sharded_policy",
            root,
            prefix,
            "tf.train.Checkpoint.write + MaxShardSizePolicy(max_shard_size=200)",
            ["the policy splits big tensors into slices across shards"],
        )
    )

    unsavable = _v1_unsavable()
    prefix = _graph_save(root / "saver_v1" / "model.ckpt", _v1_arrays(), write_version=V1)
    out.append(
        _entry(
            "saver_v1",
            root,
            prefix,
            "tf.compat.v1.train.Saver(write_version=V1)",
            [
                *(f"V1 cannot save {k}: {v}" for k, v in unsavable.items()),
                "float16/uint16/complex64/complex128 save, but CheckpointReader.get_tensor refuses "
                "them (see errors); their tensors come from Saver.restore (via=saver_restore)",
            ],
        )
    )

    prefix = _partitioned_save(root / "saver_v1_partitioned" / "model.ckpt", write_version=V1)
    out.append(
        _entry(
            "saver_v1_partitioned",
            root,
            prefix,
            "tf.compat.v1.train.Saver(write_version=V1), partitioned variables",
            [
                "same variables as 'partitioned'; the V1 reader refuses the "
                "multi-slice tensors (see errors); their tensors come from "
                "Saver.restore into unpartitioned variables"
            ],
        )
    )

    return {
        "checkpoints": out,
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "seconds": round(time.monotonic() - start, 2),
    }


# --- command line --------------------------------------------------------------------------


def _read(prefix: str) -> tuple[int, dict[str, Any]]:
    """describe(prefix); a tensor TF cannot read also sets "error" (the first one)."""
    try:
        result = describe(prefix)
    except (tf.errors.OpError, ValueError, OSError, RuntimeError) as exc:
        return EXIT_TF_ERROR, {"prefix": prefix, "error": _error_text(exc)}
    if "errors" in result:
        result["error"] = next(iter(result["errors"].values()))
        return EXIT_TF_ERROR, result
    return EXIT_OK, result


def _run(argv: list[str]) -> tuple[int, dict[str, Any]]:
    global V1, tf
    if (
        not argv
        or argv[0] not in ("make", "read", "restore")
        or len(argv) < 2
        or (argv[0] == "make" and len(argv) != 2)
    ):
        return EXIT_USAGE, {
            "error": "usage: tf_oracle.py make DIR | read PREFIX... | restore PREFIX NAME..."
        }
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow
    except Exception as exc:  # any import failure means: no usable TensorFlow
        return EXIT_NO_TF, {
            "error": _error_text(exc),
            "skip": f"tensorflow is not importable: {_error_text(exc)}",
        }
    tf = tensorflow
    V1 = tf.compat.v1.train.SaverDef.V1
    tf.get_logger().setLevel("ERROR")
    command, target = argv[0], argv[1]
    if command == "make":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    try:
        if command == "make":
            return EXIT_OK, make(Path(target))
        if command == "read" and len(argv) > 2:  # one TF import for several checkpoints
            reads = [_read(prefix) for prefix in argv[1:]]
            result: dict[str, Any] = {"reads": [r for _, r in reads]}
            failed = sum(status != EXIT_OK for status, _ in reads)
            if failed:
                result["error"] = f"{failed} of {len(reads)} reads reported an error"
            return (EXIT_TF_ERROR if failed else EXIT_OK), result
        if command == "read":
            return _read(target)
        return EXIT_OK, {"restored": saver_restore(target, argv[2:])}
    except OracleError as exc:
        return EXIT_TF_ERROR, {"error": str(exc)}
    except (tf.errors.OpError, ValueError, OSError, RuntimeError) as exc:
        return EXIT_TF_ERROR, {"error": _error_text(exc)}


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
