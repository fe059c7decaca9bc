"""The stored-zip writer, checked by Python's zipfile (which verifies every CRC-32) and by
torch.load; ZIP64 fields exercised by lowering the thresholds."""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np
import pytest

import weightconv
from weightconv.codecs import zip_writer
from weightconv.codecs.zip_writer import StoredZipWriter
from weightconv.codecs.zipped import crc32_of_file
from weightconv.testing import synthetic

RNG = np.random.default_rng(5)


def _write(path, members):
    with open(path, "wb") as handle:
        archive = StoredZipWriter(handle, 64)
        starts = {}
        for name, data in members.items():
            if name.endswith("/copied"):  # written at the offset given, as a kernel copy does
                starts[name] = archive.begin(name, len(data))
                handle.flush()
                os.pwrite(handle.fileno(), data, starts[name])
                archive.end(zlib.crc32(data))
            else:
                archive.add(name, data)
        archive.finish()
    return starts


@pytest.mark.parametrize("zip64", [False, True])
def test_zipfile_reads_every_member_and_every_crc_checks(tmp_path, zip64, monkeypatch):
    if zip64:
        monkeypatch.setattr(zip_writer, "ZIP64_FROM", 100)
        monkeypatch.setattr(zip_writer, "ZIP64_COUNT_FROM", 3)
    members = {
        "archive/data.pkl": b"pickle",
        "archive/data/0/copied": RNG.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "archive/data/1": RNG.integers(0, 256, 333, dtype=np.uint8).tobytes(),
        "archive/version": b"3\n",
        "archive/empty": b"",
    }
    path = tmp_path / "a.zip"
    _write(path, members)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == list(members)
        for name, data in members.items():
            assert archive.read(name) == data, name
            info = archive.getinfo(name)
            assert info.compress_type == zipfile.ZIP_STORED
            sizes = raw[info.header_offset + 18 : info.header_offset + 26]
            in_zip64 = sizes == b"\xff" * 8
            assert in_zip64 == (zip64 and len(data) >= 100), name
    for name, data in members.items():
        if data:
            assert raw.find(data) % 64 == 0, name  # data aligned as torch aligns it


def test_a_wrong_crc_is_caught_by_zipfile(tmp_path):
    path = tmp_path / "a.zip"
    with open(path, "wb") as handle:
        archive = StoredZipWriter(handle)
        archive.begin("x", 3)
        handle.write(b"abc")
        archive.end(zlib.crc32(b"abd"))
        archive.finish()
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() == "x"


def test_crc32_of_a_file_region(tmp_path):
    data = RNG.integers(0, 256, (5 << 20) + 3, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(b"xyz" + data)
    with open(path, "rb") as handle:
        assert crc32_of_file(handle.fileno(), 3, len(data)) == zlib.crc32(data)
        with pytest.raises(OSError, match="ended"):
            crc32_of_file(handle.fileno(), 3, len(data) + 10)


@pytest.mark.parametrize("zip64", [False, True])
def test_a_caffemodel_to_pt_is_copied_by_the_kernel_and_torch_loads_it(
    tmp_path, zip64, monkeypatch
):
    torch = pytest.importorskip("torch")
    if zip64:
        monkeypatch.setattr(zip_writer, "ZIP64_FROM", 1000)
    net = synthetic.build("lenet", seed=3)
    model = tmp_path / "lenet.caffemodel"
    net.write_caffemodel(model)
    out = tmp_path / "lenet.pt"
    weightconv.convert(model, out)
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None  # the CRC-32s summed beside the kernel copies
    state = torch.load(out, weights_only=True)
    for layer, blobs in net.weights.items():
        for role, blob in zip(("weight", "bias"), blobs, strict=False):
            assert np.array_equal(state[f"{layer}.{role}"].numpy(), blob), (layer, role)
