"""A model written with its initializers' data inline, one tensor at a time.

protobuf encodes a message whole, so a 553 MB model would be made once more in memory, and the
checker's parse of the file would make it again. Here the file is laid out first, from
protobuf's encoding of the model whose initializers that get values are stripped of them;
then each tensor is written at its place, from a mapped input by the kernel where it can::

    [ModelProto without its graph] [graph: key, length]
        [GraphProto without its initializers]
        [initializer: key, length] [TensorProto without raw_data] [raw_data: key, length] bytes
        ...                        (every initializer, in the graph's order)

A message's fields may come in any order and a repeated field keeps its own (protobuf's
encoding), so the file parses as the model the fields describe. It is checked by
``onnx.checker`` through a small model beside it that points at these bytes as external data
(`check`), after the file was parsed back here without them (`weightconv.formats.onnx.wire`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import numpy as np
import onnx
from onnx import TensorProto

from weightconv._util.files import output_errors, remove_files, temporary_beside
from weightconv.codecs.protowire import encode_length_delimited_header
from weightconv.errors import FormatError
from weightconv.formats.onnx import output
from weightconv.formats.onnx.tensors import DTYPES
from weightconv.formats.onnx.wire import GRAPH_INITIALIZER, MODEL_GRAPH, TENSOR_RAW_DATA, hollowed


class Spliced:
    """The sink that writes each initializer named in `sizes` (its bytes) into the model file
    `handle` at the place the layout gives its ``raw_data``; the rest of the file is written
    when it is made. `proto`'s initializers in `sizes` must be stripped (`output.strip`)."""

    def __init__(
        self, handle: IO[bytes], proto: onnx.ModelProto, sizes: Mapping[str, int], where: str
    ) -> None:
        self.handle = handle
        self.where = where
        self.count = 0
        #: Where each initializer's raw_data goes, and its length; `places` until written.
        self.layout: dict[str, tuple[int, int]] = {}
        self.places = self.layout.copy()
        model = onnx.ModelProto()
        model.CopyFrom(proto)
        model.ClearField("graph")
        graph = onnx.GraphProto()
        graph.CopyFrom(proto.graph)
        graph.ClearField("initializer")
        entries: list[tuple[bytes, str | None, int]] = []
        body = len(graph_bytes := graph.SerializeToString())
        for initializer in proto.graph.initializer:
            tensor = initializer.SerializeToString()
            nbytes = sizes.get(initializer.name)
            if nbytes is None:
                head = encode_length_delimited_header(GRAPH_INITIALIZER, len(tensor)) + tensor
                entries.append((head, None, 0))
            else:
                tensor += encode_length_delimited_header(TENSOR_RAW_DATA, nbytes)
                head = encode_length_delimited_header(GRAPH_INITIALIZER, len(tensor) + nbytes)
                entries.append((head + tensor, initializer.name, nbytes))
            body += len(entries[-1][0]) + entries[-1][2]
        start = model.SerializeToString() + encode_length_delimited_header(MODEL_GRAPH, body)
        handle.seek(0)
        handle.write(start + graph_bytes)
        position = len(start) + len(graph_bytes)
        for head, name, nbytes in entries:
            handle.write(head)
            position += len(head)
            if name is not None:
                if name in self.places:
                    raise FormatError(f"{where}: the model has two initializers named {name!r}")
                self.layout[name] = self.places[name] = (position, nbytes)
                position += nbytes
                handle.seek(position)
        self.size = position
        if self.size > output.MAX_BYTES:  # the plan said otherwise: be sure
            raise FormatError(
                f"{where}: the model would be {self.size:,} bytes, over protobuf's 2 GB"
            )
        handle.truncate(self.size)

    def put(self, initializer: TensorProto, array: np.ndarray, advance: output.Advance) -> None:
        output.check_shape(initializer, array)
        offset, nbytes = self.places.pop(initializer.name, (-1, -1))
        little = array.dtype.newbyteorder("<")
        if nbytes != array.size * little.itemsize:  # cannot happen unless the plan is wrong
            raise FormatError(
                f"{self.where}: initializer {initializer.name!r} has no place for "
                f"{array.size * little.itemsize:,} bytes in the model"
            )
        self.handle.seek(offset)
        output.stream(array, little, self.handle, advance)
        if self.handle.tell() != offset + nbytes:  # the file would be corrupt
            raise FormatError(
                f"initializer {initializer.name!r}: wrote {self.handle.tell() - offset:,} of "
                f"{nbytes:,} bytes"
            )
        self.count += 1

    def finish(self) -> int:
        """The model's size, once every initializer has its bytes."""
        if self.places:
            raise FormatError(f"{self.where}: initializer {next(iter(self.places))!r} not written")
        self.handle.flush()
        return self.size


def check(model: Path, target: Path, layout: Mapping[str, tuple[int, int]], where: str) -> None:
    """``onnx.checker.check_model`` of the written `model`: parsed back without its large
    ``raw_data`` (each found where `layout` put it), written beside it as a model whose
    initializers point at those bytes in it as external data, and that model checked (the
    checker follows external data to the file and needs none of it in memory). A location
    may not hold "..": where the model's temporary name does (``..NAME...`` for a NAME that
    starts with a dot), the checker reads the whole model instead."""
    with open(model, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        try:
            hollow, spans = hollowed(view, DTYPES)
            proto = onnx.ModelProto.FromString(hollow)
        except Exception as exc:  # WireError or DecodeError: what a wrong layout would make
            raise FormatError(f"{where}: the written model does not parse ({exc})") from None
        finally:
            view.release()
    del hollow
    for name, span in spans.items():
        if layout.get(name) != span:  # cannot happen unless the layout is wrong
            raise FormatError(
                f"{where}: initializer {name!r}'s data is at {span} in the written model, "
                f"not at {layout.get(name)}"
            )
    if ".." in model.name:
        del proto
        output.check(model, where)
        return
    for initializer in proto.graph.initializer:
        if initializer.name in spans:
            offset, length = spans[initializer.name]
            initializer.data_location = TensorProto.EXTERNAL
            for key, value in (("location", model.name), ("offset", offset), ("length", length)):
                entry = initializer.external_data.add()
                entry.key, entry.value = key, str(value)
    with output_errors(target):
        fd, pointer = temporary_beside(target)
    try:
        with contextlib.closing(os.fdopen(fd, "wb")) as out:
            out.write(proto.SerializeToString())
        output.check(pointer, where)
    finally:
        remove_files([pointer])
