"""Caffe net definitions: V0, V1 and V2 layer messages normalised into one form
(`LayerDef`, `NetDef`, declared in `netdef`), with the parameters a converter needs.

This is the module the rest of weightconv takes Caffe net facts from: it re-exports the
definitions (`netdef`), the shape arithmetic and data flow (`shapes`) and the prototxt
parser (`prototxt`), which live in their own modules.
"""

from __future__ import annotations

import os
from typing import Any

from google.protobuf.message import Message

from weightconv._proto import caffe_pb2
from weightconv.errors import FormatError
from weightconv.formats.caffe.netdef import KIND_OF_TYPE, LayerDef, NetDef
from weightconv.formats.caffe.prototxt import parse_prototxt
from weightconv.formats.caffe.shapes import (
    SHAPE_PRESERVING,
    SPATIAL_PRODUCERS,
    chained_in_file_order,
    conv_output_size,
    feeds_from_spatial,
    has_links,
    infer_blob_shapes,
    pool_output_size,
    reads_flat_input,
)

__all__ = [
    "KIND_OF_TYPE",
    "SHAPE_PRESERVING",
    "SPATIAL_PRODUCERS",
    "FormatError",
    "LayerDef",
    "NetDef",
    "chained_in_file_order",
    "conv_output_size",
    "conv_params",
    "feeds_from_spatial",
    "has_links",
    "infer_blob_shapes",
    "layer_def_from_v0",
    "layer_def_from_v1",
    "layer_def_from_v2",
    "lrn_params",
    "net_def_from_message",
    "net_inputs",
    "parse_prototxt",
    "pool_output_size",
    "pool_params",
    "reads_flat_input",
]

V1_TYPE_NAMES = {
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

V0_TYPE_NAMES = {
    "accuracy": "Accuracy",
    "bnll": "BNLL",
    "concat": "Concat",
    "conv": "Convolution",
    "data": "Data",
    "dropout": "Dropout",
    "euclidean_loss": "EuclideanLoss",
    "flatten": "Flatten",
    "hdf5_data": "HDF5Data",
    "hdf5_output": "HDF5Output",
    "im2col": "Im2col",
    "images": "ImageData",
    "infogain_loss": "InfogainLoss",
    "innerproduct": "InnerProduct",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MultinomialLogisticLoss",
    "pool": "Pooling",
    "relu": "ReLU",
    "sigmoid": "Sigmoid",
    "softmax": "Softmax",
    "softmax_loss": "SoftmaxWithLoss",
    "split": "Split",
    "tanh": "TanH",
    "window_data": "WindowData",
    "padding": "Padding",
}

# --- net definitions -----------------------------------------------------------------------


def read_net_def(prototxt: str | os.PathLike[str]) -> tuple[NetDef, list[str]]:
    """A prototxt file as a NetDef, with the notes its parsing made (fork fields skipped)."""
    message, notes = parse_prototxt(prototxt)
    return net_def_from_message(message), notes


def net_def_from_message(net: caffe_pb2.NetParameter) -> NetDef:
    """Normalise a parsed NetParameter (V0, V1 or V2) into a NetDef."""
    if len(net.layer) and len(net.layers):
        raise FormatError("the net mixes V2 `layer` and V1 `layers` entries, which Caffe refuses")
    inputs = net_inputs(net)
    if len(net.layers):
        is_v0 = any(v1.HasField("layer") for v1 in net.layers)
        layers = [
            layer_def_from_v0(v1) if v1.HasField("layer") else layer_def_from_v1(v1)
            for v1 in net.layers
        ]
        encoding = "V0" if is_v0 else "V1"
    else:
        layers = [layer_def_from_v2(lp) for lp in net.layer]
        encoding = "V2"
    return NetDef(name=net.name, encoding=encoding, layers=layers, inputs=inputs)


def net_inputs(net: caffe_pb2.NetParameter) -> dict[str, tuple[int, ...]]:
    """Net-level inputs (`input` with `input_shape` or 4 `input_dim` each): blob -> shape."""
    inputs: dict[str, tuple[int, ...]] = {}
    dims = list(net.input_dim)
    for index, blob in enumerate(net.input):
        if index < len(net.input_shape):
            inputs[blob] = tuple(int(d) for d in net.input_shape[index].dim)
        elif len(dims) >= 4 * (index + 1):
            inputs[blob] = tuple(int(d) for d in dims[4 * index : 4 * index + 4])
    return inputs


def _phase_of(rules: Any) -> str | None:
    for rule in rules:
        if rule.HasField("phase"):
            return "TRAIN" if rule.phase == caffe_pb2.TRAIN else "TEST"
    return None


def layer_def_from_v2(lp: caffe_pb2.LayerParameter) -> LayerDef:
    params = _params_for(lp.type, lp)
    return LayerDef(
        name=lp.name,
        type=lp.type,
        bottoms=list(lp.bottom),
        tops=list(lp.top),
        params=params,
        phase=_phase_of(lp.include),
    )


def layer_def_from_v1(lp: caffe_pb2.V1LayerParameter) -> LayerDef:
    enum_name = caffe_pb2.V1LayerParameter.LayerType.Name(lp.type)
    layer_type = V1_TYPE_NAMES.get(enum_name, enum_name.title().replace("_", ""))
    return LayerDef(
        name=lp.name,
        type=layer_type,
        bottoms=list(lp.bottom),
        tops=list(lp.top),
        params=_params_for(layer_type, lp),
        phase=_phase_of(lp.include),
    )


def layer_def_from_v0(wrapper: caffe_pb2.V1LayerParameter) -> LayerDef:
    v0 = wrapper.layer
    layer_type = V0_TYPE_NAMES.get(v0.type, v0.type)
    params: dict[str, Any] = {}
    if layer_type in ("Convolution", "InnerProduct"):
        params["num_output"] = v0.num_output
        params["bias_term"] = v0.biasterm
    if layer_type == "Convolution":
        params.update(
            kernel=(v0.kernelsize, v0.kernelsize),
            stride=(v0.stride, v0.stride),
            pad=(v0.pad, v0.pad),
            dilation=(1, 1),
            group=v0.group,
        )
    elif layer_type == "Pooling":
        params.update(
            method=caffe_pb2.V0LayerParameter.PoolMethod.Name(v0.pool).lower(),
            kernel=(v0.kernelsize, v0.kernelsize),
            stride=(v0.stride, v0.stride),
            pad=(v0.pad, v0.pad),
            global_pooling=False,
            ceil=True,
        )
    elif layer_type == "LRN":
        params.update(
            local_size=v0.local_size,
            alpha=v0.alpha,
            beta=v0.beta,
            k=v0.k,
            norm_region="across_channels",
        )
    elif layer_type == "Padding":
        params["pad"] = v0.pad
    elif layer_type == "InnerProduct":
        params.update(transpose=False, axis=1)
    return LayerDef(
        name=v0.name or wrapper.name,
        type=layer_type,
        bottoms=list(wrapper.bottom),
        tops=list(wrapper.top),
        params=params,
    )


def _pair(repeated: Any, h: int, w: int, has_h: bool, default: int) -> tuple[int, int]:
    if has_h:
        return int(h), int(w)
    values = list(repeated)
    if not values:
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    return int(values[0]), int(values[1])


def conv_params(cp: caffe_pb2.ConvolutionParameter) -> dict[str, Any]:
    return {
        "num_output": cp.num_output,
        "bias_term": cp.bias_term,
        "kernel": _pair(cp.kernel_size, cp.kernel_h, cp.kernel_w, cp.HasField("kernel_h"), 1),
        "stride": _pair(cp.stride, cp.stride_h, cp.stride_w, cp.HasField("stride_h"), 1),
        "pad": _pair(cp.pad, cp.pad_h, cp.pad_w, cp.HasField("pad_h") or cp.HasField("pad_w"), 0),
        "dilation": _pair(cp.dilation, 0, 0, False, 1),
        "group": cp.group,
    }


def pool_params(pp: caffe_pb2.PoolingParameter) -> dict[str, Any]:
    def square(size: int, h: int, w: int, has_h: bool) -> tuple[int, int]:
        return (int(h), int(w)) if has_h else (int(size), int(size))

    ceil = pp.round_mode == caffe_pb2.PoolingParameter.CEIL
    if pp.HasField("ceil_mode"):
        ceil = pp.ceil_mode
    return {
        "method": caffe_pb2.PoolingParameter.PoolMethod.Name(pp.pool).lower(),
        "kernel": square(pp.kernel_size, pp.kernel_h, pp.kernel_w, pp.HasField("kernel_h")),
        "stride": square(pp.stride, pp.stride_h, pp.stride_w, pp.HasField("stride_h")),
        "pad": square(pp.pad, pp.pad_h, pp.pad_w, pp.HasField("pad_h") or pp.HasField("pad_w")),
        "global_pooling": pp.global_pooling,
        "ceil": ceil,
    }


def lrn_params(lp: caffe_pb2.LRNParameter) -> dict[str, Any]:
    return {
        "local_size": lp.local_size,
        "alpha": lp.alpha,
        "beta": lp.beta,
        "k": lp.k,
        "norm_region": caffe_pb2.LRNParameter.NormRegion.Name(lp.norm_region).lower(),
    }


def _params_for(layer_type: str, lp: Message) -> dict[str, Any]:
    """Pull the facts a converter needs out of a V1 or V2 layer message."""
    get = lp.__getattribute__
    if layer_type in ("Convolution", "Deconvolution"):
        return conv_params(get("convolution_param"))
    if layer_type == "Pooling":
        return pool_params(get("pooling_param"))
    if layer_type == "LRN":
        return lrn_params(get("lrn_param"))
    if layer_type == "InnerProduct":
        ip = get("inner_product_param")
        return {
            "num_output": ip.num_output,
            "bias_term": ip.bias_term,
            "transpose": ip.transpose,
            "axis": ip.axis,
        }
    if layer_type == "Input" and isinstance(lp, caffe_pb2.LayerParameter):
        return {"shapes": [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]}
    if layer_type == "MemoryData":
        md = get("memory_data_param")
        return {"shapes": [(md.batch_size, md.channels, md.height, md.width)]}
    if layer_type == "DummyData":
        dd = get("dummy_data_param")
        return {"shapes": [tuple(int(d) for d in s.dim) for s in dd.shape]}
    if layer_type == "Concat":
        cp = get("concat_param")
        return {
            "axis": cp.axis
            if cp.HasField("axis") or not cp.HasField("concat_dim")
            else cp.concat_dim
        }
    if layer_type == "Slice":
        sp = get("slice_param")
        return {
            "axis": sp.axis
            if sp.HasField("axis") or not sp.HasField("slice_dim")
            else sp.slice_dim,
            "slice_points": list(sp.slice_point),
        }
    if layer_type == "Flatten" and isinstance(lp, caffe_pb2.LayerParameter):
        return {"axis": lp.flatten_param.axis, "end_axis": lp.flatten_param.end_axis}
    if layer_type == "Reshape" and isinstance(lp, caffe_pb2.LayerParameter):
        rp = lp.reshape_param
        return {"dims": [int(d) for d in rp.shape.dim], "axis": rp.axis, "num_axes": rp.num_axes}
    if layer_type == "BatchNorm" and isinstance(lp, caffe_pb2.LayerParameter):
        return {"eps": lp.batch_norm_param.eps}
    if layer_type == "Scale" and isinstance(lp, caffe_pb2.LayerParameter):
        return {"bias_term": lp.scale_param.bias_term, "axis": lp.scale_param.axis}
    if layer_type == "PReLU" and isinstance(lp, caffe_pb2.LayerParameter):
        return {"channel_shared": lp.prelu_param.channel_shared}
    if layer_type == "Crop" and isinstance(lp, caffe_pb2.LayerParameter):
        return {"axis": lp.crop_param.axis, "offset": list(lp.crop_param.offset)}
    return {}
