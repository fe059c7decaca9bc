"""An ONNX model parsed without its large initializers' bytes, which stay in the mapped file.

``onnx.load`` parses the whole ModelProto: a 553 MB model costs that much again in protobuf's
memory, and more in the copies ``raw_data`` makes when it is read. Here the model's file is
memory-mapped and walked at the wire level (`weightconv.codecs.protowire`) down to the
graph's initializers: each ``raw_data`` of `HOLLOW_FROM` bytes or more is taken out of the
bytes handed to protobuf and remembered by its initializer's name and place in the file, so
the tensor becomes a read-only view of the mapping (which a writer can copy file to file in
the kernel). Everything else, the graph and the small initializers, is parsed by protobuf
as it is. Protobuf's rules hold: of a field given twice the last counts, and a message field
given twice is merged (the graph's initializers of both are kept).

Example::

    hollow, spans = hollowed(memoryview(mapping))
    model = onnx.ModelProto.FromString(hollow)   # fc6.weight without its raw_data
    spans["fc6.weight"]                           # (offset, length) in the file
"""

from __future__ import annotations

from collections.abc import Collection

from weightconv.codecs.protowire import (
    LENGTH_DELIMITED,
    VARINT,
    encode_length_delimited_header,
    iter_field_spans,
    read_varint,
)

#: ModelProto.graph, GraphProto.initializer and TensorProto's data_type, name and raw_data
#: (onnx.proto).
MODEL_GRAPH, GRAPH_INITIALIZER = 7, 5
TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_RAW_DATA = 2, 8, 9
#: raw_data from this size on is left in the file.
HOLLOW_FROM = 64 << 10


def hollowed(
    buffer: memoryview | bytes, codes: Collection[int]
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The model's bytes without the large ``raw_data`` of its graph's initializers whose
    data_type is one of `codes` (those the caller reads), and the (offset, length) of each
    such ``raw_data`` in `buffer`, by initializer name."""
    spans: dict[str, tuple[int, int]] = {}
    out = bytearray()
    for number, wire_type, field_start, start, end in iter_field_spans(buffer):
        if number == MODEL_GRAPH and wire_type == LENGTH_DELIMITED:
            graph = _graph(buffer, start, end, codes, spans)
            out += encode_length_delimited_header(MODEL_GRAPH, len(graph)) + graph
        else:
            out += buffer[field_start:end]
    return bytes(out), spans


def _graph(
    buffer: memoryview | bytes,
    start: int,
    end: int,
    codes: Collection[int],
    spans: dict[str, tuple[int, int]],
) -> bytes:
    out = bytearray()
    for number, wire_type, field_start, value_start, value_end in iter_field_spans(
        buffer, start, end
    ):
        if number == GRAPH_INITIALIZER and wire_type == LENGTH_DELIMITED:
            tensor = _tensor(buffer, value_start, value_end, codes, spans)
            out += encode_length_delimited_header(GRAPH_INITIALIZER, len(tensor)) + tensor
        else:
            out += buffer[field_start:value_end]
    return bytes(out)


def _tensor(
    buffer: memoryview | bytes,
    start: int,
    end: int,
    codes: Collection[int],
    spans: dict[str, tuple[int, int]],
) -> bytes:
    fields = list(iter_field_spans(buffer, start, end))
    raw = _last(fields, TENSOR_RAW_DATA, LENGTH_DELIMITED)
    named = _last(fields, TENSOR_NAME, LENGTH_DELIMITED)
    typed = _last(fields, TENSOR_DATA_TYPE, VARINT)
    code = read_varint(buffer, typed[0], end)[0] if typed else None
    if raw is None or raw[1] - raw[0] < HOLLOW_FROM or named is None or code not in codes:
        return bytes(buffer[start:end])
    try:
        name = bytes(buffer[named[0] : named[1]]).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(buffer[start:end])  # protobuf says what it makes of such a name
    if name in spans:
        return bytes(buffer[start:end])  # a second initializer of that name: refused later
    spans[name] = (raw[0], raw[1] - raw[0])
    out = bytearray()
    for number, wire_type, field_start, _, value_end in fields:
        if (number, wire_type) != (TENSOR_RAW_DATA, LENGTH_DELIMITED):
            out += buffer[field_start:value_end]
    return bytes(out)


def _last(
    fields: list[tuple[int, int, int, int, int]], number: int, wire_type: int
) -> tuple[int, int] | None:
    """The value span of the last field `number` of `wire_type` (protobuf keeps the last)."""
    found = [(s, e) for n, w, _, s, e in fields if (n, w) == (number, wire_type)]
    return found[-1] if found else None
