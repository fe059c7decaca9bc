"""Caffe net definitions: V0, V1 and V2 layers in one form, and blob-shape inference.

The shapes matter for weights in one place: an InnerProduct that follows a
spatial blob stores its inputs flattened C, H, W, and moving it to TensorFlow's
H, W, C order needs that blob's C, H and W. They come from the net's input size
and Caffe's own output-size arithmetic (conv rounds down, pooling rounds up and
clips), so this module reproduces that arithmetic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import Message

from weightconv._proto import caffe_pb2
from weightconv.errors import FormatError
from weightconv.model import Kind

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

KIND_OF_TYPE = {
    "Convolution": Kind.CONV,
    "Deconvolution": Kind.DECONV,
    "InnerProduct": Kind.DENSE,
    "LRN": Kind.LRN,
    "Pooling": Kind.POOL,
    "PReLU": Kind.PRELU,
    "BatchNorm": Kind.BATCHNORM,
    "Scale": Kind.SCALE,
    "Bias": Kind.BIAS,
    "Input": Kind.INPUT,
    "Data": Kind.INPUT,
    "ImageData": Kind.INPUT,
    "HDF5Data": Kind.INPUT,
    "MemoryData": Kind.INPUT,
    "DummyData": Kind.INPUT,
    "WindowData": Kind.INPUT,
    "ReLU": Kind.RELU,
    "Softmax": Kind.SOFTMAX,
    "Dropout": Kind.DROPOUT,
}

#: Layers whose every top has the shape of their first bottom.
SHAPE_PRESERVING = {
    "ReLU",
    "PReLU",
    "ELU",
    "Sigmoid",
    "TanH",
    "AbsVal",
    "BNLL",
    "Power",
    "Exp",
    "Log",
    "Dropout",
    "LRN",
    "BatchNorm",
    "Scale",
    "Bias",
    "MVN",
    "Softmax",
    "Threshold",
    "Clip",
    "Swish",
    "Split",
    "Eltwise",
}

#: Layers whose output keeps the input's spatial layout (so an InnerProduct after them
#: sees a C, H, W blob).
SPATIAL_PRODUCERS = {"Convolution", "Deconvolution", "Pooling", "Padding", "Crop", "Concat"}


@dataclass
class LayerDef:
    """One layer of a net definition, whatever Caffe version spelled it."""

    name: str
    type: str
    bottoms: list[str] = field(default_factory=list)
    tops: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    phase: str | None = None

    @property
    def kind(self) -> str:
        return KIND_OF_TYPE.get(self.type, Kind.OTHER)


@dataclass
class NetDef:
    name: str
    encoding: str
    layers: list[LayerDef]
    #: Net-level inputs (`input:` with `input_dim`/`input_shape`): blob name -> full shape.
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- net definitions -----------------------------------------------------------------------


def net_def_from_message(net: caffe_pb2.NetParameter) -> NetDef:
    """Normalise a parsed NetParameter (V0, V1 or V2) into a NetDef."""
    if len(net.layer) and len(net.layers):
        raise FormatError("the net mixes V2 `layer` and V1 `layers` entries, which Caffe refuses")
    inputs = _net_inputs(net)
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


def _net_inputs(net: caffe_pb2.NetParameter) -> dict[str, tuple[int, ...]]:
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


# --- prototxt ------------------------------------------------------------------------------

_FIELD_NAME = re.compile(r"\b([A-Za-z_]\w*)\s*(?=[:{<])")
_STRING_OR_COMMENT = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|#[^\n]*")


def _known_field_names() -> set[str]:
    names: set[str] = set()

    def walk(descriptor: Any) -> None:
        for fld in descriptor.fields:
            names.add(fld.name)
        for nested in descriptor.nested_types:
            walk(nested)

    for message in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        walk(message)
    return names


def parse_prototxt(path: str | Path) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """Parse a net definition in text format; fields our schema lacks are skipped with a note."""
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{source}: no such prototxt") from None
    except OSError as exc:
        raise FormatError(f"{source}: cannot be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(
            f"{source}: not a text prototxt (not UTF-8 text; "
            f"a binary .caffemodel goes first, the prototxt after --prototxt)"
        ) from None
    net = caffe_pb2.NetParameter()
    notes: list[str] = []
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as strict_error:
        net = caffe_pb2.NetParameter()
        try:
            text_format.Parse(text, net, allow_unknown_field=True)
        except text_format.ParseError as exc:
            raise FormatError(f"{source}: not a Caffe net definition: {exc}") from None
        unknown = _unknown_fields(text)
        listed = ", ".join(f"{name} (line {line})" for name, line in unknown) or str(strict_error)
        notes.append(
            f"{source.name}: skipped fields the Caffe schema does not know "
            f"(not needed for weights): {listed}"
        )
    if not len(net.layer) and not len(net.layers):
        raise FormatError(f"{source}: defines no layers; is it a Caffe net definition?")
    return net, notes


def _unknown_fields(text: str) -> list[tuple[str, int]]:
    known = _known_field_names()
    stripped = _STRING_OR_COMMENT.sub(lambda m: " " * len(m.group(0)), text)
    seen: dict[str, int] = {}
    for match in _FIELD_NAME.finditer(stripped):
        name = match.group(1)
        if name not in known and name not in seen:
            seen[name] = stripped.count("\n", 0, match.start()) + 1
    return list(seen.items())


# --- shapes --------------------------------------------------------------------------------


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Caffe convolution: floor((size + 2 pad - (dilation (kernel - 1) + 1)) / stride) + 1."""
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil: bool = True) -> int:
    """Caffe pooling: rounds up by default, then drops a last window that starts in the padding."""
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def infer_blob_shapes(
    net: NetDef, input_shape: tuple[int, ...] | None = None
) -> dict[str, tuple[int, ...]]:
    """Shapes (N, C, H, W) or (N, K) of every blob that can be worked out, by name.

    `input_shape` (C, H, W) fills in data layers whose size the definition does not give.
    """
    shapes: dict[str, tuple[int, ...]] = dict(net.inputs)
    for layer in net.layers:
        if layer.phase == "TRAIN" and any(top in shapes for top in layer.tops):
            continue
        try:
            outputs = _layer_output_shapes(layer, shapes, input_shape)
        except (ArithmeticError, IndexError, KeyError, ValueError):
            outputs = None
        if outputs is None:
            continue
        for top, shape in zip(layer.tops, outputs, strict=False):
            if shape is not None and all(d > 0 for d in shape):
                shapes[top] = shape
    return shapes


Shape = tuple[int, ...]


def _layer_output_shapes(
    layer: LayerDef, shapes: dict[str, Shape], input_shape: Shape | None
) -> list[Shape | None] | None:
    kind_type = layer.type
    p = layer.params
    if kind_type in ("Input", "DummyData", "MemoryData"):
        declared = [s for s in p.get("shapes", []) if all(d > 0 for d in s)]
        if declared:
            return [declared[min(i, len(declared) - 1)] for i in range(len(layer.tops))]
    if layer.kind == Kind.INPUT:
        if input_shape is not None and layer.tops:
            return [(1, *input_shape)] + [None] * (len(layer.tops) - 1)
        return None
    bottoms = [shapes.get(b) for b in layer.bottoms]
    if not bottoms or bottoms[0] is None:
        return None
    first = bottoms[0]
    if kind_type == "Convolution":
        n, _, h, w = first
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p["kernel"], p["stride"], p["pad"], p["dilation"]
        return [
            (
                n,
                p["num_output"],
                conv_output_size(h, kh, sh, ph, dh),
                conv_output_size(w, kw, sw, pw, dw),
            )
        ]
    if kind_type == "Deconvolution":
        n, _, h, w = first
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p["kernel"], p["stride"], p["pad"], p["dilation"]
        return [
            (
                n,
                p["num_output"],
                sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph,
                sw * (w - 1) + dw * (kw - 1) + 1 - 2 * pw,
            )
        ]
    if kind_type == "Pooling":
        n, c, h, w = first
        if p["global_pooling"]:
            return [(n, c, 1, 1)]
        (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["pad"]
        return [
            (
                n,
                c,
                pool_output_size(h, kh, sh, ph, p["ceil"]),
                pool_output_size(w, kw, sw, pw, p["ceil"]),
            )
        ]
    if kind_type == "Padding":
        n, c, h, w = first
        return [(n, c, h + 2 * p["pad"], w + 2 * p["pad"])]
    if kind_type == "InnerProduct":
        return [(first[0], p["num_output"])]
    if kind_type in SHAPE_PRESERVING:
        return [first] * len(layer.tops)
    if kind_type == "Flatten":
        axis = p.get("axis", 1)
        end = p.get("end_axis", -1) % len(first)
        return [(*first[:axis], math.prod(first[axis : end + 1]), *first[end + 1 :])]
    if kind_type == "Concat":
        if any(b is None for b in bottoms):
            return None
        axis = p.get("axis", 1) % len(first)
        total = sum(b[axis] for b in bottoms if b is not None)
        return [(*first[:axis], total, *first[axis + 1 :])]
    if kind_type == "Slice":
        axis = p.get("axis", 1) % len(first)
        points = [0, *p.get("slice_points", []), first[axis]]
        if len(points) == 2:
            step = first[axis] // len(layer.tops)
            points = [i * step for i in range(len(layer.tops) + 1)]
        return [
            (*first[:axis], points[i + 1] - points[i], *first[axis + 1 :])
            for i in range(len(layer.tops))
        ]
    if kind_type == "Reshape":
        return [_reshape(first, p)]
    if kind_type == "Crop" and len(bottoms) > 1 and bottoms[1] is not None:
        axis = p.get("axis", 2) % len(first)
        return [(*first[:axis], *bottoms[1][axis:])]
    return None


def _reshape(shape: tuple[int, ...], p: dict[str, Any]) -> tuple[int, ...] | None:
    if p.get("axis", 0) != 0 or p.get("num_axes", -1) != -1:
        return None
    dims = list(p.get("dims", []))
    out = [shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if out.count(-1) == 1:
        known = math.prod(d for d in out if d != -1)
        out[out.index(-1)] = math.prod(shape) // known
    return tuple(out)


def feeds_from_spatial(net: NetDef, blob: str) -> bool:
    """Whether `blob` is (through shape-keeping layers) the output of a spatial layer or a
    data layer, so that an InnerProduct on it flattens C, H, W."""
    producers = {
        top: layer for layer in net.layers for top in layer.tops if top not in layer.bottoms
    }
    in_place = {}
    for layer in net.layers:
        for top in layer.tops:
            if top in layer.bottoms:
                in_place.setdefault(top, []).append(layer)
    seen = set()
    while blob not in seen:
        seen.add(blob)
        if blob in net.inputs:
            return True
        layer = producers.get(blob)
        if layer is None:
            return False
        if layer.type in SPATIAL_PRODUCERS or layer.kind == Kind.INPUT:
            return True
        if layer.type in SHAPE_PRESERVING and layer.bottoms:
            blob = layer.bottoms[0]
            continue
        return False
    return False
