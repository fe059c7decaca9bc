"""Large .npy weight dicts are read in place: arrays are views of the mapped file, and the
values are exactly what NumPy's own ``np.load`` gives, for every pickle protocol."""

from __future__ import annotations

import mmap
import pickle
import pickletools
import subprocess
import sys

import numpy as np
import pytest
from numpy.lib import format as npformat

import weightconv
from weightconv.codecs import pickle_views


def _weight_dict() -> dict:
    rng = np.random.default_rng(1)
    return {
        "conv1": [
            rng.standard_normal((3, 3, 3, 64)).astype("f4"),
            rng.standard_normal(64).astype("f4"),
        ],
        "fc6": {
            "weights": rng.standard_normal((512, 300)).astype("f8"),
            "biases": np.zeros(300, "f4"),
        },
        "steps": rng.integers(-5, 5, (70_000,), dtype="i8"),
        "small": np.array([1.5, 2.5], "f2"),
    }


def _save(path, obj, protocol: int) -> None:
    with open(path, "wb") as handle:
        npformat.write_array_header_1_0(
            handle, {"descr": "|O", "fortran_order": False, "shape": ()}
        )
        pickle.dump(np.array(obj, dtype=object), handle, protocol=protocol)


def _mapped_base(array: np.ndarray) -> bool:
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_protocol_reads_as_numpy_reads_it(tmp_path, protocol):
    path = tmp_path / f"w{protocol}.npy"
    original = _weight_dict()
    _save(path, original, protocol)
    expected = np.load(path, allow_pickle=True).item()
    weights = weightconv.load(path)
    assert np.array_equal(weights["conv1"].tensors["weights"], expected["conv1"][0])
    assert np.array_equal(weights["fc6"].tensors["weights"], expected["fc6"]["weights"])
    assert weights["fc6"].tensors["weights"].dtype == np.float64
    assert np.array_equal(weights["steps"].tensors["value"], expected["steps"])
    assert np.array_equal(weights["small"].tensors["value"], expected["small"])
    if protocol >= 3:  # bytes payloads: the large ones stay in the file
        assert _mapped_base(weights["fc6"].tensors["weights"])
        assert _mapped_base(weights["steps"].tensors["value"])
        assert not weights["fc6"].tensors["weights"].flags.writeable


def test_python2_strings_are_mapped_too(tmp_path):
    """The same pickle with its bytes opcodes turned into the str opcodes Python 2's np.save
    wrote (same length fields)."""
    stream = pickle.dumps(np.array(_weight_dict(), dtype=object), protocol=3)
    positions = [(op.code, pos) for op, _, pos in pickletools.genops(stream)]
    py2 = bytearray(stream)
    for code, pos in positions:
        if code == "B":
            py2[pos] = ord("T")
        elif code == "C":
            py2[pos] = ord("U")
    py2[1] = 2  # PROTO 2
    path = tmp_path / "py2.npy"
    with open(path, "wb") as handle:
        npformat.write_array_header_1_0(
            handle, {"descr": "|O", "fortran_order": False, "shape": ()}
        )
        handle.write(bytes(py2))
    expected = np.load(path, allow_pickle=True, encoding="latin1").item()
    weights = weightconv.load(path)
    assert np.array_equal(weights["fc6"].tensors["weights"], expected["fc6"]["weights"])
    assert _mapped_base(weights["fc6"].tensors["weights"])


def test_scan_gives_up_on_what_it_does_not_know():
    data = b"\x80\x03" + b"\xff" * 10
    assert pickle_views.MappedPickle.scan(data, 0) is None
    assert pickle_views.MappedPickle.scan(b"\x80\x03B\xff\xff\xff\x7f", 0) is None  # too long
    assert pickle_views.MappedPickle.scan(b"\x80\x03N", 0) is None  # no STOP


def test_truncated_large_file_is_a_clear_error(tmp_path):
    path = tmp_path / "w.npy"
    _save(path, _weight_dict(), 4)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(weightconv.FormatError, match="truncated or corrupt pickle"):
        weightconv.load(path)


def test_malicious_large_pickle_is_still_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.npy"
    _save(path, {"conv1": [np.zeros((400, 400), "f4")], "x": Evil()}, 4)
    with pytest.raises(weightconv.UnsafeInputError, match=r"builtins\.print"):
        weightconv.load(path)


def test_loading_a_large_dict_costs_little_memory(tmp_path):
    """A 200 MB dict read in a fresh process: peak RSS far below the file's size."""
    path = tmp_path / "big.npy"
    rng = np.random.default_rng(0)
    _save(path, {f"fc{i}": [rng.standard_normal((5000, 2500)).astype("f4")] for i in range(4)}, 4)
    # VmHWM, not ru_maxrss: the latter carries the forking test process's own peak over.
    script = (
        "import re, sys, numpy as np, weightconv\n"
        "w = weightconv.load(sys.argv[1])\n"
        "total = sum(float(np.asarray(t)[-1, -1]) for _, _, t in w.tensors())\n"
        "status = open('/proc/self/status').read()\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1)) // 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    peak_mb = int(result.stdout.split()[-1])
    assert path.stat().st_size > 190e6
    assert peak_mb < 120, peak_mb
