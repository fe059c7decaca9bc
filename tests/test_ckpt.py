"""TensorFlow checkpoints without TensorFlow: layout on disk, corruption, paths, laziness.

TensorFlow itself checks what we write and what we read in test_ckpt_tf_oracle.py;
the tests here need nothing but the package and build their inputs byte by byte
where the writer under test cannot make them (partitioned variables, V1 files).
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import weightconv
from weightconv import cli
from weightconv._proto import tf_checkpoint_pb2 as pb
from weightconv.codecs import crc32c, ordered_code, sstable
from weightconv.formats.ckpt import format as ckpt
from weightconv.formats.ckpt import shards as ckpt_shards
from weightconv.formats.ckpt.naming import locate
from weightconv.mapping import Mapping
from weightconv.model import Layer, WeightSet


def _weights() -> WeightSet:
    rng = np.random.default_rng(7)
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
                    "weights": rng.standard_normal((300, 200)).astype("f4"),
                    "biases": np.zeros(200, "f4"),
                },
            ),
            Layer("fc7", tensors={"weights": rng.standard_normal((200, 10)).astype("f8")}),
        ]
    )


ALL_DTYPES = [
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
    "bool",
    "complex64",
    "complex128",
]


def _all_dtypes() -> WeightSet:
    rng = np.random.default_rng(3)
    tensors = {}
    for name in ALL_DTYPES:
        dtype = np.dtype(name)
        if dtype.kind == "b":
            values = rng.integers(0, 2, (4, 5)).astype(bool)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            values = rng.integers(info.min, info.max, (4, 5), dtype=dtype, endpoint=True)
        elif dtype.kind == "c":
            values = (rng.standard_normal((4, 5)) + 1j * rng.standard_normal((4, 5))).astype(dtype)
        else:
            values = rng.standard_normal((4, 5)).astype(dtype)
            values[0, :3] = [np.nan, np.inf, -0.0]
        tensors[name] = values
    tensors["scalar"] = np.array(2.5, "f4")
    tensors["empty"] = np.zeros((0, 3), "f4")
    tensors["strings"] = np.array(
        [[b"a\x00b", "\u00e9t\u00e9".encode()], [b"", b"\xff" * 300]], dtype=object
    )
    return WeightSet(layers=[Layer("all", tensors=tensors)])


def _assert_same(a: np.ndarray, b: np.ndarray) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    if a.dtype == object:
        assert a.tolist() == b.tolist()
    else:
        assert a.tobytes() == b.tobytes()


# Writing and reading back ------------------------------------------------------------------


def test_round_trip_every_dtype(tmp_path):
    source = _all_dtypes()
    summary = weightconv.save(source, tmp_path / "m.ckpt")
    assert summary.tensors == len(source.layers[0].tensors)
    back = weightconv.load(tmp_path / "m.ckpt", flat=True)
    for role, array in source.layers[0].tensors.items():
        _assert_same(back[f"all/{role}"].tensors["value"], array)


def test_files_and_state_file(tmp_path):
    weightconv.save(_weights(), tmp_path / "model.ckpt-100", format="ckpt")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint", "model.ckpt-100.data-00000-of-00001", "model.ckpt-100.index"]
    state = (tmp_path / "checkpoint").read_text()
    assert 'model_checkpoint_path: "model.ckpt-100"' in state
    weightconv.save(_weights(), tmp_path / "model.ckpt-200", format="ckpt")
    state = (tmp_path / "checkpoint").read_text().splitlines()
    assert state == [
        'model_checkpoint_path: "model.ckpt-200"',
        'all_model_checkpoint_paths: "model.ckpt-100"',
        'all_model_checkpoint_paths: "model.ckpt-200"',
    ]
    # the folder now means its latest checkpoint
    assert locate(tmp_path).path == tmp_path / "model.ckpt-200"


def test_index_layout_by_hand(tmp_path):
    """Decode the index with nothing but struct and the generated protobuf module."""
    weightconv.save(Mapping(scope="net/").apply(_weights()), tmp_path / "m.ckpt")
    raw = (tmp_path / "m.ckpt.index").read_bytes()
    assert raw[-8:] == bytes.fromhex("57fb808b247547db")
    data = (tmp_path / "m.ckpt.data-00000-of-00001").read_bytes()
    entries = dict(sstable.TableReader(tmp_path / "m.ckpt.index").items())
    keys = list(entries)
    assert keys == sorted(keys) and keys[0] == b""
    header = pb.BundleHeaderProto.FromString(bytes(entries[b""]))
    assert (header.num_shards, header.endianness, header.version.producer) == (1, 0, 1)
    entry = pb.BundleEntryProto.FromString(bytes(entries[b"net/fc6/weights"]))
    assert entry.dtype == pb.DT_FLOAT and [d.size for d in entry.shape.dim] == [300, 200]
    payload = data[entry.offset : entry.offset + entry.size]
    assert entry.size == 300 * 200 * 4
    assert np.array_equal(
        np.frombuffer(payload, "<f4").reshape(300, 200), _weights()["fc6"].tensors["weights"]
    )
    assert crc32c.unmask(entry.crc32c) == crc32c.value(payload)
    total = sum(pb.BundleEntryProto.FromString(bytes(v)).size for k, v in entries.items() if k)
    assert total == len(data)  # densely packed, as TensorFlow writes


def test_many_tensors_span_several_index_blocks(tmp_path):
    layers = [
        Layer(f"layer_{i:04d}_{'x' * 40}", tensors={"weights": np.full((2,), i, "i4")})
        for i in range(4000)
    ]
    weightconv.save(WeightSet(layers=layers), tmp_path / "big.ckpt")
    with sstable.TableReader(tmp_path / "big.ckpt.index") as table:
        assert len(list(table.data_blocks())) > 1
        assert table.get(b"layer_3999_" + b"x" * 40 + b"/weights") is not None
        assert table.get(b"layer_3999_zzz") is None
    back = weightconv.load(tmp_path / "big.ckpt")
    assert len(back) == 4000
    assert np.asarray(back[f"layer_2345_{'x' * 40}"].tensors["weights"]).tolist() == [2345] * 2


@pytest.mark.parametrize("shards", [2, 3, 5])
def test_shards(tmp_path, shards):
    weightconv.save(_weights(), tmp_path / "s.ckpt", shards=shards)
    data = sorted(tmp_path.glob("s.ckpt.data-*"))
    assert [p.name for p in data] == [f"s.ckpt.data-{i:05d}-of-{shards:05d}" for i in range(shards)]
    assert all(p.stat().st_size > 0 for p in data)
    back = weightconv.load(tmp_path / "s.ckpt")
    for layer in _weights():
        for role, array in layer.tensors.items():
            _assert_same(back[layer.name].tensors[role], array)


def test_max_shard_size(tmp_path):
    weightconv.save(_weights(), tmp_path / "s.ckpt", max_shard_size=200_000)
    sizes = [p.stat().st_size for p in sorted(tmp_path.glob("s.ckpt.data-*"))]
    assert len(sizes) == 3  # fc6/weights (240 kB) alone, then the rest fit under the limit
    assert max(sizes) == 300 * 200 * 4


def test_scope_and_strip_scope(tmp_path):
    weightconv.save(Mapping(scope="vgg_16/").apply(_weights()), tmp_path / "m.ckpt")
    listed = [layer.name for layer in weightconv.load(tmp_path / "m.ckpt")]
    assert listed == ["vgg_16/conv1", "vgg_16/fc6", "vgg_16/fc7"]
    stripped = weightconv.load(tmp_path / "m.ckpt", strip_scope="vgg_16/")
    assert stripped.names() == ["conv1", "fc6", "fc7"]
    _assert_same(stripped["fc6"].tensors["weights"], _weights()["fc6"].tensors["weights"])


def test_keras_style_names_map_to_roles(tmp_path):
    rng = np.random.default_rng(0)
    kernel, bias = rng.standard_normal((4, 3)).astype("f4"), np.ones(3, "f4")
    flat = WeightSet(
        layers=[
            Layer("dense/kernel", tensors={"value": kernel}),
            Layer("dense/bias", tensors={"value": bias}),
            Layer("global_step", tensors={"value": np.array(7, "i8")}),
            Layer("dense/kernel/Adam", tensors={"value": kernel}),
        ]
    )
    weightconv.save(flat, tmp_path / "k.ckpt")
    grouped = weightconv.load(tmp_path / "k.ckpt")
    assert grouped.names() == ["dense"]
    layer = grouped["dense"]
    assert layer.kind == "dense" and set(layer.tensors) == {"weights", "biases"}
    assert layer.tensor_name("weights") == "dense/kernel"
    assert any("global_step" in note and "--flat" in note for note in grouped.notes)
    every = weightconv.load(tmp_path / "k.ckpt", flat=True)
    assert sorted(every.names()) == [
        "dense/bias",
        "dense/kernel",
        "dense/kernel/Adam",
        "global_step",
    ]


def test_partitioned_variable_is_reassembled(tmp_path):
    """A bundle holding a variable in three row slices, built by hand as TensorFlow lays
    it out: the full-name entry lists the slices, each slice is under its slice key."""
    full = np.arange(60, dtype="f4").reshape(10, 6)
    parts = [(0, 4), (4, 3), (7, 3)]
    prefix = tmp_path / "part"
    data = bytearray()
    entries: dict[bytes, bytes] = {}
    whole = pb.BundleEntryProto(dtype=pb.DT_FLOAT)
    whole.shape.dim.add(size=10)
    whole.shape.dim.add(size=6)
    for start, length in parts:
        extent = whole.slices.add()
        extent.extent.add(start=start, length=length)
        extent.extent.add()  # the whole second dimension
        piece = full[start : start + length].tobytes()
        entry = pb.BundleEntryProto(
            dtype=pb.DT_FLOAT,
            offset=len(data),
            size=len(piece),
            crc32c=crc32c.mask(crc32c.value(piece)),
        )
        entry.shape.dim.add(size=length)
        entry.shape.dim.add(size=6)
        entries[ordered_code.encode_slice_key("w", [(start, length), (0, -1)])] = (
            entry.SerializeToString()
        )
        data += piece
    entries[b"w"] = whole.SerializeToString()
    _write_bundle(prefix, entries, bytes(data))
    listed = ckpt.list_tensors(prefix)[1]
    assert [(i.name, i.shape, i.slices) for i in listed] == [("w", (10, 6), 3)]
    assert np.array_equal(
        np.asarray(weightconv.load(prefix, flat=True)["w"].tensors["value"]), full
    )


def _write_bundle(prefix: Path, entries: dict[bytes, bytes], data: bytes) -> None:
    header = pb.BundleHeaderProto(num_shards=1)
    header.version.producer = 1
    with open(f"{prefix}.index", "wb") as handle:
        table = sstable.TableWriter(handle)
        table.add(b"", header.SerializeToString())
        for key in sorted(entries):
            table.add(key, entries[key])
        table.finish()
    Path(f"{prefix}.data-00000-of-00001").write_bytes(data)


# Finding checkpoints ------------------------------------------------------------------------


def test_every_way_of_naming_a_checkpoint(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    weightconv.save(_weights(), folder / "model.ckpt-1000")
    expected = folder / "model.ckpt-1000"
    for spelled in [expected, f"{expected}.index", f"{expected}.data-00000-of-00001", folder]:
        assert locate(spelled).path == expected, spelled
        assert weightconv.load(spelled).names() == ["conv1", "fc6", "fc7"]
    alone = tmp_path / "variables"
    alone.mkdir()
    weightconv.save(_weights(), alone / "variables", write_state=False, format="ckpt")
    assert locate(alone).path == alone / "variables"  # a SavedModel's variables/


def test_state_file_with_absolute_path_from_another_machine(tmp_path):
    weightconv.save(_weights(), tmp_path / "export", write_state=False, format="ckpt")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/tmp/elsewhere/export"\n')
    assert locate(tmp_path).path == tmp_path / "export"


def test_listing_does_not_touch_the_data_file(tmp_path):
    weightconv.save(_weights(), tmp_path / "m.ckpt")
    data = tmp_path / "m.ckpt.data-00000-of-00001"
    data.unlink()
    ws = weightconv.load(tmp_path / "m.ckpt")
    assert ws["fc6"].tensors["weights"].shape == (300, 200)
    assert ws.nbytes == sum(t.nbytes for _, _, t in _weights().tensors())
    with pytest.raises(weightconv.FormatError, match=r"data-00000-of-00001: missing.*fc6"):
        np.asarray(ws["fc6"].tensors["weights"])


# Corrupt and hostile input ------------------------------------------------------------------


def _checkpoint(tmp_path: Path) -> Path:
    weightconv.save(_weights(), tmp_path / "m.ckpt")
    return tmp_path / "m.ckpt"


def test_flipped_byte_in_tensor_data_names_the_tensor(tmp_path):
    prefix = _checkpoint(tmp_path)
    entries = dict(sstable.TableReader(f"{prefix}.index").items())
    entry = pb.BundleEntryProto.FromString(bytes(entries[b"fc6/weights"]))
    data = tmp_path / "m.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[entry.offset + entry.size // 2] ^= 0x01
    data.write_bytes(raw)
    ws = weightconv.load(prefix)
    np.asarray(ws["conv1"].tensors["weights"])  # other tensors still read
    with pytest.raises(weightconv.FormatError, match=r"'fc6/weights': checksum mismatch"):
        np.asarray(ws["fc6"].tensors["weights"])


def test_flipped_byte_in_index_names_the_block(tmp_path):
    prefix = _checkpoint(tmp_path)
    index = Path(f"{prefix}.index")
    raw = bytearray(index.read_bytes())
    raw[10] ^= 0x20
    index.write_bytes(raw)
    with pytest.raises(weightconv.FormatError, match=r"data block at offset 0 .*checksum"):
        weightconv.load(prefix)


@pytest.mark.parametrize("cut", [1, 8, 30, 47, 60])
def test_truncated_index(tmp_path, cut):
    prefix = _checkpoint(tmp_path)
    index = Path(f"{prefix}.index")
    index.write_bytes(index.read_bytes()[:-cut])
    with pytest.raises(weightconv.FormatError):
        weightconv.load(index)


def test_every_single_byte_flip_in_the_index_is_caught(tmp_path):
    """Never wrong numbers: any one flipped bit in the index either raises or, when it hits
    bytes no reader uses (footer padding), leaves every tensor intact."""
    prefix = _checkpoint(tmp_path)
    index = Path(f"{prefix}.index")
    pristine = index.read_bytes()
    expected = {n: np.asarray(t).tobytes() for n, t in _flat(weightconv.load(prefix)).items()}
    for position in range(len(pristine)):
        damaged = bytearray(pristine)
        damaged[position] ^= 0x04
        index.write_bytes(damaged)
        try:
            got = {n: np.asarray(t).tobytes() for n, t in _flat(weightconv.load(prefix)).items()}
        except weightconv.WeightconvError:
            continue
        assert got == expected, f"byte {position}"


def _flat(ws: WeightSet) -> dict[str, object]:
    return {layer.tensor_name(role): t for layer, role, t in ws.tensors()}


def test_entry_pointing_outside_the_data_file(tmp_path):
    entry = pb.BundleEntryProto(dtype=pb.DT_FLOAT, offset=4, size=400)
    entry.shape.dim.add(size=100)
    _write_bundle(tmp_path / "bad", {b"w": entry.SerializeToString()}, b"\0" * 16)
    ws = weightconv.load(tmp_path / "bad")
    with pytest.raises(weightconv.FormatError, match=r"'w': bytes 4\.\.404 lie outside"):
        np.asarray(ws["w"].tensors["value"])


def test_size_that_does_not_match_the_shape(tmp_path):
    payload = b"\0" * 12
    entry = pb.BundleEntryProto(
        dtype=pb.DT_FLOAT, size=12, crc32c=crc32c.mask(crc32c.value(payload))
    )
    entry.shape.dim.add(size=4)
    _write_bundle(tmp_path / "bad", {b"w": entry.SerializeToString()}, payload)
    with pytest.raises(weightconv.FormatError, match=r"12 bytes stored for shape \[4\]"):
        np.asarray(weightconv.load(tmp_path / "bad")["w"].tensors["value"])


def test_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path):
    prefix = _checkpoint(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(weightconv.OutputExistsError):
        weightconv.save(_weights(), prefix)
    broken = _weights()
    broken.layers.append(
        Layer("when", tensors={"t": np.array(["2020-01-01"], dtype="datetime64[D]")})
    )
    with pytest.raises(weightconv.FormatError, match="when/t"):
        weightconv.save(broken, tmp_path / "other.ckpt")
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # no partial files, the existing checkpoint untouched


# V1 checkpoints, built byte by byte --------------------------------------------------------


def _v1_file(path: Path, tensors: dict[str, tuple[int, np.ndarray, list]]) -> None:
    """A V1 checkpoint: header under the empty key, one SavedSlice per slice key."""
    records: dict[bytes, bytes] = {}
    header = pb.SavedTensorSlices()
    header.meta.versions.producer = 1
    for name, (dtype, array, slices) in tensors.items():
        meta = header.meta.tensor.add(name=name, type=dtype)
        for n in array.shape:
            meta.shape.dim.add(size=n)
        for extents in slices:
            proto = meta.slice.add()
            region = []
            for (start, length), size in zip(extents, array.shape, strict=True):
                extent = proto.extent.add(start=start)
                if length >= 0:
                    extent.length = length
                region.append(slice(start, size if length < 0 else start + length))
            piece = array[tuple(region)]
            record = pb.SavedTensorSlices()
            record.data.name = name
            record.data.slice.CopyFrom(proto)
            record.data.data.dtype = dtype
            _fill(record.data.data, dtype, piece.reshape(-1))
            records[ordered_code.encode_slice_key(name, extents)] = record.SerializeToString()
    records[b""] = header.SerializeToString()
    with open(path, "wb") as handle:
        table = sstable.TableWriter(handle)
        for key in sorted(records):
            table.add(key, records[key])
        table.finish()


def _fill(proto, dtype: int, values: np.ndarray) -> None:
    if dtype == pb.DT_FLOAT:
        proto.float_val.extend(values.tolist())
    elif dtype == pb.DT_DOUBLE:
        proto.double_val.extend(values.tolist())
    elif dtype == pb.DT_INT64:
        proto.int64_val.extend(values.tolist())
    elif dtype == pb.DT_BOOL:
        proto.bool_val.extend(values.tolist())
    elif dtype == pb.DT_STRING:
        proto.string_val.extend(values.tolist())
    elif dtype == pb.DT_HALF:
        proto.half_val.extend(values.view(np.uint16).tolist())
    else:
        proto.int_val.extend(values.tolist())


def test_v1_checkpoint_every_field(tmp_path):
    rng = np.random.default_rng(5)
    tensors = {
        "conv1/weights": (
            pb.DT_FLOAT,
            rng.standard_normal((3, 3, 2, 4)).astype("f4"),
            [[(0, -1)] * 4],
        ),
        "d": (pb.DT_DOUBLE, rng.standard_normal(5), [[(0, -1)]]),
        "i32": (pb.DT_INT32, np.array([-1, 0, 2**31 - 1, -(2**31)], "i4"), [[(0, -1)]]),
        "i8": (pb.DT_INT8, np.array([-128, 127, 0], "i1"), [[(0, -1)]]),
        "u8": (pb.DT_UINT8, np.array([0, 255, 7], "u1"), [[(0, -1)]]),
        "i64": (pb.DT_INT64, np.array([-(2**63), 2**63 - 1, -5], "i8"), [[(0, -1)]]),
        "flag": (pb.DT_BOOL, np.array([True, False, True]), [[(0, -1)]]),
        "half": (pb.DT_HALF, np.array([1.5, -2.0, 65504], "f2"), [[(0, -1)]]),
        "names": (pb.DT_STRING, np.array([b"x\x00y", b""], dtype=object), [[(0, -1)]]),
        "global_step": (pb.DT_INT64, np.array(9, "i8"), [[]]),
        "split": (
            pb.DT_FLOAT,
            np.arange(24, dtype="f4").reshape(6, 4),
            [[(0, 2), (0, -1)], [(2, 4), (0, -1)]],
        ),
    }
    path = tmp_path / "old.ckpt"
    _v1_file(path, tensors)
    where = locate(path)
    assert where.version == 1
    ws = weightconv.load(path, flat=True)
    assert ws.source.detail["version"] == "V1 (tensor_slice)"
    for name, (_, array, _) in tensors.items():
        got = np.asarray(ws[name].tensors["value"])
        if array.dtype == object:
            assert got.tolist() == array.tolist()
        else:
            assert got.dtype == array.dtype and got.tobytes() == array.tobytes(), name


def test_v1_slice_missing(tmp_path):
    path = tmp_path / "old.ckpt"
    _v1_file(path, {"w": (pb.DT_FLOAT, np.zeros(4, "f4"), [[(0, 2)]])})
    ws = weightconv.load(path, flat=True)
    with pytest.raises(weightconv.FormatError, match="'w': its slices cover 2 of 4"):
        np.asarray(ws["w"].tensors["value"])


# The command line ---------------------------------------------------------------------------


def _run(*argv: str) -> tuple[int, str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "weightconv", *argv], capture_output=True, text=True, timeout=120
    )
    return result.returncode, result.stdout, result.stderr


def test_npy2ckpt_ckpt2npy_round_trip(tmp_path):
    weightconv.save(_weights(), tmp_path / "w.npy")
    assert (
        cli.main(
            [
                "npy2ckpt",
                str(tmp_path / "w.npy"),
                "-o",
                str(tmp_path / "w.ckpt"),
                "--scope",
                "my",
                "-q",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "ckpt2npy",
                str(tmp_path / "w.ckpt"),
                "-o",
                str(tmp_path / "back.npy"),
                "--strip-scope",
                "my/",
                "-q",
            ]
        )
        == 0
    )
    original = np.load(tmp_path / "w.npy", allow_pickle=True, encoding="latin1").item()
    back = np.load(tmp_path / "back.npy", allow_pickle=True, encoding="latin1").item()
    assert list(back) == list(original)
    for name, tensors in original.items():
        for a, b in zip(tensors, back[name], strict=True):
            _assert_same(a, b)


def test_ckpt2npy_flat_and_filters(tmp_path):
    weightconv.save(Mapping(scope="s/").apply(_weights()), tmp_path / "m.ckpt")
    assert (
        cli.main(
            [
                "ckpt2npy",
                str(tmp_path),
                "--flat",
                "--skip",
                "s/fc7",
                "-o",
                str(tmp_path / "flat.npy"),
                "-q",
            ]
        )
        == 0
    )
    flat = np.load(tmp_path / "flat.npy", allow_pickle=True).item()
    assert sorted(flat) == ["s/conv1/biases", "s/conv1/weights", "s/fc6/biases", "s/fc6/weights"]


def test_inspect_json_lists_stored_names_and_shows_one_tensor(tmp_path, capsys):
    weightconv.save(Mapping(scope="vgg_16/").apply(_weights()), tmp_path / "m.ckpt")
    assert cli.main(["inspect", str(tmp_path / "m.ckpt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input"]["format"] == "ckpt"
    assert [row["name"] for row in report["tensors"]] == [  # the order they were written in
        "vgg_16/conv1/weights",
        "vgg_16/conv1/biases",
        "vgg_16/fc6/weights",
        "vgg_16/fc6/biases",
        "vgg_16/fc7/weights",
    ]
    assert (
        cli.main(["inspect", str(tmp_path / "m.ckpt"), "--tensor", "vgg_16/fc7/weights", "--json"])
        == 0
    )
    shown = json.loads(capsys.readouterr().out)["tensor"]
    expected = _weights()["fc7"].tensors["weights"]
    assert shown["shape"] == [200, 10] and shown["dtype"] == "float64"
    assert shown["max"] == pytest.approx(float(expected.max()))


def test_bad_checkpoint_exit_code_and_one_line(tmp_path):
    prefix = _checkpoint(tmp_path)
    data = tmp_path / "m.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[-3] ^= 0xFF
    data.write_bytes(raw)
    code, _out, err = _run("ckpt2npy", str(prefix), "-o", str(tmp_path / "out.npy"))
    assert code == 2
    assert err.count("\n") == 1 and "checksum mismatch" in err and "Traceback" not in err
    assert not (tmp_path / "out.npy").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_no_tensorflow_import(tmp_path):
    """Listing, reading and writing checkpoints must not import TensorFlow."""
    weightconv.save(_weights(), tmp_path / "w.npy")
    script = f"""
import sys
from weightconv import cli
folder = {str(tmp_path)!r}
assert cli.main(["npy2ckpt", folder + "/w.npy", "-o", folder + "/w.ckpt", "-q"]) == 0
assert cli.main(["inspect", folder + "/w.ckpt", "--json"]) == 0
assert cli.main(["inspect", folder + "/w.ckpt", "--tensor", "fc6/weights"]) == 0
assert cli.main(["ckpt2npy", folder + "/w.ckpt", "-o", folder + "/b.npy", "-q"]) == 0
assert cli.main(["convert", folder + "/w.ckpt", folder + "/c.ckpt", "-q"]) == 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print("LOADED", loaded)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


def test_header_struct_fields_are_little_endian_and_masked():
    """The masked CRC as LevelDB defines it: rotate right by 15, add a constant."""
    crc = crc32c.value(b"123456789")
    assert crc == 0xE3069283  # the CRC-32C check value for "123456789"
    assert crc32c.unmask(crc32c.mask(crc)) == crc
    assert crc32c.mask(crc) == ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)
    assert struct.pack("<Q", sstable.MAGIC).hex() == "57fb808b247547db"


def test_bfloat16_round_trip_and_exact_float32_in_npy(tmp_path):
    import ml_dtypes

    values = np.array([1.0, -2.5, 3.0e38, 1.0e-38, np.inf], dtype=ml_dtypes.bfloat16)
    weightconv.save(
        WeightSet(layers=[Layer("emb", tensors={"weights": values})]), tmp_path / "b.ckpt"
    )
    entries = dict(sstable.TableReader(tmp_path / "b.ckpt.index").items())
    assert pb.BundleEntryProto.FromString(bytes(entries[b"emb/weights"])).dtype == pb.DT_BFLOAT16
    back = np.asarray(weightconv.load(tmp_path / "b.ckpt")["emb"].tensors["weights"])
    assert back.dtype == values.dtype and back.tobytes() == values.tobytes()
    assert (
        cli.main(["ckpt2npy", str(tmp_path / "b.ckpt"), "-o", str(tmp_path / "b.npy"), "-q"]) == 0
    )
    (weights,) = np.load(tmp_path / "b.npy", allow_pickle=True).item()["emb"]
    assert weights.dtype == np.float32
    assert weights.tolist() == values.astype(np.float32).tolist()
    report = weightconv.convert(tmp_path / "b.ckpt", tmp_path / "c.npy")
    assert any(
        "bfloat16 tensors written as float32" in n and "emb/weights" in n for n in report.notes
    )


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_shard_plan_with_empty_trailing_tensors(tmp_path, shards):
    """Zero-byte tensors after the last byte of data must not open a shard of their own."""
    ws = WeightSet(
        layers=[
            Layer("a", tensors={"weights": np.ones((10, 10), "f4")}),
            Layer("b", tensors={"weights": np.ones(3, "f4")}),
            Layer("c", tensors={"weights": np.ones(2, "f4")}),
            Layer("d", tensors={"weights": np.ones(1, "f4")}),
            Layer("z", tensors={"empty": np.zeros((0, 3), "f4")}),
        ]
    )
    summary = weightconv.save(ws, tmp_path / "e.ckpt", shards=shards)
    assert summary.detail["shards"] == shards
    assert len(list(tmp_path.glob("e.ckpt.data-*"))) == shards
    assert weightconv.load(tmp_path / "e.ckpt")["z"].tensors["empty"].shape == (0, 3)


# Training state is listed, not carried ------------------------------------------------------


def _with_training_state(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((4, 3)).astype("f4")
    flat = WeightSet(
        layers=[
            Layer("dense/kernel", tensors={"value": kernel}),
            Layer("dense/bias", tensors={"value": np.ones(3, "f4")}),
            Layer("global_step", tensors={"value": np.array(7, "i8")}),
            Layer("dense/kernel/Adam", tensors={"value": kernel}),
            Layer("dense/kernel/Adam_1", tensors={"value": kernel}),
            Layer("labels", tensors={"value": np.array([b"cat", b"dog"], dtype=object)}),
        ]
    )
    weightconv.save(flat, tmp_path / "k.ckpt")
    return tmp_path / "k.ckpt"


def test_training_state_is_set_aside_and_listed(tmp_path):
    prefix = _with_training_state(tmp_path)
    ws = weightconv.load(prefix)
    assert ws.names() == ["dense"]
    assert [(a.name, a.shape, a.dtype, a.nbytes, a.reason) for a in ws.set_aside] == [
        ("global_step", (), "int64", 8, "training state"),
        ("dense/kernel/Adam", (4, 3), "float32", 48, "training state"),
        ("dense/kernel/Adam_1", (4, 3), "float32", 48, "training state"),
        # lengths (1 byte each), their 4-byte checksum, then "catdog"
        ("labels", (2,), "string", 2 + 4 + 6, "strings, not weights"),
    ]
    assert not weightconv.load(prefix, flat=True).set_aside  # flat: every tensor a layer
    # a conversion carries only the layers
    weightconv.convert(prefix, tmp_path / "out.npy")
    assert list(np.load(tmp_path / "out.npy", allow_pickle=True).item()) == ["dense"]


def test_inspect_json_lists_every_tensor_and_marks_training_state(tmp_path, capsys):
    prefix = _with_training_state(tmp_path)
    assert cli.main(["inspect", str(prefix), "--json"]) == 0
    rows = {row["name"]: row["status"] for row in json.loads(capsys.readouterr().out)["tensors"]}
    assert rows == {
        "dense/kernel": "weights",
        "dense/bias": "weights",
        "global_step": "training state",
        "dense/kernel/Adam": "training state",
        "dense/kernel/Adam_1": "training state",
        "labels": "strings, not weights",
    }
    # the stored index is the independent account of what the file holds
    keys = {k.decode() for k, _ in sstable.TableReader(f"{prefix}.index").items() if k}
    assert set(rows) == keys


# Shard plans ----------------------------------------------------------------------------------

#: VGG16's weighted layers: (name, kernel shape, outputs), float32.
_VGG16 = [
    *(
        (f"conv{block}_{i + 1}", (3, 3, cin if i == 0 else cout, cout), cout)
        for block, cin, cout, count in [
            (1, 3, 64, 2),
            (2, 64, 128, 2),
            (3, 128, 256, 3),
            (4, 256, 512, 3),
            (5, 512, 512, 3),
        ]
        for i in range(count)
    ),
    ("fc6", (25088, 4096), 4096),
    ("fc7", (4096, 4096), 4096),
    ("fc8", (4096, 1000), 1000),
]


def _vgg16_sizes() -> list[int]:
    sizes = []
    for _, kernel, outputs in _VGG16:
        sizes += [4 * int(np.prod(kernel)), 4 * outputs]
    return sizes


def _shard_bytes(sizes: list[int], plan: list[int]) -> list[int]:
    totals = [0] * (max(plan) + 1)
    for size, shard in zip(sizes, plan, strict=True):
        totals[shard] += size
    return totals


def test_vgg16_in_four_shards():
    """The report that started it: 470 MB, 16 KB, 67 MB, 16 MB. fc6's kernel (411 MB) needs
    a file of its own; the rest is split as evenly as runs of whole tensors allow."""
    sizes = _vgg16_sizes()
    plan = ckpt_shards.plan_shards(sizes, 4)
    conv = sum(sizes[:26])
    fc6_w, fc6_b, fc7_w, fc7_b, fc8_w, fc8_b = sizes[26:]
    assert fc6_w == 25088 * 4096 * 4
    assert _shard_bytes(sizes, plan) == [conv, fc6_w, fc6_b + fc7_w, fc7_b + fc8_w + fc8_b]


def _vgg_like_sizes(rng: np.random.Generator) -> list[int]:
    """A network's tensors in order: conv kernels growing with depth, tiny biases, then a few
    fully connected kernels, the first of them most of the model."""
    sizes = []
    channels = int(rng.integers(3, 16))
    for _ in range(int(rng.integers(4, 16))):
        out = channels * int(rng.choice([1, 2]))
        sizes += [9 * channels * out * 4, out * 4]
        channels = out
    width = int(rng.integers(256, 4096))
    for inputs in [channels * 49, width, width]:
        sizes += [inputs * width * 4, width * 4]
    return sizes


@pytest.mark.parametrize("seed", range(12))
def test_shards_are_balanced(seed):
    sizes = _vgg_like_sizes(np.random.default_rng(seed))
    for shards in range(1, 9):
        plan = ckpt_shards.plan_shards(sizes, shards)
        assert plan == sorted(plan)  # runs in writing order, so reading keeps the layer order
        totals = _shard_bytes(sizes, plan)
        assert len(totals) == shards and min(totals) > 0
        assert max(totals) <= max(sizes) + sum(sizes) / shards


def _exhaustive(sizes: list[int], count: int, limit: int | None) -> tuple[int, int] | None:
    """(largest file, sum of squared file sizes) of the best split of `sizes` into `count`
    runs, trying every split; with `limit`, only files within it or of one tensor count."""
    best = None
    for cuts in itertools.combinations(range(1, len(sizes)), count - 1):
        bounds = [0, *cuts, len(sizes)]
        runs = [sizes[a:b] for a, b in itertools.pairwise(bounds)]
        if limit is not None and any(sum(r) > limit and len(r) > 1 for r in runs):
            continue
        totals = [sum(r) for r in runs]
        key = (0 if limit is not None else max(totals), sum(t * t for t in totals))
        best = key if best is None or key < best else best
    return best


def test_shard_plan_is_the_best_of_every_split():
    rng = np.random.default_rng(1)
    for _ in range(400):
        sizes = [int(s) for s in rng.choice([1, 2, 3, 5, 8, 13, 100, 400], rng.integers(1, 9))]
        shards = int(rng.integers(1, 7))
        limit = [None, None, 10, 50, 150][int(rng.integers(5))]
        plan = ckpt_shards.plan_shards(sizes, shards, limit)
        count = max(plan) + 1
        assert plan == sorted(plan) and set(plan) == set(range(count))
        fewest = min(shards, len(sizes))
        if limit is not None:
            fewest = max(fewest, min(c for c in range(1, 10) if _exhaustive(sizes, c, limit)))
        assert count == fewest, (sizes, shards, limit)
        totals = _shard_bytes(sizes, plan)
        got = (0 if limit is not None else max(totals), sum(t * t for t in totals))
        assert got == _exhaustive(sizes, count, limit), (sizes, shards, limit, plan)


def test_empty_tensors_never_make_a_file_of_their_own():
    assert ckpt_shards.plan_shards([0, 0, 5, 0, 3, 0], 2) == [0, 0, 0, 0, 1, 1]
    assert ckpt_shards.plan_shards([400, 12, 8, 4, 0], 4) == [0, 1, 2, 3, 3]
    # fewer tensors with data than files: then every tensor may have a file
    assert ckpt_shards.plan_shards([5, 0, 0], 3) == [0, 1, 2]


def test_fewer_tensors_than_shards_is_refused(tmp_path):
    ws = WeightSet(layers=[Layer("fc", tensors={"weights": np.ones((3, 2), "f4")})])
    with pytest.raises(weightconv.UsageError, match=r"shards=4, but there are only 1 tensors"):
        weightconv.save(ws, tmp_path / "f.ckpt", shards=4)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options", [{"shards": 0}, {"shards": -2}, {"max_shard_size": 0}])
def test_shard_options_out_of_range_are_refused(tmp_path, options):
    with pytest.raises(weightconv.UsageError, match=next(iter(options))):
        weightconv.save(_weights(), tmp_path / "r.ckpt", **options)
    assert not list(tmp_path.iterdir())


def test_tensor_over_max_shard_size_has_its_own_file_and_a_note(tmp_path):
    ws = WeightSet(
        layers=[
            Layer("a", tensors={"weights": np.ones(1000, "f4")}),
            Layer("big", tensors={"weights": np.ones((300, 200), "f4")}),
            Layer("c", tensors={"weights": np.ones(1000, "f4"), "biases": np.ones(10, "f4")}),
        ]
    )
    result = weightconv.save(ws, tmp_path / "m.ckpt", max_shard_size=100_000)
    entries = {
        k.decode(): pb.BundleEntryProto.FromString(bytes(v))
        for k, v in sstable.TableReader(tmp_path / "m.ckpt.index").items()
        if k
    }
    shard = entries["big/weights"].shard_id
    assert [n for n, e in entries.items() if e.shard_id == shard] == ["big/weights"]
    alone = tmp_path / f"m.ckpt.data-{shard:05d}-of-{result.detail['shards']:05d}"
    assert alone.stat().st_size == 300 * 200 * 4
    assert all(p.stat().st_size <= 100_000 for p in tmp_path.glob("m.ckpt.data-*") if p != alone)
    (note,) = result.notes
    assert "'big/weights'" in note and "240,000 bytes" in note
    assert "max_shard_size=100,000" in note and "--" not in note
    # the CLI names the option as its flag
    code, _out, err = _run(
        "convert", str(tmp_path / "m.ckpt"), str(tmp_path / "n.ckpt"), "--max-shard-size", "100000"
    )
    assert code == 0 and "--max-shard-size 100,000" in err


# The state file -------------------------------------------------------------------------------


def test_write_state_false_leaves_the_state_file_alone(tmp_path):
    weightconv.save(_weights(), tmp_path / "model.ckpt-1")
    before = (tmp_path / "checkpoint").read_bytes()
    weightconv.save(_weights(), tmp_path / "model.ckpt-2", write_state=False)
    assert (tmp_path / "checkpoint").read_bytes() == before
    assert locate(tmp_path).path == tmp_path / "model.ckpt-1"
    weightconv.save(_weights(), tmp_path / "model.ckpt-3", write_state=True)
    state = (tmp_path / "checkpoint").read_text().splitlines()
    assert state == [
        'model_checkpoint_path: "model.ckpt-3"',
        'all_model_checkpoint_paths: "model.ckpt-1"',
        'all_model_checkpoint_paths: "model.ckpt-3"',
    ]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    weightconv.save(_weights(), fresh / "model.ckpt", write_state=False)
    assert not (fresh / "checkpoint").exists()


def test_no_write_state_flag(tmp_path):
    weightconv.save(_weights(), tmp_path / "w.npy")
    weightconv.save(_weights(), tmp_path / "model.ckpt-1")
    before = (tmp_path / "checkpoint").read_bytes()
    out = str(tmp_path / "model.ckpt-2")
    assert cli.main(["npy2ckpt", str(tmp_path / "w.npy"), "-o", out, "--no-write-state", "-q"]) == 0
    assert (tmp_path / "checkpoint").read_bytes() == before
    assert Path(f"{out}.index").is_file()


# Partitioned variables, refused when their slices do not tile the tensor ---------------------


def test_overlapping_slices_are_refused(tmp_path):
    """Two listings of rows 0..1 of a 4-row tensor add up to its 4 rows while rows 2..3 are
    never read: that must be refused, not filled with whatever memory held."""
    piece = np.arange(6, dtype="f4").tobytes()
    whole = pb.BundleEntryProto(dtype=pb.DT_FLOAT)
    whole.shape.dim.add(size=4)
    whole.shape.dim.add(size=3)
    for _ in range(2):
        extent = whole.slices.add()
        extent.extent.add(start=0, length=2)
        extent.extent.add()
    entry = pb.BundleEntryProto(
        dtype=pb.DT_FLOAT, size=len(piece), crc32c=crc32c.mask(crc32c.value(piece))
    )
    entry.shape.dim.add(size=2)
    entry.shape.dim.add(size=3)
    entries = {
        b"w": whole.SerializeToString(),
        ordered_code.encode_slice_key("w", [(0, 2), (0, -1)]): entry.SerializeToString(),
    }
    _write_bundle(tmp_path / "dup", entries, piece)
    ws = weightconv.load(tmp_path / "dup", flat=True)
    with pytest.raises(weightconv.FormatError, match=r"'w': slices 0,2:- and 0,2:- overlap"):
        np.asarray(ws["w"].tensors["value"])
