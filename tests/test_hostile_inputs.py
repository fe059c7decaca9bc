"""Hostile inputs: every declared size is checked exactly before anything is allocated.

Each case builds a file (nothing binary is committed) that declares more than it holds:
dimensions whose int64 product wraps, lengths past the end of the file, a partitioned
variable of 10^6 x 10^6 floats, a Snappy block claiming 2 GiB, a prototxt nested 2,000
deep, .npy headers NumPy's parser chokes on. Each is read in a child process limited to
1 GiB of address space and a few seconds, so a regression fails one test instead of taking
the suite (or the machine) down; the child reports what the library raised, how long it
took, its peak RSS, and what the command line returned.

Where a case is well-formed at the protobuf level, protobuf's own parser (`caffe_pb2`,
`tf_checkpoint_pb2`) confirms what the file declares, so the expected refusal does not rest
on our reader's reading of it.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from numpy.lib import format as npformat

import weightconv
from weightconv._proto import caffe_pb2
from weightconv._proto import tf_checkpoint_pb2 as pb
from weightconv.codecs import crc32c, ordered_code, protowire, snappy, sstable
from weightconv.formats.ckpt.strings import encode_strings

LIMIT_BYTES = 1 << 30
SECONDS = 10

_CHILD = r"""
import json, resource, sys, time
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
request = json.loads(sys.argv[2])
import numpy as np
import weightconv
from weightconv import cli

started = time.monotonic()
report = {"error": None, "message": None}
try:
    ws = weightconv.load(request["path"], **request["options"])
    for _layer, _role, tensor in ws.tensors():
        np.asarray(tensor)
except weightconv.WeightconvError as exc:
    report.update(error=type(exc).__name__, message=str(exc))
except BaseException as exc:  # reported, not raised: the test names what escaped
    report.update(error="escaped " + type(exc).__name__, message=str(exc)[:300])
report["seconds"] = time.monotonic() - started
report["rc"] = cli.main(request["argv"] + ["-q"])
# This process's own peak (ru_maxrss would also count the pytest process it was spawned from).
with open("/proc/self/status") as status:
    report["max_rss"] = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) * 1024
print(json.dumps(report))
"""


def _refused(path: Path, argv: list[str], **options: Any) -> dict[str, Any]:
    """Read `path` and run the CLI on it in a limited child; assert a one-line refusal."""
    request = {"path": str(path), "options": options, "argv": argv}
    root = str(Path(__file__).resolve().parent.parent)
    path_list = [root, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(
        os.environ,
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(path_list),
    )
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(LIMIT_BYTES), json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=SECONDS * 4,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["error"] is not None, "read without complaint"
    assert not report["error"].startswith("escaped"), report
    assert "\n" not in report["message"], report["message"]
    assert str(path.name) in report["message"] or str(path.parent) in report["message"]
    assert report["seconds"] < SECONDS, report
    assert report["max_rss"] < LIMIT_BYTES, report
    assert report["rc"] == 2, (report, result.stderr[-1000:])
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    return report


# Caffe ----------------------------------------------------------------------------------------


def _v2_net(blob: caffe_pb2.BlobProto) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter(name="hostile")
    layer = net.layer.add(name="ip", type="InnerProduct")
    layer.blobs.append(blob)
    return net


def _wrapping_blob_nets() -> dict[str, bytes]:
    """Blob shapes whose element count is 2**64, 0 in int64, holding no values."""
    shape_blob = caffe_pb2.BlobProto()
    shape_blob.shape.dim.extend([2**62, 4])
    v2 = _v2_net(shape_blob)
    legacy = caffe_pb2.BlobProto(num=2**16, channels=2**16, height=2**16, width=2**16)
    v1 = caffe_pb2.NetParameter(name="hostile")
    v1.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT).blobs.append(legacy)
    v0 = caffe_pb2.NetParameter(name="hostile")
    v0.layers.add().layer.CopyFrom(
        caffe_pb2.V0LayerParameter(name="ip", type="innerproduct", blobs=[legacy])
    )
    return {
        "V2 shape": v2.SerializeToString(),
        "V1 num/channels/height/width": v1.SerializeToString(),
        "V0 num/channels/height/width": v0.SerializeToString(),
    }


@pytest.mark.parametrize("encoding", list(_wrapping_blob_nets()))
def test_caffemodel_dims_whose_product_wraps_in_int64(tmp_path, encoding):
    data = _wrapping_blob_nets()[encoding]
    parsed = caffe_pb2.NetParameter.FromString(data)  # protobuf: well-formed, no values
    blob = (parsed.layer[0] if parsed.layer else parsed.layers[0]).blobs or (
        parsed.layers[0].layer.blobs
    )
    dims = list(blob[0].shape.dim) or [
        blob[0].num,
        blob[0].channels,
        blob[0].height,
        blob[0].width,
    ]
    assert np.prod(np.array(dims, dtype=np.int64)) == 0  # what int64 arithmetic makes of it
    assert len(blob[0].data) == 0
    path = tmp_path / "wrap.caffemodel"
    path.write_bytes(data)
    report = _refused(path, ["caffe2npy", str(path), "-o", str(tmp_path / "out.npy")])
    assert "needs 18446744073709551616 values but it holds 0" in report["message"]


def _blob_past_the_end(layer_too: bool) -> bytes:
    blob = protowire.encode_length_delimited_header(7, 10**12) + b"\0" * 64
    layer = protowire.encode_key(1, 2) + b"\x02ip" + blob
    length = 10**9 if layer_too else len(layer)
    return (
        protowire.encode_key(1, 2)
        + b"\x01n"
        + protowire.encode_length_delimited_header(100, length)
    ) + layer


@pytest.mark.parametrize("layer_too", [False, True], ids=["blob", "layer and blob"])
def test_caffemodel_length_prefix_past_the_end(tmp_path, layer_too):
    data = _blob_past_the_end(layer_too)
    with pytest.raises(DecodeError):  # protobuf agrees: truncated
        caffe_pb2.NetParameter.FromString(data)
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data)
    report = _refused(path, ["caffe2npy", str(path), "-o", str(tmp_path / "out.npy")])
    assert "claims" in report["message"] and "remain" in report["message"]


def test_caffemodel_blob_of_70_axes(tmp_path):
    blob = caffe_pb2.BlobProto(data=[1.0])
    blob.shape.dim.extend([1] * 70)
    net = _v2_net(blob)
    assert (
        len(caffe_pb2.NetParameter.FromString(net.SerializeToString()).layer[0].blobs[0].shape.dim)
        == 70
    )
    path = tmp_path / "axes.caffemodel"
    path.write_bytes(net.SerializeToString())
    report = _refused(path, ["caffe2npy", str(path), "-o", str(tmp_path / "out.npy")])
    assert "declares 70 axes; Caffe allows 32 at most" in report["message"]


def test_prototxt_nested_2000_deep(tmp_path):
    model = tmp_path / "m.caffemodel"
    blob = caffe_pb2.BlobProto(data=[1.0, 2.0])
    blob.shape.dim.append(2)
    net = _v2_net(blob)
    net.layer[0].type = "Scale"
    model.write_bytes(net.SerializeToString())
    deep = tmp_path / "deep.prototxt"
    deep.write_text('name: "deep"\nlayer { ' + "x { " * 2000 + "}" * 2001 + "\n")
    report = _refused(
        model,
        ["caffe2npy", str(model), "--prototxt", str(deep), "-o", str(tmp_path / "out.npy")],
        prototxt=str(deep),
    )
    assert "deep.prototxt" in report["message"] and "nest more than 100" in report["message"]


# TensorFlow checkpoints ---------------------------------------------------------------------


def _bundle(prefix: Path, entries: dict[bytes, pb.BundleEntryProto], data: bytes) -> None:
    """An index written with our table writer and TensorFlow's protos, and one data file."""
    header = pb.BundleHeaderProto(num_shards=1)
    header.version.producer = 1
    with open(f"{prefix}.index", "wb") as handle:
        table = sstable.TableWriter(handle)
        table.add(b"", header.SerializeToString())
        for key in sorted(entries):
            table.add(key, entries[key].SerializeToString())
        table.finish()
    Path(f"{prefix}.data-00000-of-00001").write_bytes(data)


def _index_entries(prefix: Path) -> dict[bytes, pb.BundleEntryProto]:
    """What protobuf reads from each index record (the oracle for what the index declares)."""
    with sstable.TableReader(f"{prefix}.index") as table:
        return {
            key: pb.BundleEntryProto.FromString(bytes(value)) for key, value in table.items() if key
        }


def _ckpt_argv(prefix: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["ckpt2npy", str(prefix), "-o", str(tmp_path / "out.npy"), *extra]


@pytest.mark.parametrize("slice_declares", ["its true size", "one float"])
def test_partitioned_variable_of_10e6_by_10e6(tmp_path, slice_declares):
    """3.6 TiB declared; the one stored slice either declares all of it (and lies outside its
    16-byte data file) or declares one float: refused before the tensor is allocated."""
    n = 10**6
    whole = pb.BundleEntryProto(dtype=pb.DT_FLOAT)
    whole.shape.dim.add(size=n)
    whole.shape.dim.add(size=n)
    extent = whole.slices.add()
    extent.extent.add(start=0, length=n)
    extent.extent.add()
    payload = np.zeros(4, "f4").tobytes()
    piece = pb.BundleEntryProto(dtype=pb.DT_FLOAT, crc32c=crc32c.mask(crc32c.value(payload[:4])))
    if slice_declares == "one float":
        piece.shape.dim.add(size=1)
        piece.size = 4
    else:
        piece.shape.dim.add(size=n)
        piece.shape.dim.add(size=n)
        piece.size = 4 * n * n
    prefix = tmp_path / "huge"
    key = ordered_code.encode_slice_key("w", [(0, n), (0, -1)])
    _bundle(prefix, {b"w": whole, key: piece}, payload)
    assert [d.size for d in _index_entries(prefix)[b"w"].shape.dim] == [n, n]
    report = _refused(prefix, _ckpt_argv(prefix, tmp_path, "--flat"), flat=True)
    assert "'w'" in report["message"]
    if slice_declares == "one float":
        assert "4,000,000,000,000 bytes" in report["message"]
    else:
        assert "lie outside" in report["message"]


def test_entry_past_the_end_of_its_shard(tmp_path):
    entry = pb.BundleEntryProto(dtype=pb.DT_FLOAT, offset=8, size=4 * 10**9)
    entry.shape.dim.add(size=10**9)
    prefix = tmp_path / "short"
    _bundle(prefix, {b"w": entry}, b"\0" * 16)
    assert _index_entries(prefix)[b"w"].offset == 8
    report = _refused(prefix, _ckpt_argv(prefix, tmp_path), flat=True)
    assert "bytes 8..4000000008 lie outside" in report["message"]
    assert "(16 bytes)" in report["message"]


def test_entry_shape_whose_product_wraps_in_int64(tmp_path):
    entry = pb.BundleEntryProto(dtype=pb.DT_FLOAT, size=0)
    entry.shape.dim.add(size=2**62)
    entry.shape.dim.add(size=4)
    prefix = tmp_path / "wrap"
    _bundle(prefix, {b"w": entry}, b"")
    dims = [d.size for d in _index_entries(prefix)[b"w"].shape.dim]
    assert int(np.prod(np.array(dims, dtype=np.int64))) * 4 == 0  # the int64 reading
    report = _refused(prefix, _ckpt_argv(prefix, tmp_path))
    assert "0 bytes stored for shape [4611686018427387904, 4]" in report["message"]


def _strings_checkpoint(tmp_path: Path) -> Path:
    """A float tensor and a string tensor, laid out as TensorFlow's BundleWriter does."""
    kernel = np.ones((2, 2), "<f4").tobytes()
    prefix_bytes, payload, crc = encode_strings(np.array([b"alpha", b"beta"], dtype=object))
    strings = prefix_bytes + payload
    dense = pb.BundleEntryProto(
        dtype=pb.DT_FLOAT, size=len(kernel), crc32c=crc32c.mask(crc32c.value(kernel))
    )
    dense.shape.dim.add(size=2)
    dense.shape.dim.add(size=2)
    vocab = pb.BundleEntryProto(
        dtype=pb.DT_STRING, offset=len(kernel), size=len(strings), crc32c=crc32c.mask(crc)
    )
    vocab.shape.dim.add(size=2)
    prefix = tmp_path / "s.ckpt"
    _bundle(prefix, {b"dense/kernel": dense, b"vocab": vocab}, kernel + strings)
    return prefix


def test_string_tensor_with_a_flipped_byte_is_refused_even_when_skipped(tmp_path):
    prefix = _strings_checkpoint(tmp_path)
    entry = _index_entries(prefix)[b"vocab"]
    data_path = Path(f"{prefix}.data-00000-of-00001")
    data = bytearray(data_path.read_bytes())
    data[entry.offset + entry.size - 1] ^= 0x20  # the last byte of "beta"
    data_path.write_bytes(bytes(data))
    report = _refused(prefix, _ckpt_argv(prefix, tmp_path, "--flat"), flat=True)
    assert "'vocab'" in report["message"] and "checksum" in report["message"]


def test_string_tensor_declaring_10e12_elements(tmp_path):
    """The audit's case: a corrupt string entry reported as 10^12 'parameters', exit 0."""
    prefix = _strings_checkpoint(tmp_path)
    entries = _index_entries(prefix)
    del entries[b"vocab"].shape.dim[:]
    entries[b"vocab"].shape.dim.add(size=10**12)
    data = Path(f"{prefix}.data-00000-of-00001").read_bytes()
    _bundle(prefix, entries, data)
    report = _refused(prefix, _ckpt_argv(prefix, tmp_path, "--flat"), flat=True)
    assert "1,000,000,000,000 strings" in report["message"]


def _table_with_index_block(prefix: Path, contents: bytes, compression: int) -> None:
    """A checkpoint index holding an empty metaindex block and the given index block (its
    checksum right), and an empty data file."""
    table = bytearray()

    def block(body: bytes, compression: int) -> sstable.BlockHandle:
        handle = sstable.BlockHandle(len(table), len(body))
        crc = crc32c.mask(crc32c.extend(crc32c.value(body), bytes([compression])))
        table.extend(body + struct.pack("<BI", compression, crc))
        return handle

    metaindex = block(struct.pack("<II", 0, 1), sstable.NO_COMPRESSION)
    index = block(contents, compression)
    footer = sstable.encode_handle(metaindex) + sstable.encode_handle(index)
    table.extend(footer.ljust(40, b"\0") + sstable.MAGIC_BYTES)
    Path(f"{prefix}.index").write_bytes(bytes(table))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(b"")


def test_block_declaring_4_billion_restarts(tmp_path):
    prefix = tmp_path / "restarts"
    _table_with_index_block(prefix, b"\0" * 8 + struct.pack("<I", 0xFFFFFFFF), 0)
    report = _refused(prefix, _ckpt_argv(prefix, tmp_path))
    assert "restart count 4294967295 does not fit in 12 bytes" in report["message"]


def test_snappy_block_declaring_2_gib(tmp_path):
    """An index whose index block is Snappy-compressed and declares 2**31 - 1 bytes."""
    contents = protowire.encode_varint(2**31 - 1) + b"\x00a" * 8
    with pytest.raises(weightconv.FormatError, match="more than 16 compressed bytes"):
        snappy.decompress(contents)
    prefix = tmp_path / "snappy"
    _table_with_index_block(prefix, contents, sstable.SNAPPY_COMPRESSION)
    report = _refused(prefix, _ckpt_argv(prefix, tmp_path))
    assert "snappy: declared length 2147483647" in report["message"]
    assert "index block" in report["message"]


# .npy -----------------------------------------------------------------------------------------


def _npy_with_header(path: Path, header: str, rest: bytes = b"") -> None:
    text = header.encode("latin1")
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + rest)


def _numpy_raises(path: Path) -> type[BaseException]:
    """What NumPy's own header reader raises for the file (the oracle)."""
    with open(path, "rb") as handle:
        npformat.read_magic(handle)
        try:
            npformat.read_array_header_1_0(handle)
        except BaseException as exc:
            return type(exc)
    raise AssertionError("NumPy read the header")


@pytest.mark.parametrize(
    ("header", "numpy_error"),
    [
        ("{'descr': '|O', 'fortran_order': False, 'shape': (", "TokenError"),
        ("{'descr': '''|O", "TokenError"),
        ("  {'descr': '|O'}\n {'shape': ()}\n", "IndentationError"),
    ],
    ids=["unclosed bracket", "unclosed string", "bad indent"],
)
def test_npy_headers_numpys_parser_chokes_on(tmp_path, header, numpy_error):
    path = tmp_path / "bad.npy"
    _npy_with_header(path, header)
    raised = _numpy_raises(path)
    assert raised.__name__ == numpy_error and not issubclass(raised, ValueError)
    report = _refused(path, ["npy2ckpt", str(path), "-o", str(tmp_path / "out.ckpt")])
    assert "corrupt or truncated .npy header" in report["message"]


def test_npy_header_declaring_more_than_the_file(tmp_path):
    path = tmp_path / "long.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0) + b"{")
    report = _refused(path, ["npy2ckpt", str(path), "-o", str(tmp_path / "out.ckpt")])
    assert "declares 4,294,967,280 bytes" in report["message"]


def _wrapper_header() -> bytes:
    buffer = io.BytesIO()
    npformat.write_array_header_1_0(buffer, {"descr": "|O", "fortran_order": False, "shape": ()})
    return buffer.getvalue()


@pytest.mark.parametrize(
    "pickle_bytes",
    [
        b"\x80\x04\x8e" + struct.pack("<Q", 1 << 50) + b"\0" * 32,  # BINBYTES8
        b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.",  # FRAME
        b"\x80\x02X" + struct.pack("<I", 0xFFFFFFF0) + b"abc",  # BINUNICODE
        b"\x80\x02Nr" + struct.pack("<I", 0xFFFFFFF0) + b".",  # LONG_BINPUT: memo grows to it
    ],
    ids=["bytes8", "frame", "unicode4", "memo index"],
)
def test_pickle_declaring_more_than_the_file(tmp_path, pickle_bytes, trust=False):
    path = tmp_path / "p.npy"
    path.write_bytes(_wrapper_header() + pickle_bytes)
    report = _refused(path, ["npy2ckpt", str(path), "-o", str(tmp_path / "out.ckpt")])
    assert "truncated or corrupt pickle" in report["message"]


def test_pickle_declaring_more_than_the_file_trusted(tmp_path):
    path = tmp_path / "p.npy"
    path.write_bytes(_wrapper_header() + b"\x80\x04\x8e" + struct.pack("<Q", 1 << 50) + b"x")
    argv = ["npy2ckpt", str(path), "--trust-pickle", "-o", str(tmp_path / "out.ckpt")]
    report = _refused(path, argv, trust_pickle=True)
    assert "BINBYTES8 at byte" in report["message"]


def _v1_checkpoint(
    path: Path,
    dtype: pb.DataType,
    shape: list[int],
    slices: dict[tuple[tuple[int, int], ...], list[Any] | None],
) -> None:
    """A V1 checkpoint declaring tensor 'w' of `shape`; each slice stores the given values."""
    header = pb.SavedTensorSlices()
    header.meta.versions.producer = 1
    meta = header.meta.tensor.add(name="w", type=dtype)
    for n in shape:
        meta.shape.dim.add(size=n)
    records = {}
    for extents, values in slices.items():
        proto = meta.slice.add()
        for start, length in extents:
            extent = proto.extent.add(start=start)
            if length >= 0:
                extent.length = length
        if values is None:  # listed in the header only
            continue
        record = pb.SavedTensorSlices()
        record.data.name = "w"
        record.data.slice.CopyFrom(proto)
        record.data.data.dtype = dtype
        if dtype == pb.DT_STRING:
            record.data.data.string_val.extend(values)
        else:
            record.data.data.float_val.extend(values)
        records[ordered_code.encode_slice_key("w", list(extents))] = record.SerializeToString()
    records[b""] = header.SerializeToString()
    with open(path, "wb") as handle:
        table = sstable.TableWriter(handle)
        for key in sorted(records):
            table.add(key, records[key])
        table.finish()


def test_v1_partitioned_variable_of_10e6_by_10e6(tmp_path):
    n = 10**6
    path = tmp_path / "old.ckpt"
    halves = {((0, n // 2), (0, -1)): [1.0], ((n // 2, n // 2), (0, -1)): [2.0]}
    _v1_checkpoint(path, pb.DT_FLOAT, [n, n], halves)
    with sstable.TableReader(path) as table:  # protobuf's reading of the header
        meta = pb.SavedTensorSlices.FromString(bytes(table.get(b""))).meta
    assert [d.size for d in meta.tensor[0].shape.dim] == [n, n]
    report = _refused(path, _ckpt_argv(path, tmp_path, "--flat"), flat=True)
    assert "declares 4,000,000,000,000 bytes" in report["message"]


def test_v1_string_tensor_declaring_10e12_elements(tmp_path):
    path = tmp_path / "old.ckpt"
    _v1_checkpoint(path, pb.DT_STRING, [10**12], {((0, -1),): [b"a", b"b"]})
    report = _refused(path, _ckpt_argv(path, tmp_path, "--flat"), flat=True)
    assert "declares 1,000,000,000,000 bytes" in report["message"]


def _row_slices(prefix: Path, rows: int, overlap: bool) -> np.ndarray:
    """Tensor 'w' of `rows` x 2 floats stored one row per slice, rows 0 and 1 as one. With
    `overlap`, row 1 is listed again and the last row not at all: the sizes still add up."""
    full = np.arange(rows * 2, dtype="<f4").reshape(rows, 2)
    whole = pb.BundleEntryProto(dtype=pb.DT_FLOAT)
    whole.shape.dim.add(size=rows)
    whole.shape.dim.add(size=2)
    pieces = [(0, 2), *((r, 1) for r in (range(1, rows - 1) if overlap else range(2, rows)))]
    entries: dict[bytes, pb.BundleEntryProto] = {}
    data = bytearray()
    for start, length in pieces:
        proto = whole.slices.add()
        proto.extent.add(start=start, length=length)
        proto.extent.add()
        piece = full[start : start + length].tobytes()
        entry = pb.BundleEntryProto(
            dtype=pb.DT_FLOAT,
            offset=len(data),
            size=len(piece),
            crc32c=crc32c.mask(crc32c.value(piece)),
        )
        entry.shape.dim.add(size=length)
        entry.shape.dim.add(size=2)
        entries[ordered_code.encode_slice_key("w", [(start, length), (0, -1)])] = entry
        data += piece
    entries[b"w"] = whole
    _bundle(prefix, entries, bytes(data))
    return full


def test_thousands_of_slices_assemble_in_linear_time(tmp_path):
    full = _row_slices(tmp_path / "rows", 5000, overlap=False)
    ws = weightconv.load(tmp_path / "rows", flat=True)
    assert np.array_equal(np.asarray(ws["w"].tensors["value"]), full)


def test_an_overlap_among_thousands_of_slices(tmp_path):
    prefix = tmp_path / "rows"
    _row_slices(prefix, 5000, overlap=True)
    report = _refused(prefix, _ckpt_argv(prefix, tmp_path, "--flat"), flat=True)
    assert "'w': slices 0,2:- and 1,1:- overlap" in report["message"]


def test_v1_slice_with_a_negative_start(tmp_path):
    path = tmp_path / "old.ckpt"
    _v1_checkpoint(path, pb.DT_FLOAT, [2, 2], {((-5, 3), (0, -1)): None})
    report = _refused(path, _ckpt_argv(path, tmp_path, "--flat"), flat=True)
    assert "slice -5,3:- lies outside shape [2, 2]" in report["message"]


def test_entry_of_70_dimensions(tmp_path):
    zeros = b"\0" * 4
    entry = pb.BundleEntryProto(dtype=pb.DT_FLOAT, size=4, crc32c=crc32c.mask(crc32c.value(zeros)))
    for _ in range(70):
        entry.shape.dim.add(size=1)
    prefix = tmp_path / "deep"
    _bundle(prefix, {b"w": entry}, zeros)
    assert len(_index_entries(prefix)[b"w"].shape.dim) == 70
    report = _refused(prefix, _ckpt_argv(prefix, tmp_path, "--flat"), flat=True)
    assert "declares 70 dimensions; an array has 64 at most" in report["message"]


def test_declared_sizes_are_exact_python_ints():
    from weightconv._util import limits

    assert limits.declared_bytes([2**62, 4], 4, "x") == 2**66  # int64 makes this 0
    with pytest.raises(weightconv.FormatError, match="x: declares shape 3x-1"):
        limits.element_count([3, -1], "x")
    with pytest.raises(weightconv.FormatError, match="x: declares 65 dimensions"):
        limits.element_count([1] * 65, "x")
    with pytest.raises(weightconv.FormatError, match="x: declares 17 bytes, the file has 16"):
        limits.check_fits(17, 16, "x")
