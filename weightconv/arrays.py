"""Pure array transforms between Caffe and TensorFlow/Keras layouts.

Every function takes arrays and returns arrays (views where NumPy allows); none knows about
layers or opens a file. An array that is a view of a mapped input is still only an array
here, but the blocked copies drop its pages once read, and the copies back to Caffe's layout
read its rows from the file (`read_into`) rather than through the mapping.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from weightconv._util.memory import release_pages
from weightconv._util.regions import read_into
from weightconv.errors import ShapeError


def conv_oihw_to_hwio(kernel: np.ndarray) -> np.ndarray:
    """Caffe (out, in/group, kh, kw) -> TensorFlow (kh, kw, in/group, out); a view."""
    _expect_ndim(kernel, 4, "conv kernel")
    return kernel.transpose(2, 3, 1, 0)


def conv_hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """TensorFlow (kh, kw, in/group, out) -> Caffe (out, in/group, kh, kw); a view."""
    _expect_ndim(kernel, 4, "conv kernel")
    return kernel.transpose(3, 2, 0, 1)


def deconv_caffe_to_tf(kernel: np.ndarray) -> np.ndarray:
    """Caffe Deconvolution (in, out/group, kh, kw) -> conv2d_transpose (kh, kw, out/group, in)."""
    _expect_ndim(kernel, 4, "deconvolution kernel")
    return kernel.transpose(2, 3, 1, 0)


def dense_out_in_to_in_out(weights: np.ndarray) -> np.ndarray:
    """(out, in) -> (in, out); a view."""
    _expect_ndim(weights, 2, "dense weights")
    return weights.T


def flatten_chw_to_hwc(
    weights: np.ndarray, chw: tuple[int, int, int], out: np.ndarray | None = None
) -> np.ndarray:
    """Reorder the rows of an (in, out) dense kernel from C, H, W to H, W, C flattening.

    ``weights`` is (C*H*W, out) with rows in Caffe's C, H, W order; the result has
    the same shape with rows in the H, W, C order a TensorFlow Flatten produces. It is
    written into `out` (C-contiguous, same shape) when given, e.g. a mapped output file.
    """
    c, h, w = chw
    return _reorder_rows(weights, (c, h, w), (1, 2, 0), (h, w, c), out)


def flatten_hwc_to_chw(weights: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    """Inverse of `flatten_chw_to_hwc`."""
    c, h, w = chw
    return _reorder_rows(weights, (h, w, c), (2, 0, 1), (c, h, w))


def _reorder_rows(
    weights: np.ndarray,
    source: tuple[int, int, int],
    axes: tuple[int, int, int],
    target: tuple[int, int, int],
    out: np.ndarray | None = None,
) -> np.ndarray:
    _expect_ndim(weights, 2, "dense weights")
    rows = source[0] * source[1] * source[2]
    if weights.shape[0] != rows:
        c, h, w = source if axes == (1, 2, 0) else target
        raise ShapeError(
            f"dense weights have {weights.shape[0]} inputs but the input blob is "
            f"{c}x{h}x{w} = {rows}"
        )
    outputs = weights.shape[1]
    if out is None:
        result = np.empty((rows, outputs), dtype=weights.dtype)
    elif out.shape != (rows, outputs) or not out.flags.c_contiguous:
        raise ShapeError(f"output array {out.shape} does not fit ({rows}, {outputs})")
    else:
        result = out
    result_4d = result.reshape(*target, outputs)
    source_4d = weights.reshape(*source, outputs)

    # Output columns a few at a time: for Caffe's (out, in) weights a column block is a run
    # of whole rows of the file, and 16 columns are one cache line of each output row, so
    # the strided gather stays in cache. The two halves of the columns go to two threads
    # (NumPy copies without the GIL); interleaved blocks would share cache lines and run
    # no faster than one thread. A block's source pages are dropped once copied, so a
    # mapped input is never resident twice.
    def copy_columns(start: int, stop: int) -> None:
        released = start
        for first in range(start, stop, _REORDER_BLOCK):
            last = min(stop, first + _REORDER_BLOCK)
            result_4d[..., first:last] = source_4d[..., first:last].transpose(*axes, 3)
            if last - released >= _RELEASE_SPAN or last == stop:
                release_pages(weights[:, released:last])
                released = last

    _in_halves(copy_columns, outputs, _REORDER_BLOCK, result.nbytes >= _THREADED_BYTES)
    # A page fault maps the file's cached pages around it too, so reads can map back pages
    # dropped just before (the other thread's among them): drop the whole source at the end.
    release_pages(weights)
    return result


def _in_halves(copy: Callable[[int, int], None], count: int, block: int, threaded: bool) -> None:
    """`copy(0, count)`, or, when `threaded`, its two halves (cut at a whole block) on two
    threads at once."""
    half = (count // 2) - (count // 2) % block
    if not threaded or half == 0:
        copy(0, count)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        second = pool.submit(copy, half, count)
        copy(0, half)
        second.result()


_REORDER_BLOCK = 16
#: Channels per block of `_channels_first`: as fast as 16 on fc6 (0.56 s and 0.59 s), and
#: each thread's block of rows (3 MiB for fc6) a quarter of the size.
_CHANNEL_BLOCK = 4
_RELEASE_SPAN = 64
#: Below this a second thread costs more than it saves.
_THREADED_BYTES = 1 << 20


def batchnorm_caffe_to_moments(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Caffe BatchNorm keeps running sums scaled by a factor s (blob 2): mean = blob0 / s,
    variance = blob1 / s, and both are 0 when s is 0, as in Caffe."""
    factor = float(np.asarray(tensors["scale_factor"]).reshape(-1)[0])
    inverse = 0.0 if factor == 0 else 1.0 / factor
    out = {role: array for role, array in tensors.items() if role != "scale_factor"}
    for role in ("mean", "variance"):
        if role in out:
            out[role] = (out[role] * inverse).astype(out[role].dtype, copy=False)
    return out


def conv_oihw_to_hwio_into(kernel: np.ndarray, into: np.ndarray | None = None) -> np.ndarray:
    """`conv_oihw_to_hwio`, materialised with the blocked copy: (kh, kw, I, O) is the
    (O, I*kh*kw) matrix transposed with its rows reordered I,kh,kw -> kh,kw,I."""
    _expect_ndim(kernel, 4, "conv kernel")
    out, per_group, kh, kw = kernel.shape
    flat = kernel.reshape(out, per_group * kh * kw).T
    target = None if into is None else into.reshape(kh * kw * per_group, out)
    return flatten_chw_to_hwc(flat, (per_group, kh, kw), target).reshape(kh, kw, per_group, out)


def contiguous_copy(matrix: np.ndarray, into: np.ndarray | None = None) -> np.ndarray:
    """A C-ordered copy of a transposed matrix, made with the cache-friendly blocked copy."""
    if matrix.flags.c_contiguous:
        if into is not None:
            into[...] = matrix
            return into
        return matrix
    return flatten_chw_to_hwc(matrix, (matrix.shape[0], 1, 1), into)


def conv_hwio_to_oihw_copy(kernel: np.ndarray) -> np.ndarray:
    """`conv_hwio_to_oihw`, materialised C-ordered by a blocked copy that drops a mapped
    input's pages as it reads them."""
    _expect_ndim(kernel, 4, "conv kernel")
    return _channels_first(kernel)


def dense_in_out_to_out_in_copy(
    weights: np.ndarray, chw: tuple[int, int, int] | None = None
) -> np.ndarray:
    """(in, out) -> (out, in), C-ordered; with `chw`, the inputs' H, W, C flatten order
    becomes C, H, W in the same pass: ``flatten_hwc_to_chw(weights, chw).T`` without its
    intermediate copy, a mapped input's pages dropped as they are read."""
    _expect_ndim(weights, 2, "dense weights")
    c, h, w = chw if chw is not None else (weights.shape[0], 1, 1)
    if c * h * w != weights.shape[0]:
        raise ShapeError(
            f"dense weights have {weights.shape[0]} inputs but the input blob is "
            f"{c}x{h}x{w} = {c * h * w}"
        )
    return _channels_first(weights.reshape(h, w, c, weights.shape[1])).reshape(
        weights.shape[1], weights.shape[0]
    )


def _channels_first(source: np.ndarray) -> np.ndarray:
    """(H, W, C, O) -> (O, C, H, W), C-ordered.

    A few channels at a time: each block reads, for every (h, w), a run of whole rows
    of the source, and writes a run of each output row, so both stay in cache (measured on
    VGG16's fc6: 0.56 s, where NumPy's copy of the transposed view takes 2.2 s). The two
    halves of the channels go to two threads (NumPy copies without the GIL). A block's rows
    of a mapped input are read from its file (`read_into`): mapped, each touched run maps
    its neighbours too, and the source of fc6 at 4x was resident up to 230 MiB at once.
    """
    h, w, c, o = source.shape
    result = np.empty((o, c, h, w), dtype=source.dtype)

    def copy_channels(start: int, stop: int) -> None:
        rows = np.empty((h, w, _CHANNEL_BLOCK, o), dtype=source.dtype)
        for first in range(start, stop, _CHANNEL_BLOCK):
            last = min(stop, first + _CHANNEL_BLOCK)
            block = rows[:, :, : last - first]
            for i in range(h):
                for j in range(w):
                    read_into(source[i, j, first:last], block[i, j])
            result[:, first:last] = block.transpose(3, 2, 0, 1)

    _in_halves(copy_channels, c, _CHANNEL_BLOCK, result.nbytes >= _THREADED_BYTES)
    release_pages(source)  # pages mapped back around a fault (see `_reorder_rows`)
    return result


def dense_to_fc_conv(weights: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
    """A canonical dense kernel (H*W*C, out) as the convolution that replaces it in slim-style
    nets (VGG's fc6 as a 7x7 conv): (H, W, C, out); a view. Rows must be in H, W, C order,
    which the canonical layout guarantees."""
    _expect_ndim(weights, 2, "dense weights")
    h, w, c = hwc
    if h * w * c != weights.shape[0]:
        raise ShapeError(
            f"dense weights {tuple(weights.shape)} have {weights.shape[0]} inputs, "
            f"not {h}x{w}x{c} = {h * w * c}"
        )
    return weights.reshape(h, w, c, weights.shape[1])


def fc_conv_to_dense(kernel: np.ndarray) -> np.ndarray:
    """Inverse of `dense_to_fc_conv`: (H, W, C, out) -> (H*W*C, out); a view when contiguous."""
    _expect_ndim(kernel, 4, "fc-as-conv kernel")
    h, w, c, out = kernel.shape
    return kernel.reshape(h * w * c, out)


def flip_input_channels(kernel: np.ndarray) -> np.ndarray:
    """Reverse the input channels of an HWIO kernel: BGR <-> RGB on a first layer; a view."""
    _expect_ndim(kernel, 4, "conv kernel")
    if kernel.shape[2] != 3:
        raise ShapeError(
            f"swapping BGR/RGB needs a kernel with 3 input channels, got shape "
            f"{tuple(kernel.shape)}"
        )
    return kernel[:, :, ::-1, :]


def split_groups(tensor: np.ndarray, groups: int) -> list[np.ndarray]:
    """A grouped conv's HWIO kernel (kh, kw, in/g, out) or its biases (out,) as `groups`
    separate convolutions: the output channels cut into equal consecutive parts; views."""
    axis = tensor.ndim - 1
    if groups < 1 or tensor.shape[axis] % groups:
        raise ShapeError(
            f"cannot split {tensor.shape[axis]} output channels into {groups} "
            f"groups (shape {tuple(tensor.shape)})"
        )
    return np.split(tensor, groups, axis=axis)


def merge_groups(parts: list[np.ndarray]) -> np.ndarray:
    """Inverse of `split_groups`: one grouped kernel (or bias) from its per-group parts."""
    shapes = {part.shape[:-1] for part in parts}
    if len(shapes) != 1:
        raise ShapeError(f"group parts differ in shape: {[tuple(p.shape) for p in parts]}")
    return np.concatenate(parts, axis=parts[0].ndim - 1)


def _expect_ndim(array: np.ndarray, ndim: int, what: str) -> None:
    if array.ndim != ndim:
        raise ShapeError(f"{what} must be {ndim}-D, got shape {tuple(array.shape)}")
