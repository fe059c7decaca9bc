"""TensorFlow is the judge of our checkpoints, both ways.

- Reading: every checkpoint TensorFlow writes (tests/tf_oracle.py `make`: Saver V2 with every
  dtype, scoped names, partitioned and sharded variables, object-based and size-sharded
  tf.train.Checkpoint, V1 files) lists and reads exactly as TensorFlow's own reader does.
- Writing: TensorFlow reads every checkpoint we write (all dtypes, strings, several shards,
  scopes) bit-identically, Saver restores it into variables by our names, and from the same
  arrays in the same order we write the very bytes TensorFlow's Saver wrote.

TensorFlow runs only in subprocesses; this process never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import weightconv
from weightconv.codecs import sstable
from weightconv.formats.ckpt import format as ckpt
from weightconv.formats.ckpt.naming import locate
from weightconv.mapping import Mapping
from weightconv.model import Layer, WeightSet

from .conftest import CORPUS
from .tf_oracle import run_oracle, tensor_digest

pytestmark = pytest.mark.oracle


def _by_name(reference: tuple[Path, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in reference[1]["checkpoints"]}


def _ours(prefix: str) -> dict[str, np.ndarray]:
    """Every tensor as our reader gives it, by full name."""
    _, infos, _ = ckpt.list_tensors(prefix)
    return {info.name: info.load() for info in infos}


@pytest.mark.parametrize(
    "name",
    [
        "saver_v2_dtypes",
        "saver_v2_scoped",
        "partitioned",
        "sharded",
        "object_based",
        "sharded_policy",
        "saver_v1",
        "saver_v1_partitioned",
    ],
)
def test_we_read_what_tensorflow_writes(tf_reference, name):
    reference = _by_name(tf_reference)[name]
    _, infos, _ = ckpt.list_tensors(reference["prefix"])
    listed = sorted([info.name, list(info.shape)] for info in infos)
    assert listed == sorted(reference["variables"])  # the same names, nothing hidden or extra
    ours = _ours(reference["prefix"])
    for tensor, expected in reference["tensors"].items():
        array = ours[tensor]
        assert list(array.shape) == expected["shape"], tensor
        dtype = "object" if array.dtype == object else array.dtype.name
        assert dtype == expected["dtype"], tensor
        assert tensor_digest(array) == expected["sha256"], tensor
    # tensors TensorFlow's own reader refuses (V1: half, complex, uint16, sliced) we read
    # too; their expected digests come from Saver.restore, which does read them
    assert set(reference["tensors"]) == set(ours)


def test_v1_sliced_tensor_tensorflow_refuses_we_reassemble(tf_reference):
    reference = _by_name(tf_reference)["saver_v1_partitioned"]
    assert "Sliced checkpoints are not supported" in reference["errors"]["part/w"]
    assert reference["tensors"]["part/w"]["via"] == "saver_restore"
    part = _ours(reference["prefix"])["part/w"]
    assert tensor_digest(part) == reference["tensors"]["part/w"]["sha256"]


def test_state_file_from_a_saver(tf_reference):
    reference = _by_name(tf_reference)["saver_v2_scoped"]
    folder = Path(reference["prefix"]).parent
    assert str(locate(folder).path) == reference["checkpoint_state"]["latest_checkpoint"]


@pytest.mark.corpus
def test_corpus_checkpoints_read_as_tensorflow_reads_them():
    prefixes = [
        CORPUS / "tf" / "saved_model_half_plus_two_cpu" / "variables" / "variables",
        CORPUS / "tf" / "saved_model_half_plus_two_tf2_cpu" / "variables" / "variables",
        CORPUS / "tf" / "ultralight_slim" / "variables",
        CORPUS / "tf" / "bad_half_plus_two_v1" / "export",
    ]
    if not all(Path(f"{p}.index").exists() or p.exists() for p in prefixes):
        pytest.skip("../shared/corpus/tf not present (a fresh clone has no ../shared; CI has it)")
    result = run_oracle("read", *map(str, prefixes))
    for prefix, reference in zip(prefixes, result["reads"], strict=True):
        assert "error" not in reference, reference
        ours = _ours(str(prefix))
        assert sorted([n, list(ours[n].shape)] for n in ours) == sorted(reference["variables"])
        for tensor, expected in reference["tensors"].items():
            assert tensor_digest(ours[tensor]) == expected["sha256"], (prefix, tensor)


# Writing -----------------------------------------------------------------------------------


def _every_dtype() -> WeightSet:
    import ml_dtypes

    rng = np.random.default_rng(11)
    tensors: dict[str, np.ndarray] = {}
    for name in [
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "complex64",
        "complex128",
    ]:
        dtype = np.dtype(name)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            tensors[name] = rng.integers(info.min, info.max, (3, 4), dtype=dtype, endpoint=True)
        elif dtype.kind == "c":
            tensors[name] = (rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))).astype(
                dtype
            )
        else:
            tensors[name] = rng.standard_normal((3, 4)).astype(dtype)
            tensors[name][0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    tensors["bool"] = rng.integers(0, 2, (7,)).astype(bool)
    tensors["bfloat16"] = rng.standard_normal(5).astype(ml_dtypes.bfloat16)
    tensors["string"] = np.array(
        [b"a\x00b", "\u00fcber".encode(), b"", b"\xff" * 200], dtype=object
    )
    tensors["scalar"] = np.array(-1.5, "f8")
    tensors["empty"] = np.zeros((0, 3), "f4")
    return WeightSet(
        layers=[
            Layer(
                "conv1",
                tensors={
                    "weights": rng.standard_normal((3, 3, 3, 8)).astype("f4"),
                    "biases": rng.standard_normal(8).astype("f4"),
                },
            ),
            Layer(
                "fc6",
                tensors={
                    "weights": rng.standard_normal((1024, 300)).astype("f4"),
                    "biases": rng.standard_normal(300).astype("f4"),
                },
            ),
            Layer("dtypes", tensors=tensors),
        ]
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, WeightSet]:
    """Our checkpoints: plain, scoped into three shards; TensorFlow reads them all at once."""
    root = tmp_path_factory.mktemp("ours")
    weights = _every_dtype()
    (root / "plain").mkdir()
    (root / "sharded").mkdir()
    weightconv.save(weights, root / "plain" / "model.ckpt")
    weightconv.save(
        Mapping(scope="my/").apply(weights), root / "sharded" / "model.ckpt-7", shards=3
    )
    return root, weights


def test_tensorflow_reads_what_we_write(written):
    root, weights = written
    plain, sharded = root / "plain" / "model.ckpt", root / "sharded" / "model.ckpt-7"
    assert len(list((root / "sharded").glob("model.ckpt-7.data-*-of-00003"))) == 3
    result = run_oracle("read", str(plain), str(sharded))
    for prefix, reference, scope in zip(
        [plain, sharded], result["reads"], ["", "my/"], strict=True
    ):
        assert "error" not in reference, reference
        expected = {
            scope + layer.tensor_name(role): array for layer, role, array in weights.tensors()
        }
        assert sorted(reference["tensors"]) == sorted(expected), prefix
        for name, array in expected.items():
            got = reference["tensors"][name]
            assert got["shape"] == list(array.shape), name
            assert got["sha256"] == tensor_digest(array), name
            assert got["dtype"] == ("object" if array.dtype == object else array.dtype.name)


def test_saver_restores_what_we_write(written):
    root, weights = written
    names = [
        "my/conv1/weights",
        "my/conv1/biases",
        "my/fc6/weights",
        "my/dtypes/string",
        "my/dtypes/uint64",
    ]
    result = run_oracle("restore", str(root / "sharded" / "model.ckpt-7"), *names)
    assert "error" not in result, result
    flat = {"my/" + layer.tensor_name(role): array for layer, role, array in weights.tensors()}
    for name in names:
        assert result["restored"][name]["sha256"] == tensor_digest(flat[name]), name


def test_same_arrays_same_bytes_as_tensorflows_saver(tf_reference, tmp_path):
    """Given the arrays TensorFlow's Saver saved, in its (sorted) order, our writer produces
    its .index and .data files byte for byte."""
    reference = _by_name(tf_reference)["saver_v2_dtypes"]
    prefix = Path(reference["prefix"])
    arrays = _ours(str(prefix))
    layers = [Layer(name, tensors={"value": arrays[name]}) for name in sorted(arrays)]
    weightconv.save(WeightSet(layers=layers), tmp_path / "model.ckpt", write_state=False)
    for suffix in [".index", ".data-00000-of-00001"]:
        theirs = Path(f"{prefix}{suffix}").read_bytes()
        mine = (tmp_path / f"model.ckpt{suffix}").read_bytes()
        assert mine == theirs, suffix


# What inspect lists --------------------------------------------------------------------------

#: Per reference checkpoint, the tensors that are no layer's (tests/tf_oracle.py writes them).
SET_ASIDE = {
    "saver_v2_dtypes": {
        "global_step": "training state",
        "dtypes/string": "strings, not weights",
        "dtypes/string_scalar": "strings, not weights",
    },
    "saver_v2_scoped": {
        "my/conv1/weights/Adam": "training state",
        "my/conv1/weights/Adam_1": "training state",
    },
    "partitioned": {},
    "sharded": {"shard1/names": "strings, not weights"},
    "object_based": {
        "_CHECKPOINTABLE_OBJECT_GRAPH": "training state",
        "save_counter/.ATTRIBUTES/VARIABLE_VALUE": "training state",
    },
    "sharded_policy": {"_CHECKPOINTABLE_OBJECT_GRAPH": "training state"},
    "saver_v1": {"v1/string": "strings, not weights"},
    "saver_v1_partitioned": {},
}


@pytest.mark.parametrize("name", sorted(SET_ASIDE))
def test_inspect_lists_every_tensor_tensorflow_lists(tf_reference, name):
    """weightconv.inspect lists exactly what tf.train.load_checkpoint's variable-to-shape map
    lists, names and shapes; optimizer slots, step counters and the object graph are marked,
    and no conversion carries them."""
    reference = _by_name(tf_reference)[name]
    inventory = weightconv.inspect(reference["prefix"])
    listed = sorted([t.name, list(t.shape)] for t in inventory.tensors)
    assert listed == sorted(reference["variables"])
    marked = {t.name: t.status for t in inventory.tensors if t.status != "weights"}
    assert marked == SET_ASIDE[name]
    carried = {
        layer.tensor_name(role) for layer, role, _ in weightconv.load(reference["prefix"]).tensors()
    }
    assert carried.isdisjoint(SET_ASIDE[name])


# Balanced shards ------------------------------------------------------------------------------


def _vgg_like() -> WeightSet:
    """VGG16 at an eighth of its width: the same spread of sizes (fc6's kernel most of it)."""
    rng = np.random.default_rng(16)
    layers = []
    channels = 3
    for block, (width, count) in enumerate([(8, 2), (16, 2), (32, 3), (64, 3), (64, 3)], 1):
        for i in range(count):
            layers.append(
                Layer(
                    f"conv{block}_{i + 1}",
                    tensors={
                        "weights": rng.standard_normal((3, 3, channels, width)).astype("f4"),
                        "biases": rng.standard_normal(width).astype("f4"),
                    },
                )
            )
            channels = width
    for name, inputs, outputs in [("fc6", 7 * 7 * 64, 512), ("fc7", 512, 512), ("fc8", 512, 125)]:
        layers.append(
            Layer(
                name,
                tensors={
                    "weights": rng.standard_normal((inputs, outputs)).astype("f4"),
                    "biases": rng.standard_normal(outputs).astype("f4"),
                },
            )
        )
    return WeightSet(layers=layers)


def test_tensorflow_restores_a_balanced_four_shard_checkpoint(tmp_path):
    weights = _vgg_like()
    prefix = tmp_path / "vgg.ckpt"
    result = weightconv.save(weights, prefix, shards=4)
    data = sorted(tmp_path.glob("vgg.ckpt.data-*"))
    assert [p.name for p in data] == [f"vgg.ckpt.data-{i:05d}-of-00004" for i in range(4)]
    sizes = [p.stat().st_size for p in data]
    largest = max(array.nbytes for _, _, array in weights.tensors())
    assert min(sizes) > 0 and max(sizes) <= largest + sum(sizes) / 4
    assert sum(sizes) == result.bytes - Path(f"{prefix}.index").stat().st_size
    keys = [k for k, _ in sstable.TableReader(f"{prefix}.index").items()]
    assert keys == sorted(keys)
    # the layers read back in the order they were written, across the files
    assert weightconv.load(prefix).names() == weights.names()
    flat = {layer.tensor_name(role): array for layer, role, array in weights.tensors()}
    restored = run_oracle("restore", str(prefix), *flat)
    assert "error" not in restored, restored
    for name, array in flat.items():
        assert restored["restored"][name]["shape"] == list(array.shape), name
        assert restored["restored"][name]["sha256"] == tensor_digest(array), name


# The state file -------------------------------------------------------------------------------


def test_tensorflow_follows_our_state_file(tmp_path):
    """TensorFlow, given the folder, opens the checkpoint our state file names: the one
    written with write_state=True, not the later one written with write_state=False."""
    rng = np.random.default_rng(4)

    def one(name: str) -> WeightSet:
        return WeightSet(layers=[Layer(name, tensors={"weights": rng.standard_normal(5)})])

    first, second, third = one("first"), one("second"), one("third")
    weightconv.save(first, tmp_path / "model.ckpt-1")
    weightconv.save(second, tmp_path / "model.ckpt-2", write_state=True)
    weightconv.save(third, tmp_path / "model.ckpt-3", write_state=False)
    seen = run_oracle("read", str(tmp_path))
    assert "error" not in seen, seen
    assert seen["tensors"]["second/weights"]["sha256"] == tensor_digest(
        second["second"].tensors["weights"]
    )
    assert sorted(seen["tensors"]) == ["second/weights"]
