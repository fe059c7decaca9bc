"""Seeded weights for any Caffe deploy prototxt, written as a real .caffemodel.

`seeded_blobs` gives every weighted layer of a net definition its blobs in Caffe's layout
and order, shaped from the blob shapes the net implies: Convolution (out, in/group, kh, kw)
and bias; Deconvolution (in, out/group, kh, kw) and bias; InnerProduct (out, in), or (in,
out) with ``transpose``; PReLU's slopes; BatchNorm's running mean and variance multiplied by
a scale factor (blob 2) that is not 1, as Caffe stores them; Scale's and Bias's parameters
over their axes (a Scale with a second bottom holds only its bias). Values are He-scaled so
that deep nets keep unit-sized activations. `write_caffemodel` writes them with the net's
layer names and types through the generated protobuf module, which OpenCV and weightconv
both read. The same seed gives the same bytes.

Example::

    blobs = write_caffemodel("deploy.prototxt", "seeded.caffemodel", seed=0)
    blobs["conv1"][0].shape          # (64, 3, 7, 7)
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from weightconv._proto import caffe_pb2
from weightconv.errors import ShapeError
from weightconv.formats.caffe.net import (
    NetDef,
    infer_blob_shapes,
    net_def_from_message,
    parse_prototxt,
)

Shape = tuple[int, ...]
Blobs = dict[str, list[np.ndarray]]


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def _span(shape: Shape, axis: int, num_axes: int) -> Shape:
    axis %= len(shape)
    return tuple(shape[axis:] if num_axes == -1 else shape[axis : axis + num_axes])


def _raw_params(message: caffe_pb2.NetParameter) -> dict[str, Any]:
    """Each V2 layer's message by name (V1 nets carry no PReLU, BatchNorm or Scale)."""
    return {layer.name: layer for layer in message.layer}


def seeded_blobs(
    net: NetDef,
    shapes: Mapping[str, Shape],
    *,
    seed: int = 0,
    scale: float = 1.0,
    raw: Mapping[str, Any] | None = None,
) -> Blobs:
    """Caffe-layout blobs for every weighted layer of `net`, from blob `shapes` (NCHW by
    blob name, such as `formats.caffe.net.infer_blob_shapes` gives). `scale` multiplies
    every conv and dense weight; `raw` maps layer names to their V2 messages for the fields
    NetDef does not keep (PReLU's channel_shared, Scale's num_axes and bias_term)."""
    raw = raw or {}
    out: Blobs = {}
    for layer in net.layers:
        if layer.phase == "TRAIN":
            continue
        kind, p = layer.type, layer.params
        message = raw.get(layer.name)
        rng = _rng(seed, layer.name)
        if kind not in (
            "Convolution",
            "Deconvolution",
            "InnerProduct",
            "PReLU",
            "BatchNorm",
            "Scale",
            "Bias",
        ):
            continue
        bottom = shapes.get(layer.bottoms[0]) if layer.bottoms else None
        if bottom is None:
            raise ShapeError(
                f"layer {layer.name!r}: the shape of its input {layer.bottoms[:1]} is not known; "
                f"pass shapes="
            )
        blobs: list[np.ndarray] = []
        if kind in ("Convolution", "Deconvolution"):
            group = int(p.get("group") or 1)
            kh, kw = p["kernel"]
            c, n_out = bottom[1], int(p["num_output"])
            if kind == "Convolution":
                shape: Shape = (n_out, c // group, kh, kw)
                fan_in = c // group * kh * kw
            else:
                sh, sw = p["stride"]
                shape = (c, n_out // group, kh, kw)
                fan_in = max(1, c // group * kh * kw // (sh * sw))
            blobs.append(rng.standard_normal(shape) * (scale * math.sqrt(2.0 / fan_in)))
            if p.get("bias_term", True):
                blobs.append(rng.normal(0.0, 0.05, n_out))
        elif kind == "InnerProduct":
            axis = int(p.get("axis", 1)) % len(bottom)
            k, n_out = math.prod(bottom[axis:]), int(p["num_output"])
            weights = rng.standard_normal((n_out, k)) * (scale * math.sqrt(2.0 / k))
            blobs.append(weights.T.copy() if p.get("transpose") else weights)
            if p.get("bias_term", True):
                blobs.append(rng.normal(0.0, 0.05, n_out))
        elif kind == "PReLU":
            shared = bool(message.prelu_param.channel_shared) if message is not None else False
            blobs.append(rng.uniform(0.05, 0.5, 1 if shared else bottom[1]))
        elif kind == "BatchNorm":
            factor = float(rng.uniform(0.5, 4.0))
            channels = bottom[1]
            blobs += [
                rng.normal(0.0, 0.3, channels) * factor,
                rng.uniform(0.5, 2.0, channels) * factor,
                np.array([factor]),
            ]
        elif kind == "Scale":
            sp = message.scale_param if message is not None else caffe_pb2.ScaleParameter()
            if len(layer.bottoms) > 1:
                span = tuple(shapes[layer.bottoms[1]])
            else:
                span = _span(bottom, sp.axis, sp.num_axes)
                blobs.append(rng.uniform(0.5, 1.5, span))
            if sp.bias_term:
                blobs.append(rng.normal(0.0, 0.1, span))
        elif len(layer.bottoms) == 1:  # Bias
            bp = message.bias_param if message is not None else caffe_pb2.BiasParameter()
            blobs.append(rng.normal(0.0, 0.1, _span(bottom, bp.axis, bp.num_axes)))
        out[layer.name] = [np.asarray(blob, dtype=np.float32) for blob in blobs]
    return out


def caffemodel_message(net: NetDef, blobs: Blobs) -> caffe_pb2.NetParameter:
    """A NetParameter with one V2 layer (name, type, blobs) per weighted layer."""
    model = caffe_pb2.NetParameter(name=net.name)
    for layer in net.layers:
        if layer.name not in blobs:
            continue
        entry = model.layer.add(name=layer.name, type=layer.type)
        for blob in blobs[layer.name]:
            proto = entry.blobs.add()
            proto.shape.dim.extend(int(d) for d in blob.shape)
            proto.data.extend(blob.ravel().tolist())
    return model


def write_caffemodel(
    prototxt: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    scale: float = 1.0,
    shapes: Mapping[str, Shape] | None = None,
) -> Blobs:
    """Seeded weights for the deploy net `prototxt`, written to `path` as a .caffemodel.

    `shapes` (blob -> NCHW) defaults to what `infer_blob_shapes` works out; pass a graph's
    shapes for nets with layers that it does not follow. Returns the blobs by layer."""
    message, _notes = parse_prototxt(prototxt)
    net = net_def_from_message(message)
    blobs = seeded_blobs(
        net,
        shapes if shapes is not None else infer_blob_shapes(net),
        seed=seed,
        scale=scale,
        raw=_raw_params(message),
    )
    Path(path).write_bytes(caffemodel_message(net, blobs).SerializeToString())
    return blobs


__all__ = ["caffemodel_message", "seeded_blobs", "write_caffemodel"]
