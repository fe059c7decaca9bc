"""Every parameter that changes a layer's numbers, read from the Caffe layer message itself.

`weightconv.formats.caffe.net` keeps what a converter needs (kernels, pads, groups, LRN,
InnerProduct's axis and transpose); a graph that runs the net needs the rest too (ReLU's
negative slope, Eltwise's coefficients, Power, ELU, Softmax's axis, Scale's span...). They
are taken here from the same parsed message, with Caffe's defaults where a field is unset.

One field of the OpenCV/SSD schema that BVLC's lacks carries numbers: ``permute_param``
(field 202, ``repeated uint32 order``). `permute_orders` reads it from the prototxt text with
protobuf's own text parser and a two-message supplementary schema, so that a Permute layer
runs with its order or is refused, never guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import Message

from weightconv._proto import caffe_pb2
from weightconv.formats.caffe.net import LayerDef, conv_params, lrn_params, pool_params

#: Field numbers of the OpenCV/SSD schema's Permute parameters.
_PERMUTE_PARAM, _PERMUTE_ORDER = 202, 1


def _message(layer: Message | None, name: str) -> Any:
    """`layer`'s sub-message `name`, or None when the message type has no such field."""
    if layer is None or name not in layer.DESCRIPTOR.fields_by_name:
        return None
    return getattr(layer, name)


def _axis_param(msg: Any, default: int = 1) -> int:
    return int(msg.axis) if msg is not None else default


def layer_params(definition: LayerDef, layer: Message | None) -> dict[str, Any]:
    """The parameters of one layer: `definition.params` (from `formats.caffe.net`) completed
    with every field of `layer` (its V1 or V2 message; None for V0) that changes numbers."""
    p = dict(definition.params)
    kind = definition.type
    get = lambda name: _message(layer, name)  # noqa: E731
    if kind in ("Convolution", "Deconvolution") and get("convolution_param") is not None:
        cp = get("convolution_param")
        p.update(conv_params(cp))
        p["group"] = int(cp.group or 1)
        p["axis"] = int(cp.axis)
    elif kind == "Pooling" and get("pooling_param") is not None:
        p.update(pool_params(get("pooling_param")))
    elif kind == "LRN" and get("lrn_param") is not None:
        p.update(lrn_params(get("lrn_param")))
    elif kind == "ReLU":
        rp = get("relu_param")
        p["negative_slope"] = float(rp.negative_slope) if rp is not None else 0.0
    elif kind == "ELU":
        ep = get("elu_param")
        p["alpha"] = float(ep.alpha) if ep is not None else 1.0
    elif kind == "PReLU":
        pp = get("prelu_param")
        p["channel_shared"] = bool(pp.channel_shared) if pp is not None else False
    elif kind == "Power":
        pw = get("power_param")
        p.update(
            power=float(pw.power) if pw is not None else 1.0,
            scale=float(pw.scale) if pw is not None else 1.0,
            shift=float(pw.shift) if pw is not None else 0.0,
        )
    elif kind == "BatchNorm":
        bn = get("batch_norm_param")
        has = bn is not None and bn.HasField("use_global_stats")
        p["use_global_stats"] = bool(bn.use_global_stats) if has else None
        p["eps"] = float(bn.eps) if bn is not None else 1e-5
    elif kind in ("Scale", "Bias"):
        sp = get("scale_param" if kind == "Scale" else "bias_param")
        p["axis"] = _axis_param(sp)
        p["num_axes"] = int(sp.num_axes) if sp is not None else 1
        if kind == "Scale":
            p["bias_term"] = bool(sp.bias_term) if sp is not None else False
    elif kind == "Eltwise":
        ew = get("eltwise_param")
        op = ew.operation if ew is not None else caffe_pb2.EltwiseParameter.SUM
        p["operation"] = caffe_pb2.EltwiseParameter.EltwiseOp.Name(op).lower()
        p["coeff"] = [float(c) for c in ew.coeff] if ew is not None else []
    elif kind == "Softmax":
        p["axis"] = _axis_param(get("softmax_param"))
    elif kind == "InnerProduct":
        p.setdefault("axis", 1)
        p.setdefault("transpose", False)
    elif kind == "Concat":
        p.setdefault("axis", 1)
    elif kind == "Slice":
        p.setdefault("axis", 1)
        p.setdefault("slice_points", [])
    elif kind == "Flatten":
        p.setdefault("axis", 1)
        p.setdefault("end_axis", -1)
    elif kind == "Reshape":
        p.setdefault("dims", [])
        p.setdefault("axis", 0)
        p.setdefault("num_axes", -1)
    elif kind == "Crop":
        p.setdefault("axis", 2)
        p.setdefault("offset", [])
    return p


# --- the OpenCV/SSD schema's permute_param ---------------------------------------------------


def _fork_net_class() -> Any:
    """A message class reading only a V2 net's layer names, types and ``permute_param``."""
    file = descriptor_pb2.FileDescriptorProto(
        name="weightconv_caffe_forks.proto", package="weightconv_caffe_forks", syntax="proto2"
    )
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    kinds = descriptor_pb2.FieldDescriptorProto
    permute = file.message_type.add(name="PermuteParameter")
    permute.field.add(name="order", number=_PERMUTE_ORDER, label=repeated, type=kinds.TYPE_UINT32)
    layer = file.message_type.add(name="Layer")
    layer.field.add(name="name", number=1, label=optional, type=kinds.TYPE_STRING)
    layer.field.add(name="type", number=2, label=optional, type=kinds.TYPE_STRING)
    layer.field.add(
        name="permute_param",
        number=_PERMUTE_PARAM,
        label=optional,
        type=kinds.TYPE_MESSAGE,
        type_name=".weightconv_caffe_forks.PermuteParameter",
    )
    net = file.message_type.add(name="Net")
    net.field.add(
        name="layer",
        number=100,
        label=repeated,
        type=kinds.TYPE_MESSAGE,
        type_name=".weightconv_caffe_forks.Layer",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("weightconv_caffe_forks.Net"))


def permute_orders(prototxt: str | Path) -> dict[str, tuple[int, ...] | None]:
    """Each V2 Permute layer's ``permute_param.order`` by layer name (None when it has none)."""
    net = _fork_net_class()()
    text_format.Parse(Path(prototxt).read_text(encoding="utf-8"), net, allow_unknown_field=True)
    return {
        layer.name: tuple(int(o) for o in layer.permute_param.order)
        if layer.HasField("permute_param")
        else None
        for layer in net.layer
        if layer.type == "Permute"
    }


__all__ = ["layer_params", "permute_orders"]
