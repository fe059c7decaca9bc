"""Hostile HDF5 inputs: each is refused with one line, within seconds, in bounded memory.

Files are built by code with h5py and then damaged at a place found in their bytes. Every
load runs in a child process with a time limit and an address-space limit, so a regression
(libhdf5 spinning, a huge allocation) fails the test instead of hanging or swapping the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import weightconv
from weightconv.errors import FormatError

CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
import numpy as np
import weightconv
from weightconv.errors import WeightconvError
try:
    ws = weightconv.load(sys.argv[1])
    for _, _, tensor in ws.tensors():
        np.asarray(tensor)
    print(json.dumps({"outcome": "ok"}))
except WeightconvError as exc:
    print(json.dumps({"outcome": type(exc).__name__, "message": str(exc)}))
"""


def _load_in_child(path: Path) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=10,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _refused(path: Path, *words: str) -> str:
    result = _load_in_child(path)
    assert result["outcome"] == "FormatError", result
    message = result["message"]
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, message
    return message


def _legacy_keras(path: Path) -> Path:
    """A Keras 2 ``save_weights`` layout written with h5py: vlen string name lists."""
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = ["dense", "dense_1"]
        handle.attrs["backend"] = "tensorflow"
        handle.attrs["keras_version"] = "2.15.0"
        for name in ("dense", "dense_1"):
            group = handle.create_group(name)
            group.attrs["weight_names"] = [f"{name}/kernel:0"]
            group[f"{name}/kernel:0"] = np.arange(6, dtype=np.float32).reshape(2, 3)
    return path


def test_the_clean_file_loads(tmp_path):
    assert _load_in_child(_legacy_keras(tmp_path / "w.h5"))["outcome"] == "ok"


def test_global_heap_that_makes_libhdf5_spin(tmp_path):
    path = _legacy_keras(tmp_path / "spin.h5")
    data = bytearray(path.read_bytes())
    heap = data.find(b"GCOL")
    assert heap > 0
    # The first object's size field (at +8 in its 16-byte header after the 16-byte
    # collection header): grown by 2048, the walk lands in zeroed free space, where an
    # object of index 0 and size 0 stops libhdf5's parser from advancing.
    data[heap + 16 + 9] ^= 0x08
    path.write_bytes(bytes(data))
    _refused(path, "global heap collection")


def test_dataset_declaring_8_gib(tmp_path):
    path = tmp_path / "big.caffemodel.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data/conv1/0", shape=(1 << 15, 1 << 16), dtype=np.float32)
        handle["data/conv1/1"] = np.zeros(3, np.float32)
    assert path.stat().st_size < 1 << 20
    _refused(path, "data/conv1/0", "8,589,934,592 bytes")


def test_truncated_caffe_snapshot(tmp_path):
    path = tmp_path / "cut.caffemodel.h5"
    with h5py.File(path, "w") as handle:
        handle["data/ip/0"] = np.ones((64, 64), np.float32)
        handle["data/ip/1"] = np.ones(64, np.float32)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4096])
    result = _load_in_child(path)
    assert result["outcome"] == "FormatError", result
    assert "\n" not in result["message"]


@pytest.mark.parametrize(
    "value",
    [b"2.15.0", "2.15.0", np.array([b"2.15.0"]), np.arange(3), np.float64(1.5)],
    ids=["bytes", "str", "bytes-array", "int-array", "float"],
)
def test_version_attribute_of_any_type(tmp_path, value):
    path = _legacy_keras(tmp_path / "v.h5")
    with h5py.File(path, "r+") as handle:
        handle.attrs["keras_version"] = value
    assert _load_in_child(path)["outcome"] == "ok"


# .keras archives -------------------------------------------------------------------------------


def _keras_archive(path: Path, weights: Path, *, deflate: bool = False) -> Path:
    config = {
        "class_name": "Sequential",
        "config": {"name": "s", "layers": [{"class_name": "Dense", "config": {"name": "d"}}]},
    }
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", "{}")
        archive.writestr("config.json", json.dumps(config))
        archive.write(weights, "model.weights.h5", compress_type=method)
    return path


def _keras3_weights(path: Path) -> Path:
    with h5py.File(path, "w") as handle:
        group = handle.create_group("layers/dense/vars")
        group.attrs["name"] = "d"
        group["0"] = np.arange(12, dtype=np.float32).reshape(3, 4)
        group["1"] = np.ones(4, np.float32)
        handle.create_group("vars")
    return path


def _zeros_member(path: Path, name: str, size: int) -> Path:
    """An archive whose member `name` inflates to `size` zero bytes: tiny compressed."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", "{}")
        with archive.open(name, "w", force_zip64=True) as member:
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                member.write(block)
    return path


def test_a_clean_archive_loads(tmp_path):
    weights = _keras3_weights(tmp_path / "w.weights.h5")
    assert _load_in_child(_keras_archive(tmp_path / "m.keras", weights))["outcome"] == "ok"


def test_deflate_bomb_weights_member(tmp_path):
    path = _zeros_member(tmp_path / "bomb.keras", "model.weights.h5", 5 << 30)
    assert path.stat().st_size < 64 << 20
    _refused(path, "model.weights.h5", "5,368,709,120 bytes")


def test_two_gib_config_json(tmp_path):
    path = _zeros_member(tmp_path / "config.keras", "config.json", 2 << 30)
    with zipfile.ZipFile(path, "a") as archive:
        archive.write(_keras3_weights(tmp_path / "w.weights.h5"), "model.weights.h5")
    _refused(path, "config.json", "2,147,483,648 bytes")


def test_flipping_any_byte_of_the_weights_member_is_refused_or_harmless(tmp_path):
    weights = _keras3_weights(tmp_path / "w.weights.h5")
    path = _keras_archive(tmp_path / "m.keras", weights)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("model.weights.h5")
    data = path.read_bytes()
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    assert data[start : start + 8] == b"\x89HDF\r\n\x1a\n"
    expected = {
        (layer.name, role): np.asarray(tensor).tobytes()
        for layer, role, tensor in weightconv.load(path).tensors()
    }
    positions = list(range(start, start + info.file_size))
    sample = positions[:: max(1, len(positions) // 300)]
    for index, position in enumerate(sample):
        flipped = bytearray(data)
        flipped[position] ^= 1 << (index % 8)
        target = tmp_path / "f.keras"
        target.write_bytes(bytes(flipped))
        try:
            got = {
                (layer.name, role): np.asarray(tensor).tobytes()
                for layer, role, tensor in weightconv.load(target).tensors()
            }
        except FormatError:
            continue
        assert got == expected, f"byte {position} flipped changed the values silently"
