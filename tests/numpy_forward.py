"""A small NumPy forward pass in NHWC, driven by a Caffe deploy prototxt: a test oracle.

It runs a net on the weights of a weightconv `.npy` file read with plain `np.load`, so
it assumes that file's documented TensorFlow layout and nothing else:

* conv kernels HWIO, `(kh, kw, in_channels // group, out_channels)`; a grouped conv
  splits the input channels and the output channels into `group` consecutive blocks,
  block g of the outputs seeing only block g of the inputs;
* dense kernels `(in, out)`, applied as `x @ W + b`, where a spatial input is flattened
  in NHWC order, i.e. rows in H, W, C order;
* biases `(out,)`; PReLU slopes `(channels,)` (or one shared slope), stored as
  `{"alpha": slopes}`.

The layer arithmetic is written from Caffe's documented formulas (output sizes,
pooling windows and divisors, LRN), in float64. It deliberately imports nothing from
weightconv's layout code: the layout is what it is used to check.

Example::

    weights = load_npy("lenet.npy")
    blobs = forward("lenet.prototxt", weights, images_nhwc)
    logits = blobs["ip2"]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from weightconv.formats.caffe.net import (
    LayerDef,
    NetDef,
    infer_blob_shapes,
    net_def_from_message,
    parse_prototxt,
)

Weights = Mapping[str, Any]

#: Data-layer types: their tops are fed by the caller.
INPUT_TYPES = {"Input", "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData"}


def load_npy(path: str | Path) -> dict[str, list[np.ndarray]]:
    """A weightconv `.npy` file as a plain dict {layer: [W, b, ...]}, read the plain way."""
    return np.load(path, allow_pickle=True, encoding="latin1").item()


def load_net(prototxt: str | Path) -> NetDef:
    """The deploy net's layer list."""
    message, _notes = parse_prototxt(prototxt)
    return net_def_from_message(message)


def input_blobs(net: NetDef) -> dict[str, tuple[int, ...]]:
    """The declared (N, C, H, W) shape of each blob the caller has to feed."""
    shapes = infer_blob_shapes(net)
    names = list(net.inputs)
    for layer in net.layers:
        if layer.type in INPUT_TYPES and layer.phase != "TRAIN":
            names.extend(layer.tops)
    return {name: shapes[name] for name in names if name in shapes}


def forward(
    net: NetDef | str | Path, weights: Weights, inputs: np.ndarray | Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run the net; return every blob by name (NHWC for spatial blobs, (N, K) otherwise).

    `inputs` is one NHWC batch for a single-input net, or {blob: NHWC batch}. The batch
    size is free; channels and spatial size must match the prototxt's declared input.
    In-place layers overwrite their blob, as in Caffe, so a blob's final value is returned.
    """
    if not isinstance(net, NetDef):
        net = load_net(net)
    declared = input_blobs(net)
    if not isinstance(inputs, Mapping):
        if len(declared) != 1:
            raise ValueError(f"the net has inputs {sorted(declared)}; pass a dict")
        inputs = {next(iter(declared)): inputs}
    blobs: dict[str, np.ndarray] = {}
    for name, array in inputs.items():
        array = np.asarray(array, dtype=np.float64)
        shape = declared.get(name)
        if (
            shape is not None
            and len(shape) == 4
            and array.shape[1:] != (shape[2], shape[3], shape[1])
        ):
            raise ValueError(
                f"input {name!r}: got NHWC {array.shape}, the net declares NCHW {shape}"
            )
        blobs[name] = array
    for layer in net.layers:
        if layer.phase == "TRAIN" or layer.type in INPUT_TYPES:
            continue
        run = _LAYERS.get(layer.type)
        if run is None:
            raise NotImplementedError(
                f"{layer.name}: layer type {layer.type} is not supported by the NumPy oracle"
            )
        x = blobs[layer.bottoms[0]]
        params = _layer_params(weights.get(layer.name, []))
        out = run(layer, x, params)
        for top in layer.tops:
            blobs[top] = out
    return blobs


def _layer_params(entry: Any) -> list[np.ndarray]:
    """A layer's entry in the .npy dict as float64 arrays: [W, b] lists as they are; a
    {role: array} dict (as for PReLU's {"alpha": ...}) in its stored order."""
    if isinstance(entry, Mapping):
        entry = list(entry.values())
    return [np.asarray(p, dtype=np.float64) for p in entry]


# --- layers --------------------------------------------------------------------------------


def _bias(layer: LayerDef, params: list[np.ndarray]) -> np.ndarray | float:
    if len(params) > 1 and layer.params.get("bias_term", True):
        return params[1]
    return 0.0


def convolution(layer: LayerDef, x: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    """Caffe convolution on NHWC with an HWIO kernel; output size rounds down."""
    p = layer.params
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p["kernel"], p["stride"], p["pad"], p["dilation"]
    group = p.get("group", 1) or 1
    kernel = params[0]
    n, h, w, c = x.shape
    if kernel.shape[:2] != (kh, kw) or kernel.shape[2] * group != c:
        raise ValueError(
            f"{layer.name}: kernel {kernel.shape} does not fit a {kh}x{kw} conv "
            f"with group {group} on {c} input channels"
        )
    outputs = kernel.shape[3]
    out_h = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    out_w = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    padded = np.zeros((n, h + 2 * ph, w + 2 * pw, c))
    padded[:, ph : ph + h, pw : pw + w, :] = x
    # Inputs split into `group` consecutive channel blocks, outputs likewise.
    grouped_kernel = kernel.reshape(kh, kw, c // group, group, outputs // group)
    out = np.zeros((n, out_h, out_w, group, outputs // group))
    for i in range(kh):
        for j in range(kw):
            top, left = i * dh, j * dw
            window = padded[
                :, top : top + sh * (out_h - 1) + 1 : sh, left : left + sw * (out_w - 1) + 1 : sw, :
            ]
            window = window.reshape(n, out_h, out_w, group, c // group)
            out += np.einsum("nhwgi,igo->nhwgo", window, grouped_kernel[i, j])
    return out.reshape(n, out_h, out_w, outputs) + _bias(layer, params)


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    """Caffe: (size + 2 pad - kernel) / stride rounded up (or down), plus one; a last
    window that would start in the bottom/right padding is dropped."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _average_divisors(size: int, out: int, kernel: int, stride: int, pad: int) -> np.ndarray:
    """Per output position along one axis: the window length Caffe divides by, which is
    the window clipped to [-pad, size + pad) (padded cells count, cells past them do not)."""
    starts = np.arange(out) * stride - pad
    ends = np.minimum(starts + kernel, size + pad)
    return (ends - starts).astype(np.float64)


def pooling(layer: LayerDef, x: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    """Caffe MAX or AVE pooling on NHWC."""
    p = layer.params
    n, h, w, c = x.shape
    if p["global_pooling"]:
        (kh, kw), (sh, sw), (ph, pw) = (h, w), (1, 1), (0, 0)
    else:
        (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["pad"]
    out_h = pooled_size(h, kh, sh, ph, p["ceil"])
    out_w = pooled_size(w, kw, sw, pw, p["ceil"])
    # Room for every window: pad at the top/left, and past the bottom/right as far as the
    # last (ceil-rounded) window reaches.
    full_h = max(h + ph, (out_h - 1) * sh + kh - ph)
    full_w = max(w + pw, (out_w - 1) * sw + kw - pw)
    method = p["method"]
    if method == "max":
        fill = -np.inf  # padded cells never win
    elif method == "ave":
        fill = 0.0  # padded cells add nothing to the sum; the divisor counts them
    else:
        raise NotImplementedError(f"{layer.name}: {method} pooling")
    padded = np.full((n, ph + full_h, pw + full_w, c), fill)
    padded[:, ph : ph + h, pw : pw + w, :] = x
    windows = [
        padded[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    if method == "max":
        return np.max(windows, axis=0)
    divisors = np.outer(
        _average_divisors(h, out_h, kh, sh, ph), _average_divisors(w, out_w, kw, sw, pw)
    )
    return np.sum(windows, axis=0) / divisors[None, :, :, None]


def lrn(layer: LayerDef, x: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    """Caffe LRN across channels: a / (k + alpha / n * sum of a^2 over n channels)^beta,
    the window centred on the channel and zero-padded at the ends."""
    p = layer.params
    if p["norm_region"] != "across_channels":
        raise NotImplementedError(f"{layer.name}: LRN {p['norm_region']}")
    size = p["local_size"]
    before = (size - 1) // 2
    c = x.shape[-1]
    squares = np.zeros((*x.shape[:-1], c + size - 1))
    squares[..., before : before + c] = x * x
    total = sum(squares[..., i : i + c] for i in range(size))
    return x / (p["k"] + p["alpha"] / size * total) ** p["beta"]


def inner_product(layer: LayerDef, x: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    """x @ W + b, a spatial x flattened in NHWC (H, W, C) order."""
    if layer.params.get("axis", 1) != 1 or layer.params.get("transpose", False):
        raise NotImplementedError(f"{layer.name}: InnerProduct with axis/transpose")
    flat = x.reshape(x.shape[0], -1)
    kernel = params[0]
    if kernel.shape[0] != flat.shape[1]:
        raise ValueError(f"{layer.name}: kernel {kernel.shape} on {flat.shape[1]} inputs")
    return flat @ kernel + _bias(layer, params)


def relu(layer: LayerDef, x: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    slope = layer.params.get("negative_slope", 0.0)
    return np.where(x > 0, x, slope * x)


def prelu(layer: LayerDef, x: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    """max(x, 0) + alpha * min(x, 0), alpha per channel (the last axis) or shared."""
    alpha = params[0].reshape(-1)
    return np.where(x > 0, x, alpha * x)


def softmax(layer: LayerDef, x: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    """Softmax over channels: Caffe's axis 1 is NHWC's last axis."""
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def identity(layer: LayerDef, x: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    """Dropout at test time (Caffe scales during training, not at inference)."""
    return x


_LAYERS: dict[str, Any] = {
    "Convolution": convolution,
    "Pooling": pooling,
    "LRN": lrn,
    "InnerProduct": inner_product,
    "ReLU": relu,
    "PReLU": prelu,
    "Softmax": softmax,
    "Dropout": identity,
}


def top1(logits: np.ndarray) -> np.ndarray:
    return np.argmax(logits.reshape(logits.shape[0], -1), axis=1)


def nchw(x: np.ndarray) -> np.ndarray:
    """An NHWC batch as the NCHW float32 blob Caffe-style frameworks take."""
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)), dtype=np.float32)
