"""Caffe .caffemodel (V0, V1 and V2 nets), read at the wire level.

Layer definitions (name, type, parameters) are small and go through the
generated protobuf module; blob payloads are never parsed into protobuf
objects: each packed ``data``/``double_data`` field becomes a read-only NumPy
view of the memory-mapped file. So a model costs about one copy of itself in
memory at most, parsing runs at disk speed, and files over 2 GiB (protobuf's
ceiling) read like any other.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from weightconv._proto import caffe_pb2
from weightconv._util.files import open_input
from weightconv._util.regions import map_input
from weightconv.codecs.protowire import (
    FIXED32,
    LENGTH_DELIMITED,
    VARINT,
    WireError,
    as_int64,
    encode_length_delimited_header,
    fixed_value,
    iter_field_spans,
    iter_fields,
    packed_array,
    packed_varints,
    read_varint,
)
from weightconv.errors import FormatError
from weightconv.formats.caffe import net as caffe_net
from weightconv.formats.caffe.assemble import RawLayer, assemble
from weightconv.formats.caffe.net import NetDef
from weightconv.model import Layer, WeightSet

NET_LAYER_V2 = 100
NET_LAYERS_V1 = 2
V2_BLOBS = 7
V1_BLOBS = 6
V1_V0_LAYER = 1
V0_BLOBS = 50
#: Caffe's kMaxBlobAxes: a blob has at most this many axes.
MAX_BLOB_AXES = 32

#: Field number -> wire types allowed at the top level of a NetParameter.
_NET_FIELDS = {1: {2}, 2: {2}, 3: {2}, 4: {0, 2}, 5: {0}, 6: {2}, 7: {0}, 8: {2}, 100: {2}}


def sniff(head: bytes, path: Path) -> bool:
    """A binary NetParameter: every field in the first bytes is one a net may start with."""
    pos, seen = 0, 0
    end = len(head)
    try:
        while pos < end and seen < 64:
            key, pos = read_varint(head, pos, end)
            number, wire_type = key >> 3, key & 7
            if wire_type not in _NET_FIELDS.get(number, ()):
                return False
            seen += 1
            if wire_type == VARINT:
                _, pos = read_varint(head, pos, end)
                continue
            length, pos = read_varint(head, pos, end)
            payload = head[pos : min(pos + length, end)]
            if number in (1, 3) and not _is_text(payload, complete=pos + length <= end):
                return False
            if number in (NET_LAYER_V2, NET_LAYERS_V1) and not _plausible_layer(payload):
                return False
            pos += length
    except WireError:
        return seen > 0
    return seen > 0


def _is_text(payload: bytes, complete: bool) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return not complete and exc.start >= len(payload) - 3
    return all(byte >= 0x20 or byte in b"\t" for byte in payload)


def _plausible_layer(payload: bytes) -> bool:
    if not payload:
        return True
    try:
        key, _ = read_varint(payload, 0, len(payload))
    except WireError:
        return False
    number, wire_type = key >> 3, key & 7
    return 1 <= number <= 1002 and wire_type in (VARINT, LENGTH_DELIMITED, FIXED32)


def read(
    path: str | os.PathLike[str],
    *,
    prototxt: str | os.PathLike[str] | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> WeightSet:
    """Read a .caffemodel into a WeightSet whose layers are in Caffe layout.

    `prototxt` (a deploy net definition) gives the blob shapes that fix the row order of
    a fully-connected layer on a spatial blob; `input_shape` (C, H, W) does the same for
    nets whose data layer has no size, and for files whose layers carry no bottom/top
    links, which it has read as a chain in file order (the shapes that chain implies are
    checked against every weighted layer's blobs). Without them such a layer is kept as
    stored, and converting it to the canonical layout raises ShapeError.

    Example::

        ws = read("lenet.caffemodel", prototxt="lenet.prototxt")
        ws["conv1"].tensors["weights"].shape   # (20, 1, 5, 5)
    """
    source = Path(path)
    mapping = _map(source)
    model_net, raw_layers = parse_caffemodel(memoryview(mapping), source)
    notes: list[str] = []
    deploy_net = None
    if prototxt is not None:
        deploy_net, prototxt_notes = caffe_net.read_net_def(prototxt)
        notes.extend(prototxt_notes)
    detail = {
        "encoding": model_net.encoding,
        "net_name": model_net.name,
        "prototxt": str(prototxt) if prototxt is not None else None,
    }
    weights = assemble(
        source, "caffemodel", raw_layers, model_net, deploy_net, input_shape, notes, detail
    )
    weights.release = _page_releaser(
        mapping, {raw.definition.name: raw.span for raw in raw_layers if raw.span}
    )
    # Parsing read every layer's header (and the kernel mapped the pages around each): drop
    # them all, so what stays resident grows with what a writer touches, not with the file.
    mapping.madvise(mmap.MADV_DONTNEED)
    return weights


def _page_releaser(buffer: mmap.mmap, spans: dict[str, tuple[int, int]]) -> Callable[[Layer], None]:
    """Drop a layer's pages of the mapped file from this process's memory. Its arrays stay
    valid: touching them again reads the pages back from the file."""

    def release(layer: Layer) -> None:
        span = spans.get(layer.name)
        if span is None or not hasattr(buffer, "madvise"):
            return
        start = span[0] - span[0] % mmap.PAGESIZE
        buffer.madvise(mmap.MADV_DONTNEED, start, span[1] - start)

    return release


def _map(source: Path) -> mmap.mmap:
    with open_input(source) as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise FormatError(f"{source}: file is empty")
        return map_input(handle)


def parse_caffemodel(buffer: memoryview | bytes, source: Path) -> tuple[NetDef, list[RawLayer]]:
    """Walk a binary NetParameter: the net's header and each layer with its blobs."""
    header = bytearray()
    v2_spans: list[tuple[int, int]] = []
    v1_spans: list[tuple[int, int]] = []
    try:
        for number, _wire, field_start, start, end in iter_field_spans(buffer):
            if number == NET_LAYER_V2:
                v2_spans.append((start, end))
            elif number == NET_LAYERS_V1:
                v1_spans.append((start, end))
            else:
                header += buffer[field_start:end]
    except WireError as exc:
        raise FormatError(f"{source}: not a readable .caffemodel ({exc})") from None
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(bytes(header))
    except DecodeError:
        raise FormatError(
            f"{source}: not a .caffemodel (its header does not decode as a Caffe NetParameter)"
        ) from None
    if v2_spans and v1_spans:
        raise FormatError(
            f"{source}: mixes V2 `layer` and V1 `layers` entries, which Caffe refuses"
        )
    if not v2_spans and not v1_spans:
        raise FormatError(f"{source}: holds no layers; not a .caffemodel?")
    layers = []
    for index, (start, end) in enumerate(v2_spans or v1_spans):
        try:
            if v2_spans:
                layers.append(_read_v2_layer(buffer, start, end))
            else:
                layers.append(_read_v1_layer(buffer, start, end))
            layers[-1].span = (start, end)
        except (WireError, DecodeError) as exc:
            raise FormatError(f"{source}: layer #{index + 1} is corrupt ({exc})") from None
        except FormatError as exc:
            raise FormatError(f"{source}: {exc}") from None
    encoding = (
        "V2"
        if v2_spans
        else ("V0" if any(raw.definition.params.get("_v0") for raw in layers) else "V1")
    )
    for raw in layers:
        raw.definition.params.pop("_v0", None)
    net_def = NetDef(
        name=net.name,
        encoding=encoding,
        layers=[raw.definition for raw in layers],
        inputs=caffe_net.net_inputs(net),
    )
    return net_def, layers


def _split_fields(
    buffer: memoryview | bytes, start: int, end: int, blob_field: int
) -> tuple[bytes, list[tuple[int, int]]]:
    rest = bytearray()
    blobs = []
    for number, wire_type, field_start, value_start, value_end in iter_field_spans(
        buffer, start, end
    ):
        if number == blob_field and wire_type == LENGTH_DELIMITED:
            blobs.append((value_start, value_end))
        else:
            rest += buffer[field_start:value_end]
    return bytes(rest), blobs


def _read_v2_layer(buffer: memoryview | bytes, start: int, end: int) -> RawLayer:
    rest, blob_spans = _split_fields(buffer, start, end, V2_BLOBS)
    message = caffe_pb2.LayerParameter.FromString(rest)
    definition = caffe_net.layer_def_from_v2(message)
    return RawLayer(
        definition,
        [_read_blob(buffer, s, e, definition.name, i) for i, (s, e) in enumerate(blob_spans)],
    )


def _read_v1_layer(buffer: memoryview | bytes, start: int, end: int) -> RawLayer:
    rest = bytearray()
    blob_spans: list[tuple[int, int]] = []
    is_v0 = False
    for number, wire_type, field_start, value_start, value_end in iter_field_spans(
        buffer, start, end
    ):
        if number == V1_BLOBS and wire_type == LENGTH_DELIMITED:
            blob_spans.append((value_start, value_end))
        elif number == V1_V0_LAYER and wire_type == LENGTH_DELIMITED:
            is_v0 = True
            inner, inner_blobs = _split_fields(buffer, value_start, value_end, V0_BLOBS)
            blob_spans.extend(inner_blobs)
            rest += encode_length_delimited_header(V1_V0_LAYER, len(inner)) + inner
        else:
            rest += buffer[field_start:value_end]
    message = caffe_pb2.V1LayerParameter.FromString(bytes(rest))
    if is_v0:
        definition = caffe_net.layer_def_from_v0(message)
        definition.params["_v0"] = True
    else:
        definition = caffe_net.layer_def_from_v1(message)
    return RawLayer(
        definition,
        [_read_blob(buffer, s, e, definition.name, i) for i, (s, e) in enumerate(blob_spans)],
    )


def _read_blob(
    buffer: memoryview | bytes, start: int, end: int, layer: str, index: int
) -> np.ndarray:
    legacy: dict[int, int] = {}
    dims: list[int] | None = None
    chunks: dict[str, list[np.ndarray]] = {"f4": [], "f8": []}
    loose: dict[str, list[float]] = {"f4": [], "f8": []}
    for number, wire_type, value, value_end in iter_fields(buffer, start, end):
        if number in (1, 2, 3, 4) and wire_type == VARINT:
            legacy[number] = as_int64(value)
        elif number == 7 and wire_type == LENGTH_DELIMITED:
            dims = []
            for dim_number, dim_wire, dim_value, dim_end in iter_fields(buffer, value, value_end):
                if dim_number != 1:
                    continue
                if dim_wire == LENGTH_DELIMITED:
                    dims.extend(as_int64(v) for v in packed_varints(buffer, dim_value, dim_end))
                elif dim_wire == VARINT:
                    dims.append(as_int64(dim_value))
        elif number in (5, 8):
            kind = "f4" if number == 5 else "f8"
            if wire_type == LENGTH_DELIMITED:
                chunks[kind].append(packed_array(buffer, value, value_end, kind))
            elif wire_type == (FIXED32 if kind == "f4" else 1):
                loose[kind].append(fixed_value(buffer, value, "f" if kind == "f4" else "d"))
    kind = "f8" if chunks["f8"] or loose["f8"] else "f4"
    parts = chunks[kind] + ([np.asarray(loose[kind], dtype="<" + kind)] if loose[kind] else [])
    if not parts:
        data = np.zeros(0, dtype="<" + kind)
    elif len(parts) == 1:
        data = parts[0]
    else:
        data = np.concatenate(parts)
    if legacy:
        shape = tuple(legacy.get(n, 0) for n in (1, 2, 3, 4))
    elif dims is not None:
        shape = tuple(dims)
    else:
        shape = (data.size,)
    if len(shape) > MAX_BLOB_AXES:
        raise FormatError(
            f"layer {layer!r} blob {index}: declares {len(shape)} axes; Caffe allows "
            f"{MAX_BLOB_AXES} at most"
        )
    # Python ints: an int64 product of [2**62, 4] wraps to 0 and would match an empty blob.
    needed = math.prod(shape)
    if any(d < 0 for d in shape) or needed != data.size:
        raise FormatError(
            f"layer {layer!r} blob {index}: shape "
            f"{'x'.join(map(str, shape)) or '()'} needs "
            f"{needed} values but it holds "
            f"{data.size}"
        )
    return data.reshape(shape)
