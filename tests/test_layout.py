"""Layout transforms against index arithmetic written out by hand, NumPy's own transposes,
and as inverse pairs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightconv._util.regions import file_region, map_input, read_into
from weightconv.arrays import (
    conv_hwio_to_oihw,
    conv_hwio_to_oihw_copy,
    conv_oihw_to_hwio,
    dense_in_out_to_out_in_copy,
    flatten_chw_to_hwc,
    flatten_hwc_to_chw,
)


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 6), h=st.integers(1, 5), w=st.integers(1, 5), out=st.integers(1, 300))
def test_flatten_chw_to_hwc_matches_index_arithmetic(c, h, w, out):
    rng = np.random.default_rng(c * 100 + h * 10 + w)
    caffe_rows = rng.standard_normal((c * h * w, out)).astype(np.float32)
    converted = flatten_chw_to_hwc(caffe_rows, (c, h, w))
    for ci in range(c):
        for hi in range(h):
            for wi in range(w):
                np.testing.assert_array_equal(
                    converted[(hi * w + wi) * c + ci], caffe_rows[(ci * h + hi) * w + wi]
                )
    np.testing.assert_array_equal(flatten_hwc_to_chw(converted, (c, h, w)), caffe_rows)


def test_reorder_accepts_a_transposed_view_across_block_edges():
    weights_out_in = np.arange(600 * 32, dtype=np.float32).reshape(600, 32)
    view = weights_out_in.T
    converted = flatten_chw_to_hwc(view, (2, 4, 4))
    expected = view.reshape(2, 4, 4, 600).transpose(1, 2, 0, 3).reshape(32, 600)
    np.testing.assert_array_equal(converted, expected)


def test_conv_transposes_are_inverse():
    kernel = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    hwio = conv_oihw_to_hwio(kernel)
    assert hwio.shape == (4, 5, 3, 2) and hwio[1, 2, 0, 1] == kernel[1, 0, 1, 2]
    np.testing.assert_array_equal(conv_hwio_to_oihw(hwio), kernel)


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 40), h=st.integers(1, 4), w=st.integers(1, 4), out=st.integers(1, 70))
def test_dense_back_to_caffe_matches_index_arithmetic(c, h, w, out):
    rng = np.random.default_rng(c * 100 + h * 10 + w)
    canonical = rng.standard_normal((h * w * c, out)).astype(np.float32)
    caffe = dense_in_out_to_out_in_copy(canonical, (c, h, w))
    assert caffe.shape == (out, c * h * w) and caffe.flags.c_contiguous
    for ci in range(c):
        for hi in range(h):
            for wi in range(w):
                np.testing.assert_array_equal(
                    caffe[:, (ci * h + hi) * w + wi], canonical[(hi * w + wi) * c + ci]
                )
    np.testing.assert_array_equal(dense_in_out_to_out_in_copy(canonical), canonical.T)


def test_conv_kernels_and_large_dense_back_to_caffe_from_a_mapped_file(tmp_path):
    """The blocked copies read a mapped input's rows from its file (both threads, blocks cut
    short at the edges): the values are NumPy's own transposes."""
    rng = np.random.default_rng(5)
    kernel = rng.standard_normal((3, 3, 37, 70)).astype(np.float32)
    dense = rng.standard_normal((7 * 7 * 45, 300)).astype(np.float32)  # 2.1 MB: two threads
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 13 + kernel.tobytes() + dense.tobytes())
    with open(path, "rb") as handle:
        mapping = map_input(handle)
    mapped_kernel = np.frombuffer(mapping, np.float32, kernel.size, 13).reshape(kernel.shape)
    offset = 13 + kernel.nbytes
    mapped_dense = np.frombuffer(mapping, np.float32, dense.size, offset).reshape(dense.shape)
    assert file_region(mapped_dense) is not None
    np.testing.assert_array_equal(
        conv_hwio_to_oihw_copy(mapped_kernel), kernel.transpose(3, 2, 0, 1)
    )
    np.testing.assert_array_equal(
        dense_in_out_to_out_in_copy(mapped_dense, (45, 7, 7)),
        dense.reshape(7, 7, 45, 300).transpose(3, 2, 0, 1).reshape(300, -1),
    )


def test_a_mapped_input_cut_short_while_read_is_an_error(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(8192))
    with open(path, "rb") as handle:
        mapping = map_input(handle)
    view = np.frombuffer(mapping, np.uint8, 8192)
    os.truncate(path, 100)
    with pytest.raises(OSError, match="ended 4096 bytes early"):
        read_into(view[4096:], np.empty(4096, np.uint8))
