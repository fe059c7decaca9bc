"""The TensorFlow oracle script (tests/tf_oracle.py) checked for self-consistency.

One `make` writes the reference checkpoints; the checks here need neither TensorFlow in
this process nor weightconv's reader: files exist with the listed sizes, tables end with
the LevelDB magic, the listed values hash to the listed digests and (V2) sit byte for
byte in the data files, which hold exactly the listed tensors, and fresh TF processes
(`read`, `restore`) agree with the manifest. The four follow-up subprocesses run two at a
time (each pays TensorFlow's import time).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .tf_oracle import run_oracle, tensor_digest

pytestmark = pytest.mark.oracle

LEVELDB_MAGIC = bytes.fromhex("57fb808b247547db")
CHECKPOINTS = {
    "saver_v2_dtypes",
    "saver_v2_scoped",
    "partitioned",
    "sharded",
    "object_based",
    "sharded_policy",
    "saver_v1",
    "saver_v1_partitioned",
}
SCOPED = [
    "my/conv1/weights",
    "my/conv1/biases",
    "my/fc6/weights",
    "my/fc6/biases",
    "my/conv1/weights/Adam",
    "my/conv1/weights/Adam_1",
    "Variable_3",
]


@pytest.fixture(scope="module")
def made(tf_reference: tuple[Path, dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    return tf_reference


@pytest.fixture(scope="module")
def by_name(made: tuple[Path, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in made[1]["checkpoints"]}


@pytest.fixture(scope="module")
def later(by_name: dict[str, dict[str, Any]]) -> Iterator[dict[str, Future]]:
    """Every follow-up oracle call, started at once (each pays TF's import time)."""
    prefixes = [c["prefix"] for c in by_name.values()]
    missing = by_name["saver_v2_scoped"]["prefix"] + "-nope"
    calls: dict[str, tuple[str, ...]] = {"read": ("read", *prefixes, missing)}
    calls["restore scoped"] = ("restore", by_name["saver_v2_scoped"]["prefix"], *SCOPED)
    calls["restore partitioned"] = (
        "restore",
        by_name["partitioned"]["prefix"],
        "part/w",
        "part/cols",
        "part/b",
    )
    calls["restore missing"] = ("restore", by_name["saver_v2_scoped"]["prefix"], "no/such")
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {key: pool.submit(run_oracle, *args) for key, args in calls.items()}


def array_from_record(record: dict[str, Any]) -> np.ndarray:
    """Rebuild a tensor from the manifest's "values" (independently of TF)."""
    dtype, shape, values = record["dtype"], tuple(record["shape"]), record["values"]
    if dtype == "object":
        flat = np.array(values, dtype=object).reshape(-1) if shape else [values]
        return np.array([s.encode("latin-1") for s in flat], dtype=object).reshape(shape)
    if dtype.startswith("complex"):
        pairs = np.array(values, dtype=np.float64).reshape((*shape, 2))
        out = np.empty(shape, dtype=dtype)
        out.real, out.imag = pairs[..., 0], pairs[..., 1]
        return out
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return np.array(values, dtype=np.float64).astype(ml_dtypes.bfloat16).reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


def string_tensor_size(strings: np.ndarray) -> int:
    """Bytes a V2 bundle spends on a string tensor: a varint64 length per element, a
    4-byte checksum of the lengths, then the bytes."""
    items = strings.reshape(-1).tolist()
    varints = sum(max(1, -(-len(s).bit_length() // 7)) for s in items)
    return varints + 4 + sum(len(s) for s in items)


def is_sliced(checkpoint: dict[str, Any], name: str) -> bool:
    return any(key.startswith(f"\x00{name}\x00") for key in checkpoint.get("raw_keys", []))


# --- the manifest --------------------------------------------------------------------------


def test_manifest_lists_every_checkpoint(made, by_name):
    _, manifest = made
    assert set(by_name) == CHECKPOINTS
    assert manifest["tensorflow"]
    for c in by_name.values():
        assert c["format"] == ("v1" if c["name"].startswith("saver_v1") else "v2")
        assert c["writer"] and c["variables"] and c["files"]
        listed = {name for name, _ in c["variables"]}
        assert listed == set(c["tensors"]), f"{c['name']}: a listed tensor has no record"
        for name, shape in c["variables"]:
            assert c["tensors"][name]["shape"] == shape, name


def test_expected_tensors_are_there(by_name):
    dtypes = {t["dtype"] for t in by_name["saver_v2_dtypes"]["tensors"].values()}
    assert dtypes >= {
        "float16",
        "float32",
        "float64",
        "bfloat16",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
        "complex64",
        "complex128",
        "object",
    }
    tensors = by_name["saver_v2_dtypes"]["tensors"]
    assert tensors["fc/weights"]["shape"] == [2048, 300]
    assert tensors["shapes/empty"]["shape"] == [0, 3] and tensors["shapes/scalar"]["shape"] == []
    assert set(by_name["saver_v2_scoped"]["tensors"]) == set(SCOPED)
    assert by_name["partitioned"]["tensors"]["part/w"]["shape"] == [10, 6]
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in by_name["object_based"]["tensors"]
    object_names = by_name["object_based"]["tensors"]
    assert any(n.endswith("/.ATTRIBUTES/VARIABLE_VALUE") for n in object_names)
    assert by_name["saver_v1"]["tensors"]["v1/big"]["shape"] == [600, 600]


def test_files_exist_with_listed_sizes(made, by_name):
    root, _ = made
    for c in by_name.values():
        for f in c["files"]:
            path = root / f["path"]
            assert path.is_file(), f["path"]
            assert path.stat().st_size == f["size"] > 0, f["path"]
        prefix = Path(c["prefix"])
        assert (
            prefix.with_name(prefix.name + ".index") if c["format"] == "v2" else prefix
        ).is_file()


def test_tables_end_with_leveldb_magic(made, by_name):
    root, _ = made
    for c in by_name.values():
        tables = [f["path"] for f in c["files"] if f["path"].endswith(".index")]
        if c["format"] == "v1":  # a V1 checkpoint is one table
            tables = [Path(c["prefix"]).relative_to(root).as_posix()]
        assert tables, c["name"]
        for table in tables:
            assert (root / table).read_bytes()[-8:] == LEVELDB_MAGIC, table


def test_values_hash_to_the_listed_digest(by_name):
    checked = 0
    for c in by_name.values():
        for name, record in c["tensors"].items():
            if "values" in record:
                assert tensor_digest(array_from_record(record)) == record["sha256"], (
                    f"{c['name']}:{name}"
                )
                checked += 1
    assert checked > 60


def test_v2_data_files_hold_exactly_the_tensors(made, by_name):
    """Data files = the tensors' bytes back to back (no framing), strings aside."""
    root, _ = made
    for c in by_name.values():
        if c["format"] != "v2":
            continue
        data = b"".join((root / f).read_bytes() for f in c["data_files"])
        expected = 0
        for name, record in c["tensors"].items():
            if record["dtype"] == "object":
                expected += string_tensor_size(array_from_record(record))
                continue
            itemsize = 2 if record["dtype"] == "bfloat16" else np.dtype(record["dtype"]).itemsize
            expected += itemsize * int(np.prod(record["shape"], dtype=np.int64))
            if "values" in record and not is_sliced(c, name):
                raw = array_from_record(record).tobytes()
                assert raw in data, f"{c['name']}:{name} bytes not in the data files"
        assert len(data) == expected, c["name"]


def test_sharded_has_two_data_files(made, by_name):
    root, _ = made
    files = sorted(Path(f).name for f in by_name["sharded"]["data_files"])
    assert files == ["model.ckpt.data-00000-of-00002", "model.ckpt.data-00001-of-00002"]
    assert all((root / f).stat().st_size > 0 for f in by_name["sharded"]["data_files"])
    assert len(by_name["sharded_policy"]["data_files"]) > 1


def test_checkpoint_state_points_at_the_prefix(by_name):
    scoped = by_name["saver_v2_scoped"]
    assert scoped["prefix"].endswith("model.ckpt-1000")
    assert scoped["checkpoint_state"]["latest_checkpoint"] == scoped["prefix"]


def test_partitioned_raw_keys_are_slice_keys(by_name):
    keys = by_name["partitioned"]["raw_keys"]
    assert sum(k.startswith("\x00part/w\x00") for k in keys) == 3
    assert sum(k.startswith("\x00part/cols\x00") for k in keys) == 2
    assert "part/b" in keys


def test_v1_refusals_are_recorded(by_name):
    errors = by_name["saver_v1_partitioned"]["errors"]
    assert set(errors) == {"part/w", "part/cols"}
    assert all("Sliced checkpoints are not supported" in e for e in errors.values())
    v1 = by_name["saver_v1_partitioned"]["tensors"]
    v2 = by_name["partitioned"]["tensors"]
    assert {n: t["sha256"] for n, t in v1.items()} == {n: t["sha256"] for n, t in v2.items()}


# --- fresh TF processes agree --------------------------------------------------------------


def test_read_agrees_with_make(by_name, later):
    reads = later["read"].result()["reads"]
    assert len(reads) == len(by_name) + 1
    for (name, c), result in zip(by_name.items(), reads, strict=False):
        assert result["prefix"] == c["prefix"]
        assert result.get("errors") == c.get("errors"), name
        assert ("error" in result) == bool(c.get("errors")), name
        for tensor, record in result["tensors"].items():
            assert record == c["tensors"][tensor], f"{name}:{tensor}"
        via_reader = {n for n, r in c["tensors"].items() if r["via"] == "reader"}
        assert set(result["tensors"]) == via_reader, name


def test_restore_scoped(by_name, later):
    restored = later["restore scoped"].result()["restored"]
    tensors = by_name["saver_v2_scoped"]["tensors"]
    assert set(restored) == set(SCOPED)
    for name, record in restored.items():
        assert (record["dtype"], record["shape"], record["sha256"]) == (
            tensors[name]["dtype"],
            tensors[name]["shape"],
            tensors[name]["sha256"],
        ), name


def test_restore_reassembles_slices(by_name, later):
    restored = later["restore partitioned"].result()["restored"]
    tensors = by_name["partitioned"]["tensors"]
    assert {n: r["sha256"] for n, r in restored.items()} == {
        n: tensors[n]["sha256"] for n in ("part/w", "part/cols", "part/b")
    }


def test_errors_come_back_as_json(later):
    assert "NotFoundError" in later["restore missing"].result()["error"]
    assert "NotFoundError" in later["read"].result()["reads"][-1]["error"]


# --- the digest rule (no TensorFlow) -------------------------------------------------------


def test_digest_rule():
    sha = hashlib.sha256
    assert tensor_digest(np.array([True, False, True])) == sha(b"\x01\x00\x01").hexdigest()
    little = np.arange(6, dtype="<f4").reshape(2, 3)
    assert tensor_digest(little.astype(">f4")) == sha(little.tobytes()).hexdigest()
    assert tensor_digest(little.T) == sha(np.ascontiguousarray(little.T).tobytes()).hexdigest()
    strings = np.array([b"ab\x00", "é", b""], dtype=object)
    blob = b"".join(len(s).to_bytes(8, "little") + s for s in (b"ab\x00", "é".encode(), b""))
    assert tensor_digest(strings) == sha(blob).hexdigest()
    assert (
        tensor_digest(np.array(b"x\x00", dtype=object))
        == sha((2).to_bytes(8, "little") + b"x\x00").hexdigest()
    )


def test_digest_bfloat16_equals_raw_bits():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = np.array([1.5, -0.0, np.inf, np.nan], dtype=ml_dtypes.bfloat16)
    bits = values.view(np.uint16)
    assert tensor_digest(values) == tensor_digest(bits) == tensor_digest(bits.astype(">u2"))
