"""Checksums from files and across threads; large tensors copied into a checkpoint, a .npy or
an .npz placed where the kernel copies them fastest (`regions.copy_gap`: their input's offset
within a page, in the first page of a 64 KiB block), which TensorFlow, np.load, pickle and
zipfile read as they read any file."""

from __future__ import annotations

import mmap
import os
import pickle
import pickletools
import zipfile

import google_crc32c
import numpy as np
import pytest

import weightconv
from weightconv._util.regions import COPY_BLOCK_BYTES, PLACE_FROM_BYTES, copy_gap
from weightconv.codecs import crc32c
from weightconv.formats import npy as npy_format
from weightconv.model import CheckedTensor

from .tf_oracle import run_oracle, tensor_digest

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("length", [0, 1, 5, 4096, 1 << 20, (3 << 20) + 7])
def test_combine_gives_the_crc_of_the_concatenation(length):
    data = RNG.integers(0, 256, length, dtype=np.uint8).tobytes()
    for cut in sorted({0, 1, length // 3, length} - {length + 1}):
        first, second = data[:cut], data[cut:]
        combined = crc32c.combine(
            google_crc32c.value(first), google_crc32c.value(second), len(second)
        )
        assert combined == google_crc32c.value(data), cut


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_file_region_is_summed_without_mapping_it(tmp_path, threads):
    data = RNG.integers(0, 256, (crc32c.PARALLEL_BYTES * 2) + 12345, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(b"head" + data + b"tail")
    with open(path, "rb") as handle:
        got = crc32c.of_file(handle.fileno(), 4, len(data), threads=threads)
        small = crc32c.of_file(handle.fileno(), 4, 1000, threads=threads)
    assert got == google_crc32c.value(data)
    assert small == google_crc32c.value(data[:1000])


def test_a_region_cut_short_is_an_error(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 100)
    with open(path, "rb") as handle, pytest.raises(OSError, match="ended 50 bytes early"):
        crc32c.of_file(handle.fileno(), 50, 100)


def test_a_large_array_is_summed_on_two_threads():
    data = RNG.integers(0, 256, crc32c.PARALLEL_BYTES + 3, dtype=np.uint8)
    assert crc32c.value_parallel(data) == google_crc32c.value(data.tobytes())
    assert crc32c.value_parallel(data[:10]) == google_crc32c.value(data[:10].tobytes())


def _npy_with_a_large_tensor(tmp_path):
    weights = RNG.standard_normal((1200, 1000)).astype(np.float32)  # 4.6 MiB
    biases = RNG.standard_normal(7).astype(np.float32)  # puts `weights` off a page boundary
    source = tmp_path / "m.npy"
    np.save(source, {"a_small": [biases], "big": [weights, biases[:3]]}, allow_pickle=True)
    return source, weights


def _offset(path, array):
    offset = path.read_bytes().find(array.tobytes())
    assert offset >= 0
    return offset


def _placed(copy, source):
    """The copy starts at its source's offset within a page, in the first page of a block."""
    return copy % COPY_BLOCK_BYTES == source % mmap.PAGESIZE


def test_copy_gap_places_large_regions_only():
    assert copy_gap(4096 + 300, 10, PLACE_FROM_BYTES - 1) == 0
    for source, position in [(300, 10), (300, 300), (0, 5), (4095, 70000), (12345, 0)]:
        gap = copy_gap(source, position, PLACE_FROM_BYTES)
        assert 0 <= gap < COPY_BLOCK_BYTES
        assert _placed(position + gap, source)


def test_a_large_copied_tensor_is_placed_and_tensorflow_reads_it(tmp_path):
    source, weights = _npy_with_a_large_tensor(tmp_path)
    prefix = tmp_path / "out" / "m.ckpt"
    weightconv.convert(source, prefix)
    data = tmp_path / "out" / "m.ckpt.data-00000-of-00001"
    assert _placed(_offset(data, weights), _offset(source, weights))
    assert _offset(source, weights) % mmap.PAGESIZE != 0  # else the test shows less
    result = run_oracle("read", str(prefix))
    assert "error" not in result, result
    tensors = result["tensors"]
    assert tensors["big/weights"]["sha256"] == tensor_digest(weights)
    assert tensors["big/weights"]["shape"] == [1200, 1000]
    assert weightconv.load_dict(prefix)["big/weights"].tobytes() == weights.tobytes()


def test_a_size_limit_gets_no_padding(tmp_path):
    source, _ = _npy_with_a_large_tensor(tmp_path)
    prefix = tmp_path / "out" / "m.ckpt"
    weightconv.convert(source, prefix, max_shard_size=64 << 20)
    data = tmp_path / "out" / "m.ckpt.data-00000-of-00001"
    expected = sum(np.asarray(t).nbytes for t in weightconv.load_dict(prefix).values())
    assert os.path.getsize(data) == expected


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_tensor_copied_while_its_check_runs_is_refused_when_corrupt(tmp_path, suffix):
    """ckpt -> .npy or .npz copies each tensor by the kernel while its CRC is summed from the
    file: a flipped byte fails the conversion and leaves no output."""
    source, weights = _npy_with_a_large_tensor(tmp_path)
    prefix = tmp_path / "m.ckpt"
    weightconv.convert(source, prefix)
    data = tmp_path / "m.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    at = raw.find(weights.tobytes())
    raw[at + weights.nbytes // 2] ^= 0x10
    data.write_bytes(raw)
    ws = weightconv.load(prefix)
    assert isinstance(ws["big"].tensors["weights"], CheckedTensor)
    out = tmp_path / f"out{suffix}"
    with pytest.raises(weightconv.FormatError, match=r"'big/weights': checksum mismatch"):
        weightconv.convert(prefix, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m.npy", "m.ckpt.index", "m.ckpt.data-00000-of-00001", "checkpoint"]
    )


@pytest.mark.parametrize("source_format", ["npy", "ckpt"])
def test_a_large_tensor_copied_into_an_npz_is_placed_and_zipfile_checks_it(tmp_path, source_format):
    source, weights = _npy_with_a_large_tensor(tmp_path)
    if source_format == "ckpt":
        weightconv.convert(source, tmp_path / "c" / "m.ckpt")
        source = tmp_path / "c" / "m.ckpt.data-00000-of-00001"
        read_from = tmp_path / "c" / "m.ckpt"
    else:
        read_from = source
    out = tmp_path / "out.npz"
    weightconv.convert(read_from, out)
    assert _offset(source, weights) % mmap.PAGESIZE != 0  # else the test shows less
    assert _placed(_offset(out, weights), _offset(source, weights))
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None  # every member's CRC-32 as stored
    with np.load(out, allow_pickle=False) as back:
        assert back["big/weights"].tobytes() == weights.tobytes()


def test_padding_is_any_length_and_leaves_the_unpickler_as_it_was():
    assert npy_format._padding(0) == b""
    for gap in [*range(1, 300), *range(4000, 4200), *range(300, COPY_BLOCK_BYTES, 997)]:
        pad = npy_format._padding(gap)
        assert len(pad) % COPY_BLOCK_BYTES == gap
        assert pickle.loads(b"\x80\x04" + pad + b"K\x07.") == 7
    assert len(npy_format._padding(COPY_BLOCK_BYTES - 1)) == COPY_BLOCK_BYTES - 1


def test_a_large_tensor_copied_into_a_npy_is_placed(tmp_path):
    source, weights = _npy_with_a_large_tensor(tmp_path)
    prefix = tmp_path / "m.ckpt"
    weightconv.convert(source, prefix)
    data = tmp_path / "m.ckpt.data-00000-of-00001"
    out = tmp_path / "out.npy"
    weightconv.convert(prefix, out)
    assert _placed(_offset(out, weights), _offset(data, weights))
    loaded = np.load(out, allow_pickle=True).item()
    assert loaded["big"][0].tobytes() == weights.tobytes()
    assert weightconv.load_dict(out)["big/weights"].tobytes() == weights.tobytes()


def test_only_tensors_copied_from_a_mapped_input_are_padded(tmp_path):
    big = RNG.standard_normal((1200, 1000)).astype(np.float32)
    ours = tmp_path / "ours.npy"
    weightconv.save_dict({"big/weights": big}, ours)
    assert np.load(ours, allow_pickle=True).item()["big/weights"].tobytes() == big.tobytes()
    assert "POP" not in _opcodes(ours)
    source, _ = _npy_with_a_large_tensor(tmp_path)
    prefix = tmp_path / "m.ckpt"
    weightconv.convert(source, prefix)
    weightconv.convert(prefix, tmp_path / "copied.npy")
    assert _opcodes(tmp_path / "copied.npy").count("POP") == 1  # the one large tensor


def _opcodes(path):
    with open(path, "rb") as handle:
        np.lib.format.read_magic(handle)
        np.lib.format.read_array_header_1_0(handle)
        return [op.name for op, _, _ in pickletools.genops(handle)]
