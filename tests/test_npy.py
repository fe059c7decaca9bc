"""The .npy weight-dict format: reading, writing and refusing pickles that would run code.

Oracles: NumPy itself (``np.save``/``np.load``/``write_array`` make and read the files
our code must agree with), pickles written opcode by opcode as Python 2 wrote them, and
a real caffe-tensorflow file from ../shared/corpus.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import re
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from weightconv._util.progress import Progress
from weightconv.errors import (
    FormatError,
    MappingError,
    OutputExistsError,
    ShapeError,
    UnsafeInputError,
    UsageError,
)
from weightconv.formats import detect, npy
from weightconv.model import CAFFE, Kind, Layer, WeightSet

from .conftest import corpus_file

OBJECT_HEADER = {"descr": "|O", "fortran_order": False, "shape": ()}


# Helpers ---------------------------------------------------------------------------------


def sample_weights(seed: int = 0) -> WeightSet:
    """Layers in the canonical layout with awkward tensors: a transposed view, float64,
    float16 with NaN and -0.0, a big-endian array, and roles that are not W and b."""
    rng = np.random.default_rng(seed)
    oihw = rng.standard_normal((10, 3, 5, 5)).astype(np.float32)
    half = rng.standard_normal(10).astype(np.float16)
    half[[1, 4]] = [np.nan, -0.0]
    return WeightSet(
        layers=[
            Layer(
                "conv1",
                Kind.CONV,
                {
                    "weights": oihw.transpose(2, 3, 1, 0),
                    "biases": rng.standard_normal(10).astype(np.float32),
                },
            ),
            Layer("prelu1", Kind.PRELU, {"alpha": half}),
            Layer(
                "bn1",
                Kind.BATCHNORM,
                {
                    "mean": rng.standard_normal(10).astype(np.float32),
                    "variance": rng.random(10).astype(np.float32),
                },
            ),
            Layer("relu1", Kind.RELU),
            Layer(
                "fc",
                Kind.DENSE,
                {"weights": rng.standard_normal((20, 7)), "biases": rng.standard_normal(7)},
            ),
            Layer("fc_be", Kind.DENSE, {"weights": rng.standard_normal((4, 3)).astype(">f8")}),
        ]
    )


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    """Same shape, same little-endian dtype, same bytes (NaN and -0.0 included)."""
    little = np.asarray(expected).astype(np.asarray(expected).dtype.newbyteorder("<"))
    assert actual.shape == little.shape
    assert actual.dtype == little.dtype
    assert np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(little).tobytes()


def pickle_of(path: Path) -> bytes:
    with open(path, "rb") as handle:
        assert np.lib.format.read_magic(handle) == (1, 0)
        np.lib.format.read_array_header_1_0(handle)
        return handle.read()


def npy_with_pickle(path: Path, stream: bytes) -> Path:
    """A .npy with NumPy's own header for a 0-d object array, followed by `stream`."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, OBJECT_HEADER)
        handle.write(stream)
    return path


def numpy_load(path: Path, encoding: str = "latin1") -> dict:
    return np.load(path, allow_pickle=True, encoding=encoding).item()


class CountingProgress(Progress):
    def __init__(self) -> None:
        super().__init__(total=1, enabled=False)
        self.steps: list[int] = []

    def advance(self, amount: int) -> None:
        self.steps.append(amount)
        super().advance(amount)


# Writing, checked by NumPy ---------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["latin1", "bytes"])
def test_list_flavour_loads_with_numpy(tmp_path, encoding):
    ws = sample_weights()
    path = tmp_path / "out.npy"
    summary = npy.write(ws, path)

    d = numpy_load(path, encoding)
    assert list(d) == ["conv1", "prelu1", "bn1", "fc", "fc_be"]
    W, b = d["conv1"]
    assert_same_bits(W, ws["conv1"].tensors["weights"])
    assert_same_bits(b, ws["conv1"].tensors["biases"])
    W, b = d["fc"]
    assert_same_bits(W, ws["fc"].tensors["weights"])
    assert_same_bits(b, ws["fc"].tensors["biases"])
    (W,) = d["fc_be"]
    assert_same_bits(W, ws["fc_be"].tensors["weights"])
    # Layers whose roles are not W and b keep their names rather than being dropped.
    assert set(d["prelu1"]) == {"alpha"}
    assert_same_bits(d["prelu1"]["alpha"], ws["prelu1"].tensors["alpha"])
    assert set(d["bn1"]) == {"mean", "variance"}
    assert_same_bits(d["bn1"]["variance"], ws["bn1"].tensors["variance"])

    tensors = [array for layer in ws for array in layer.tensors.values()]
    assert {**summary.to_dict(), **summary.detail} == {
        "layers": 5,
        "tensors": len(tensors),
        "parameters": sum(a.size for a in tensors),
        "bytes": path.stat().st_size,
        "flavour": "list",
        "skipped": [],
        "files": [str(path)],
        "notes": [],
        "detail": {"flavour": "list"},
    }


@pytest.mark.parametrize("encoding", ["latin1", "bytes"])
def test_dict_flavour_loads_with_numpy(tmp_path, encoding):
    ws = sample_weights(1)
    path = tmp_path / "out.npy"
    npy.write(ws, path, flavour="dict")

    d = numpy_load(path, encoding)
    assert list(d) == ["conv1", "prelu1", "bn1", "fc", "fc_be"]
    for layer in ws.weighted_layers():
        assert list(d[layer.name]) == list(layer.tensors)
        for role, array in layer.tensors.items():
            assert_same_bits(d[layer.name][role], array)


@pytest.mark.parametrize("flavour", ["list", "dict"])
def test_round_trip_through_our_reader(tmp_path, flavour):
    ws = sample_weights(2)
    path = tmp_path / "out.npy"
    npy.write(ws, path, flavour=flavour)

    back = npy.read(path)
    assert back.names() == ["conv1", "prelu1", "bn1", "fc", "fc_be"]
    for layer in ws.weighted_layers():
        assert list(back[layer.name].tensors) == list(layer.tensors)
        for role, array in layer.tensors.items():
            assert_same_bits(back[layer.name].tensors[role], array)
    assert [layer.kind for layer in back] == [
        Kind.CONV,
        Kind.PRELU,
        Kind.OTHER,
        Kind.DENSE,
        Kind.DENSE,
    ]
    assert {layer.source_type for layer in back} == {"npy"}
    assert back.source.format == "npy"
    assert back.source.detail == {
        "flavour": "mixed" if flavour == "list" else "dict",
        "pickle_protocol": 4,
    }


def test_written_pickle_is_well_formed(tmp_path):
    path = tmp_path / "out.npy"
    npy.write(sample_weights(), path)
    stream = pickle_of(path)
    # dis checks the stack and that every memo GET has a PUT before it.
    pickletools.dis(stream, out=io.StringIO())
    names = [op.name for op, _, _ in pickletools.genops(stream)]
    assert names.count("STOP") == 1
    assert "FRAME" not in names


def test_tensors_are_written_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(npy, "CHUNK_BYTES", 64)
    rng = np.random.default_rng(3)
    big = rng.standard_normal((6, 5, 4, 3)).astype(np.float32).transpose(3, 1, 2, 0)
    ws = WeightSet(
        layers=[
            Layer("conv", Kind.CONV, {"weights": big, "biases": rng.standard_normal(100)}),
            Layer("wide", Kind.OTHER, {"row": rng.standard_normal((2, 40)).astype(">f4")}),
        ]
    )
    progress = CountingProgress()
    path = tmp_path / "out.npy"
    npy.write(ws, path, progress=progress)

    d = numpy_load(path)
    assert_same_bits(d["conv"][0], big)
    assert_same_bits(d["conv"][1], ws["conv"].tensors["biases"])
    assert_same_bits(d["wide"]["row"], ws["wide"].tensors["row"])
    assert sum(progress.steps) == big.nbytes + 800 + 320
    assert max(progress.steps) <= 64
    assert len(progress.steps) > 30


def test_writing_a_mapped_transpose_costs_one_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(npy, "CHUNK_BYTES", 1 << 20)
    rng = np.random.default_rng(10)
    source = tmp_path / "big.npy"
    np.save(source, rng.standard_normal((64, 256, 256), dtype=np.float32))  # 16 MiB
    kernel = np.load(source, mmap_mode="r").transpose(1, 2, 0)
    ws = WeightSet(layers=[Layer("conv", Kind.OTHER, {"kernel": kernel})])

    def peak_while(write) -> int:
        tracemalloc.start()
        try:
            write()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # The measurement sees NumPy's own writer copy the whole tensor...
    assert peak_while(lambda: np.save(tmp_path / "numpy.npy", {"conv": [kernel]})) > 16 << 20
    # ...and ours convert one chunk at a time.
    assert peak_while(lambda: npy.write(ws, tmp_path / "ours.npy")) < 2 << 20
    assert np.array_equal(numpy_load(tmp_path / "ours.npy")["conv"]["kernel"], kernel)


def test_binbytes8_is_read_by_numpy(tmp_path, monkeypatch):
    # Tensors over 4 GiB need BINBYTES8; force it for small ones to check the framing.
    monkeypatch.setattr(npy, "BINBYTES_LIMIT", 0)
    ws = sample_weights(4)
    path = tmp_path / "out.npy"
    npy.write(ws, path)

    assert "BINBYTES8" in {op.name for op, _, _ in pickletools.genops(pickle_of(path))}
    d = numpy_load(path)
    W, b = d["conv1"]
    assert_same_bits(W, ws["conv1"].tensors["weights"])
    assert_same_bits(b, ws["conv1"].tensors["biases"])
    assert_same_bits(npy.read(path)["fc"].tensors["weights"], ws["fc"].tensors["weights"])


def test_write_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "out.npy"
    path.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        npy.write(sample_weights(), path)
    assert path.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]

    npy.write(sample_weights(), path, force=True)
    assert list(numpy_load(path)) == ["conv1", "prelu1", "bn1", "fc", "fc_be"]


@pytest.mark.parametrize(
    "bad_layer, error",
    [
        # A Caffe-layout conv whose kernel is not 4-D: converting it to HWIO raises.
        (
            Layer("bad", Kind.CONV, {"weights": np.zeros((3, 4), np.float32)}, layout=CAFFE),
            ShapeError,
        ),
        (Layer("bad", Kind.OTHER, {"names": np.array(["a", "b"], dtype=object)}), FormatError),
        (Layer("conv1", Kind.OTHER, {"extra": np.zeros(3, np.float32)}), MappingError),
    ],
)
def test_failure_mid_write_leaves_nothing(tmp_path, bad_layer, error):
    ws = sample_weights()
    ws.layers.append(bad_layer)
    with pytest.raises(error):
        npy.write(ws, tmp_path / "out.npy")
    assert list(tmp_path.iterdir()) == []


def test_unknown_flavour_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="flavour"):
        npy.write(sample_weights(), tmp_path / "out.npy", flavour="tuple")
    assert list(tmp_path.iterdir()) == []


# Reading files NumPy wrote ---------------------------------------------------------------


def test_reads_np_save_list_flavour(tmp_path):
    rng = np.random.default_rng(5)
    saved = {
        "conv1": [
            rng.standard_normal((3, 3, 3, 8)).astype(np.float32),
            rng.standard_normal(8).astype(np.float32),
        ],
        "fc6": (rng.standard_normal((12, 4)),),
        "odd": [np.ones(2, np.int16), np.zeros(2, np.int16), np.arange(3, dtype=np.uint8)],
    }
    path = tmp_path / "vgg.npy"
    np.save(path, saved)

    ws = npy.read(path)
    assert ws.names() == ["conv1", "fc6", "odd"]
    assert ws.source.detail["flavour"] == "list"
    assert list(ws["conv1"].tensors) == ["weights", "biases"]
    assert list(ws["odd"].tensors) == ["weights", "biases", "blob2"]
    assert [layer.kind for layer in ws] == [Kind.CONV, Kind.DENSE, Kind.OTHER]
    for layer in ws:
        for index, array in enumerate(layer.tensors.values()):
            assert_same_bits(array, saved[layer.name][index])


def test_reads_np_save_dict_flat_and_mixed(tmp_path):
    rng = np.random.default_rng(6)
    W = rng.standard_normal((1, 1, 4, 2)).astype(np.float32)
    saved = collections.OrderedDict(
        [
            ("PReLU1", {"alpha": rng.standard_normal(4).astype(np.float32)}),
            ("conv4-1", {"weights": W, "biases": np.ones(2, np.float32)}),
            ("block1/conv1/kernel", rng.standard_normal((3, 3, 2, 2))),
            ("block1/conv1/bias", np.zeros(2)),
            ("global_step", np.int64(1234)),
            ("fc", [rng.standard_normal((2, 3)).astype(np.float32)]),
        ]
    )
    path = tmp_path / "mixed.npy"
    np.save(path, saved)

    ws = npy.read(path)
    assert ws.names() == ["PReLU1", "conv4-1", "block1/conv1", "global_step", "fc"]
    assert ws.source.detail["flavour"] == "mixed"
    assert ws["PReLU1"].kind == Kind.PRELU
    assert ws["conv4-1"].kind == Kind.CONV
    assert_same_bits(ws["conv4-1"].tensors["weights"], W)
    assert list(ws["block1/conv1"].tensors) == ["kernel", "bias"]
    assert_same_bits(ws["block1/conv1"].tensors["kernel"], saved["block1/conv1/kernel"])
    assert ws["global_step"].tensors["value"].shape == ()
    assert int(ws["global_step"].tensors["value"]) == 1234
    assert ws["fc"].kind == Kind.DENSE


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_reads_every_pickle_protocol_numpy_writes(tmp_path, protocol):
    rng = np.random.default_rng(protocol)
    saved = {
        "conv1": [rng.standard_normal((2, 2, 1, 3)).astype(np.float32), np.zeros((0,), np.float32)],
        "bn": collections.OrderedDict(
            [("mean", rng.standard_normal(3)), ("eps", np.float32(1e-5))]
        ),
        "fortran": [np.asfortranarray(rng.standard_normal((3, 4)))],
    }
    # np.save always uses protocol 4; older and newer writers pickle the same reduce.
    stream = pickle.dumps(np.array(saved, dtype=object), protocol=protocol)
    path = npy_with_pickle(tmp_path / f"p{protocol}.npy", stream)

    ws = npy.read(path)
    reference = numpy_load(path)
    assert ws.names() == list(reference) == ["conv1", "bn", "fortran"]
    assert_same_bits(ws["conv1"].tensors["weights"], reference["conv1"][0])
    assert ws["conv1"].tensors["biases"].shape == (0,)
    assert_same_bits(ws["bn"].tensors["mean"], reference["bn"]["mean"])
    assert_same_bits(ws["bn"].tensors["eps"], np.asarray(reference["bn"]["eps"]))
    assert_same_bits(ws["fortran"].tensors["weights"], reference["fortran"][0])
    expected = None if protocol < 2 else protocol
    assert ws.source.detail["pickle_protocol"] == expected


# A Python 2 pickle, opcode by opcode ----------------------------------------------------


def py2_str(data: bytes) -> bytes:
    """A Python 2 str as pickle protocol 2 wrote it."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def py2_dtype(spec: bytes, order: bytes, flags: int) -> bytes:
    return (
        b"cnumpy\ndtype\n"
        + py2_str(spec)
        + b"K\x00K\x01\x87R"
        + b"(K\x03"
        + py2_str(order)
        + b"NNN"
        + b"J\xff\xff\xff\xff" * 2
        + b"K"
        + bytes([flags])
        + b"tb"
    )


def py2_new_array() -> bytes:
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        b"cnumpy\nndarray\n"
        b"K\x00\x85" + py2_str(b"b") + b"\x87R"
    )


def py2_array(array: np.ndarray) -> bytes:
    """An ndarray as NumPy 1.x on Python 2 pickled it, data as a BINSTRING."""
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    shape = b"(" + b"".join(b"K" + bytes([n]) for n in array.shape) + b"t"
    return (
        py2_new_array()
        + b"(K\x01"
        + shape
        + py2_dtype(b"f4", b"<", 0)
        + b"\x89"
        + b"T"
        + struct.pack("<i", len(data))
        + data
        + b"tb"
    )


def py2_weight_dict(entries: bytes) -> bytes:
    return (
        b"\x80\x02"
        + py2_new_array()
        + b"(K\x01)"
        + py2_dtype(b"O8", b"|", 63)
        + b"\x89]}"
        + entries
        + b"atb."
    )


def test_reads_hand_built_python2_pickle(tmp_path):
    rng = np.random.default_rng(7)
    W = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    alpha = rng.standard_normal(4).astype(np.float32)
    entries = (
        py2_str(b"conv1")
        + b"]("
        + py2_array(W)
        + py2_array(b)
        + b"es"
        + py2_str(b"PReLU1")
        + b"}("
        + py2_str(b"alpha")
        + py2_array(alpha)
        + b"us"
        + py2_str(b"conv\xe9")
        + b"]("
        + py2_array(b)
        + b"es"
    )
    path = npy_with_pickle(tmp_path / "py2.npy", py2_weight_dict(entries))

    ws = npy.read(path)
    assert ws.names() == ["conv1", "PReLU1", "convé"]
    assert_same_bits(ws["conv1"].tensors["weights"], W)
    assert_same_bits(ws["conv1"].tensors["biases"], b)
    assert_same_bits(ws["PReLU1"].tensors["alpha"], alpha)
    assert ws.source.detail == {"flavour": "mixed", "pickle_protocol": 2}
    # NumPy agrees on what the hand-built file holds.
    d = numpy_load(path)
    assert list(d) == ["conv1", "PReLU1", "convé"]
    assert_same_bits(d["conv1"][0], W)


# Pickles that would run code -------------------------------------------------------------


class _Payload:
    """Pickles as a call of `func(*args)`; unpickling it with plain pickle runs the call."""

    def __init__(self, func, args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payload(kind: str, marker: Path) -> tuple[str, _Payload]:
    """The global a malicious file names, and an object that pickles as calling it."""
    if kind == "system":
        return f"{os.system.__module__}.system", _Payload(os.system, (f"touch {marker}",))
    if kind == "eval":
        return "builtins.eval", _Payload(eval, (f"open({str(marker)!r}, 'w')",))
    return "subprocess.Popen", _Payload(subprocess.Popen, (["touch", str(marker)],))


@pytest.mark.parametrize("kind", ["system", "eval", "popen"])
def test_refuses_pickles_that_run_code(tmp_path, kind):
    marker = tmp_path / "pwned"
    global_name, payload = _payload(kind, marker)
    path = tmp_path / "evil.npy"
    np.save(path, {"conv1": [np.zeros(3, np.float32), payload]})

    with pytest.raises(UnsafeInputError) as caught:
        npy.read(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: refusing to load global '{global_name}'")
    # the library names the option; the command line says the flag (test_cli)
    assert "trust_pickle=True" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "stream, refused",
    [
        # numpy.ndarray may only be handed to _reconstruct, not called.
        (b"\x80\x02cnumpy\nndarray\nK\x02\x85\x85R.", "call numpy.ndarray directly"),
        (
            b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nccollections\nOrderedDict\n"
            b"K\x00\x85C\x01b\x87R.",
            "other than numpy.ndarray",
        ),
        (
            b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.",
            "_codecs.encode",
        ),
        # Globals are matched by exact name: no attribute paths off an admitted one.
        (b"\x80\x04\x8c\x05numpy\x8c\x0fdtype.__class__\x93.", "'numpy.dtype.__class__'"),
        # BUILD on an admitted global would change it for every later load in the process.
        (b"\x80\x02cnumpy\ndtype\n}X\x08\x00\x00\x00__call__K\x01sb.", "change numpy.dtype"),
    ],
)
def test_admitted_globals_cannot_be_misused(tmp_path, stream, refused):
    path = npy_with_pickle(tmp_path / "misuse.npy", stream)
    with pytest.raises(UnsafeInputError, match=re.escape(refused)):
        npy.read(path)


def test_forged_dtype_flags_do_not_reach_numpy(tmp_path):
    # An object dtype whose pickled flags (0) claim it holds no objects, then 8 raw bytes
    # as its data. NumPy's own dtype.__setstate__ accepts the flags and the array then
    # holds a pointer read from the file (NumPy 2.4 segfaults on it). Run it in a child
    # process so a regression crashes that, not the test session.
    forged = (
        py2_new_array()
        + b"(K\x01K\x01\x85"
        + py2_dtype(b"O8", b"|", 0)
        + b"\x89"
        + b"C\x08"
        + struct.pack("<Q", 0x4141414141414141)
        + b"tb."
    )
    path = npy_with_pickle(tmp_path / "forged.npy", b"\x80\x02" + forged)
    script = (
        "import sys\nfrom weightconv.formats import npy\n"
        "try:\n    npy.read(sys.argv[1])\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("FormatError"), result.stdout


def test_trust_pickle_admits_other_globals(tmp_path):
    # collections.Counter is harmless but not on the list; with trust it is unpickled.
    rng = np.random.default_rng(8)
    W = rng.standard_normal((2, 3)).astype(np.float32)
    path = tmp_path / "counter.npy"
    np.save(path, {"fc": collections.Counter({"weights": W, "biases": np.ones(3)})})

    with pytest.raises(UnsafeInputError, match=r"'collections\.Counter'"):
        npy.read(path)
    ws = npy.read(path, trust_pickle=True)
    assert ws.names() == ["fc"]
    assert ws["fc"].kind == Kind.DENSE
    assert_same_bits(ws["fc"].tensors["weights"], W)


# Files that are not weight dicts ---------------------------------------------------------


@pytest.mark.parametrize("keep", [0.03, 0.5, 0.99])
def test_truncated_file_is_a_format_error(tmp_path, keep):
    rng = np.random.default_rng(9)
    whole = tmp_path / "whole.npy"
    np.save(
        whole,
        {
            "conv1": [
                rng.standard_normal((3, 3, 3, 16)).astype(np.float32),
                rng.standard_normal(16).astype(np.float32),
            ]
        },
    )
    data = whole.read_bytes()
    path = tmp_path / "cut.npy"
    path.write_bytes(data[: int(len(data) * keep)])

    with pytest.raises(FormatError) as caught:
        npy.read(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert "truncated" in message


def test_plain_numeric_array_is_not_a_weight_dict(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 4), np.float32))
    with pytest.raises(
        FormatError,
        match=r"holds one float32 array of shape \(3, 4\), not a "
        r"weight dict",
    ):
        npy.read(path)


def test_not_npy_bytes(tmp_path):
    path = tmp_path / "model.npy"
    path.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(FormatError, match=r"not a \.npy file"):
        npy.read(path)
    assert not npy.sniff(path.read_bytes(), path)


@pytest.mark.parametrize(
    "content, complaint",
    [
        ({"conv1": "weights.bin"}, "entry 'conv1' holds a str"),
        ({"conv1": [np.zeros(3, np.float32), 0.5]}, "tensor 'conv1/biases' is a float"),
        (
            {"conv1": {"weights": np.array([1, "a"], dtype=object)}},
            "tensor 'conv1/weights' is an object array",
        ),
        ({"conv1": {"names": np.array(["a", "b"])}}, "tensor 'conv1/names' has dtype"),
        ([np.zeros(3)], "holds a pickled list, not a weight dict"),
    ],
)
def test_contents_that_are_not_weights(tmp_path, content, complaint):
    wrapper = np.empty((), dtype=object)  # what np.save(path, content) pickles
    wrapper[()] = content
    path = tmp_path / "odd.npy"
    np.save(path, wrapper)
    with pytest.raises(FormatError, match=complaint):
        npy.read(path)


def test_sniff_and_detect(tmp_path):
    path = tmp_path / "weights.bin"
    np.save(path.with_suffix(".npy"), {"a": [np.zeros(1)]})
    path.with_suffix(".npy").rename(path)
    assert npy.sniff(path.read_bytes()[:64], path)
    assert detect(path).name == "npy"


# A real file made by someone else --------------------------------------------------------


@pytest.mark.corpus
def test_mtcnn_det1_from_facenet():
    path = corpus_file("npy/mtcnn/det1.npy")
    ws = npy.read(path)

    # As PROVENANCE.md lists it.
    expected = {
        "PReLU1": {"alpha": (10,)},
        "PReLU2": {"alpha": (16,)},
        "PReLU3": {"alpha": (32,)},
        "conv1": {"biases": (10,), "weights": (3, 3, 3, 10)},
        "conv2": {"biases": (16,), "weights": (3, 3, 10, 16)},
        "conv3": {"biases": (32,), "weights": (3, 3, 16, 32)},
        "conv4-1": {"biases": (2,), "weights": (1, 1, 32, 2)},
        "conv4-2": {"biases": (4,), "weights": (1, 1, 32, 4)},
    }
    assert {
        layer.name: {role: t.shape for role, t in layer.tensors.items()} for layer in ws
    } == expected
    assert {layer.name: layer.kind for layer in ws} == {
        name: Kind.PRELU if name.startswith("PReLU") else Kind.CONV for name in expected
    }
    assert ws.source.detail == {"flavour": "dict", "pickle_protocol": 2}

    reference = numpy_load(path)
    assert ws.names() == list(reference)
    for layer in ws:
        assert list(layer.tensors) == list(reference[layer.name])
        for role, array in layer.tensors.items():
            assert_same_bits(array, reference[layer.name][role])
