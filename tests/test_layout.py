"""Layout transforms against index arithmetic written out by hand, and as inverse pairs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from weightconv.arrays import (
    conv_hwio_to_oihw,
    conv_oihw_to_hwio,
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
