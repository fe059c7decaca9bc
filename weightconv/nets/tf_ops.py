"""TensorFlow, imported on demand, and the one Caffe operation TensorFlow lacks: max pooling
with Caffe's output size.

Caffe's pooling rounds its output size up and drops a last window that would start in the
padding (`weightconv.formats.caffe.net.pool_output_size`). `caffe_max_pool` pads the input with
-inf at the top/left by ``pad`` and at the bottom/right as far as the last window reaches (or
crops when rounding down), then pools VALID: the windows are Caffe's, and padding never wins.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from weightconv.errors import UsageError
from weightconv.formats.caffe.net import pool_output_size
from weightconv.nets.architecture import Step


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null meanwhile (C++ code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow() -> Any:
    """The ``tensorflow`` module, imported quietly; a UsageError naming the extra when absent."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with _quiet_native_stderr():  # TF's native start-up logs bypass that setting
            import tensorflow as tf
    except ImportError as exc:
        raise UsageError(
            f"running the AlexNet graph needs TensorFlow ({exc}); pip install 'weightconv[tf]'"
        ) from None
    return tf


def pool_padding(
    size: int, kernel: int, stride: int, pad: int, ceil: bool = True
) -> tuple[int, int]:
    """(before, after) padding that makes a VALID pooling give Caffe's output size; `after`
    is negative when the input has to be cropped instead (floor rounding)."""
    out = pool_output_size(size, kernel, stride, pad, ceil)
    return pad, (out - 1) * stride + kernel - size - pad


def caffe_max_pool(tf: Any, x: Any, step: Step) -> Any:
    """Max pooling of NHWC `x` as Caffe computes it for the pool `step`."""
    (kh, kw), (sh, sw), (ph, pw) = step.kernel, step.stride, step.pad
    top, bottom = pool_padding(int(x.shape[1]), kh, sh, ph, step.ceil)
    left, right = pool_padding(int(x.shape[2]), kw, sw, pw, step.ceil)
    if bottom < 0:
        x = x[:, :bottom]
        bottom = 0
    if right < 0:
        x = x[:, :, :right]
        right = 0
    if top or bottom or left or right:
        x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=float("-inf"))
    return tf.nn.max_pool2d(x, [kh, kw], [sh, sw], "VALID")


__all__ = ["caffe_max_pool", "import_tensorflow", "pool_padding"]
