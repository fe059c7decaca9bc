"""Tensors as file regions: kernel copies from mapped inputs, in-place output regions."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

import weightconv
from weightconv._util import regions


def _weights(path, rng):
    arrays = {
        "conv1": [rng.standard_normal((3, 3, 4, 8), dtype=np.float32), np.arange(8.0)],
        "fc": [rng.standard_normal((300, 700)).astype(np.float32), np.zeros(700, np.float32)],
    }
    np.save(path, arrays, allow_pickle=True)
    return arrays


def _count_copies(monkeypatch, fail_with: int | None = None):
    calls = []
    real = os.copy_file_range

    def copy(src, dst, count, offset_src=None, offset_dst=None):
        calls.append(count)
        if fail_with is not None:
            raise OSError(fail_with, os.strerror(fail_with))
        return real(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(regions.os, "copy_file_range", copy)
    return calls


def _same(path, arrays):
    back = np.load(path, allow_pickle=True).item()
    assert set(back) == set(arrays)
    for name, tensors in arrays.items():
        for ours, theirs in zip(back[name], tensors, strict=True):
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


@pytest.mark.parametrize("target", ["out.npy", "out.ckpt"])
def test_mapped_tensors_are_copied_by_the_kernel(tmp_path, monkeypatch, target):
    arrays = _weights(tmp_path / "in.npy", np.random.default_rng(0))
    calls = _count_copies(monkeypatch)
    weightconv.convert(tmp_path / "in.npy", tmp_path / target)
    assert sum(calls) >= arrays["fc"][0].nbytes  # the large tensor went file to file
    if target.endswith(".npy"):
        _same(tmp_path / target, arrays)
    else:
        back = {layer.name: layer for layer in weightconv.load(tmp_path / target).layers}
        assert np.array_equal(np.asarray(back["fc"].tensors["weights"]), arrays["fc"][0])


@pytest.mark.parametrize("error", [errno.EXDEV, errno.ENOSYS, errno.EINVAL])
def test_no_kernel_copy_falls_back_to_writing(tmp_path, monkeypatch, error):
    arrays = _weights(tmp_path / "in.npy", np.random.default_rng(1))
    calls = _count_copies(monkeypatch, fail_with=error)
    weightconv.convert(tmp_path / "in.npy", tmp_path / "out.npy")
    assert calls  # it tried, then wrote the bytes itself
    _same(tmp_path / "out.npy", arrays)


def test_a_copy_failing_midway_is_an_error_not_a_short_file(tmp_path, monkeypatch):
    _weights(tmp_path / "in.npy", np.random.default_rng(2))
    real = os.copy_file_range
    state = {"calls": 0}

    def copy(src, dst, count, offset_src=None, offset_dst=None):
        state["calls"] += 1
        if state["calls"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, min(count, 4096), offset_src, offset_dst)

    monkeypatch.setattr(regions.os, "copy_file_range", copy)
    with pytest.raises(weightconv.errors.OutputError, match="space"):
        weightconv.convert(tmp_path / "in.npy", tmp_path / "out.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


def test_only_views_of_mapped_inputs_are_regions(tmp_path):
    data = np.arange(4096, dtype=np.float32)
    data.tofile(tmp_path / "raw")
    assert regions.file_region(data) is None  # ordinary memory
    with open(tmp_path / "raw", "rb") as handle:
        mapping = regions.map_input(handle)
    view = np.frombuffer(mapping, dtype=np.float32)
    descriptor, offset = regions.file_region(view[16:])
    assert offset == 64 and os.fstat(descriptor).st_size == data.nbytes
    assert regions.file_region(view[::2]) is None  # not contiguous
    del view
    mapping.close()


def test_output_region_fills_the_file_in_place(tmp_path):
    path = tmp_path / "out"
    with open(path, "w+b") as handle:
        handle.write(b"head")
        with regions.region_at_handle(handle, 12) as region:
            region.view(np.float32)[:] = [1.0, 2.0, 3.0]
        handle.write(b"tail")
    data = path.read_bytes()
    assert data[:4] == b"head" and data[-4:] == b"tail"
    assert np.frombuffer(data[4:16], np.float32).tolist() == [1.0, 2.0, 3.0]


def test_output_region_reports_the_original_error(tmp_path):
    with (
        open(tmp_path / "out", "w+b") as handle,
        pytest.raises(ZeroDivisionError),
        regions.region_at_handle(handle, 64) as region,
    ):
        view = region.view(np.float32)  # a live view when the error is raised
        view[0] = 1 / 0
