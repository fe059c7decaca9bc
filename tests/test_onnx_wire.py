"""ONNX models parsed without their large initializers' bytes (`formats.onnx.wire`): what
protobuf makes of the hollowed bytes is the model the onnx package loads with those raw_data
cleared, each raw_data left where the package finds it, under protobuf's rules for repeated
and merged fields; the tensors are views of the mapped model, read as the package reads them."""

from __future__ import annotations

import numpy as np
import pytest

import weightconv
from weightconv.codecs.protowire import encode_length_delimited_header, encode_varint
from weightconv.formats.onnx.tensors import DTYPES
from weightconv.formats.onnx.wire import (
    GRAPH_INITIALIZER,
    HOLLOW_FROM,
    MODEL_GRAPH,
    TENSOR_NAME,
    TENSOR_RAW_DATA,
    hollowed,
)

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNG = np.random.default_rng(3)
BIG = HOLLOW_FROM // 4  # float32 values: a raw_data of exactly HOLLOW_FROM bytes


def _model(extra_initializers: list[TensorProto] | None = None) -> onnx.ModelProto:
    arrays = {
        "fc.weight": RNG.standard_normal((BIG // 16, 16), dtype=np.float32),
        "fc.bias": RNG.standard_normal(BIG // 16, dtype=np.float32),  # small: kept inline
        "under": RNG.standard_normal(BIG - 1, dtype=np.float32),  # one value short of large
    }
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    inits.append(helper.make_tensor("typed", TensorProto.FLOAT, [BIG], np.ones(BIG).tolist()))
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, BIG // 16])],
        initializer=inits + (extra_initializers or []),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _cleared(data: bytes, names: set[str]) -> onnx.ModelProto:
    """The model with the raw_data of the first initializer of each of `names` cleared."""
    model = onnx.ModelProto.FromString(data)
    for initializer in model.graph.initializer:
        if initializer.name in names:
            initializer.ClearField("raw_data")
            names = names - {initializer.name}
    return model


def _check(data: bytes, hollowed_names: set[str]) -> dict[str, tuple[int, int]]:
    hollow, spans = hollowed(data, DTYPES)
    assert set(spans) == hollowed_names
    assert onnx.ModelProto.FromString(hollow) == _cleared(data, hollowed_names)
    full: dict[str, bytes] = {}
    for initializer in onnx.ModelProto.FromString(data).graph.initializer:
        full.setdefault(initializer.name, initializer.raw_data)
    for name, (offset, length) in spans.items():
        assert data[offset : offset + length] == full[name]
    return spans


def test_only_large_raw_data_is_left_out():
    _check(_model().SerializeToString(), {"fc.weight"})


def test_a_field_given_twice_counts_once_its_last_is_read():
    """A TensorProto with raw_data (and name) twice: protobuf keeps the last of each."""
    first = RNG.standard_normal(BIG, dtype=np.float32).tobytes()
    last = RNG.standard_normal(BIG, dtype=np.float32).tobytes()

    def field(number: int, value: bytes) -> bytes:
        return encode_length_delimited_header(number, len(value)) + value

    tensor = (
        b"\x08"
        + encode_varint(BIG)  # dims: [BIG]
        + b"\x10\x01"  # data_type FLOAT
        + field(TENSOR_NAME, b"old")
        + field(TENSOR_RAW_DATA, first)
        + field(TENSOR_NAME, b"twice")
        + field(TENSOR_RAW_DATA, last)
        + b"\xf8\x07\x05"  # an unknown varint field (127): kept
    )
    assert onnx.TensorProto.FromString(tensor).name == "twice"
    model = _model().SerializeToString()
    data = model + field(MODEL_GRAPH, field(GRAPH_INITIALIZER, tensor))  # a second graph: merged
    spans = _check(data, {"fc.weight", "twice"})
    offset, length = spans["twice"]
    assert data[offset : offset + length] == last


def test_an_initializer_named_twice_is_left_whole_and_refused(tmp_path):
    again = numpy_helper.from_array(np.zeros((BIG // 16, 16), np.float32), "fc.weight")
    data = _model([again]).SerializeToString()
    _check(data, {"fc.weight"})
    path = tmp_path / "twice.onnx"
    path.write_bytes(data)
    with pytest.raises(weightconv.FormatError, match=r"two initializers are named 'fc\.weight'"):
        weightconv.load(path)


def test_a_large_tensor_is_a_view_of_the_mapped_model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), str(path))
    expected = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    weights = weightconv.load(path)
    got = {layer.location(role): np.asarray(tensor) for layer, role, tensor in weights.tensors()}
    assert set(got) == set(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array), name
    kernel = got["fc.weight"]
    base = kernel
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert type(getattr(base, "obj", base)).__name__ == "mmap" and not kernel.flags.writeable


def test_a_cut_model_is_refused_in_one_line(tmp_path):
    data = _model().SerializeToString()
    for cut in (3, len(data) // 2, len(data) - 5):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(weightconv.FormatError) as caught:
            weights = weightconv.load(path)
            for _layer, _role, tensor in weights.tensors():
                np.asarray(tensor)
        assert "\n" not in str(caught.value) and path.name in str(caught.value)


@pytest.mark.parametrize("external_data", ["never", "always"])
def test_a_template_parsed_without_its_large_data_keeps_it_in_the_output(tmp_path, external_data):
    """Writing into a template: its large initializers were parsed without their bytes; ours
    replace the weights, and a large one kept (not a weight) gets the template's bytes back,
    inline or in the data file, as the onnx package then reads them."""
    kept = numpy_helper.from_array(RNG.standard_normal(BIG, dtype=np.float32), "big_const")
    template = tmp_path / "template.onnx"
    onnx.save(_model([kept]), str(template))
    _, spans = hollowed(template.read_bytes(), DTYPES)
    assert {"fc.weight", "big_const"} <= set(spans)
    out = tmp_path / "out.onnx"
    kept_names = ["under", "typed", "big_const"]  # not weights: the template's are kept
    weightconv.convert(template, out, model=template, external_data=external_data, skip=kept_names)
    assert (tmp_path / "out.onnx.data").exists() == (external_data == "always")
    written = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    source = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(template)).graph.initializer}
    assert set(written) == set(source)
    for name, array in source.items():
        assert written[name].dtype == array.dtype and np.array_equal(written[name], array), name
