"""ONNX models through the `onnx` package: initializers read as the package reads them (raw,
typed and external data), each role from the node that consumes it; weights written into a
given model, run by ONNX Runtime as the model they came from; hostile files refused in one
line."""

from __future__ import annotations

import re

import numpy as np
import pytest

import weightconv
from weightconv import cli
from weightconv._util.regions import file_region
from weightconv.errors import MappingError, ShapeError, UsageError
from weightconv.formats import detect
from weightconv.model import Kind

from .cli_refusal import refused
from .conftest import corpus_file

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    return {
        "conv1.weight": normal(4, 3, 3, 3),
        "conv1.bias": normal(4),
        "bn.weight": normal(4),
        "bn.bias": normal(4),
        "bn.running_mean": normal(4),
        "bn.running_var": rng.uniform(0.5, 2, 4).astype(np.float32),
        "prelu.weight": normal(4, 1, 1),
        "fc1.weight": normal(5, 36),  # Gemm transB=1: (out, in)
        "fc1.bias": normal(5),
        "fc2.weight": normal(5, 2),  # Gemm transB=0: (in, out)
        "fc2.bias": normal(2),
        "fc3.weight": normal(2, 3),  # MatMul: (in, out)
        "add.bias": normal(3),  # an Add's operand: no known role
    }


def _model(seed: int = 0, batch: int | str = 1, typed: bool = True) -> onnx.ModelProto:
    """conv1 -> relu -> bn -> prelu -> flatten -> fc1 (Gemm) -> relu -> fc2 (Gemm, transB=0)
    -> fc3 (MatMul) -> add; conv1.bias in float_data, two plain typed initializers."""
    arrays = _arrays(seed)
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items() if n != "conv1.bias"]
    if typed:
        inits.append(
            helper.make_tensor("conv1.bias", TensorProto.FLOAT, [4], arrays["conv1.bias"].tolist())
        )
        half = np.array([0.5, -2.0, 3.25], dtype=np.float16)
        inits.append(helper.make_tensor("half", TensorProto.FLOAT16, [3], half))
        inits.append(helper.make_tensor("shape_const", TensorProto.INT64, [2], [1, -1]))
    else:
        inits.append(numpy_helper.from_array(arrays["conv1.bias"], "conv1.bias"))
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c"], name="/conv1/Conv"),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node(
            "BatchNormalization",
            ["r", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
            ["b"],
            epsilon=1e-3,
        ),
        helper.make_node("PRelu", ["b", "prelu.weight"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["g1"], transB=1),
        helper.make_node("Relu", ["g1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "fc2.weight", "fc2.bias"], ["g2"]),
        helper.make_node("MatMul", ["g2", "fc3.weight"], ["m"]),
        helper.make_node("Add", ["m", "add.bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(_model(), str(path))
    return path


def _expected(path) -> dict[str, np.ndarray]:
    """Every initializer as the onnx package reads it (external data loaded)."""
    model = onnx.load(str(path))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_roles_come_from_the_consuming_nodes(tiny):
    assert detect(tiny).name == "onnx"
    weights = weightconv.load(tiny)
    kinds = {layer.name: (layer.kind, sorted(layer.tensors)) for layer in weights.layers}
    assert kinds == {
        "conv1": (Kind.CONV, ["biases", "weights"]),
        "bn": (Kind.BATCHNORM, ["beta", "gamma", "mean", "variance"]),
        "prelu": (Kind.PRELU, ["alpha"]),
        "fc1": (Kind.DENSE, ["biases", "weights"]),
        "fc2": (Kind.DENSE, ["biases", "weights"]),
        "fc3": (Kind.DENSE, ["weights"]),
        "add.bias": (Kind.OTHER, ["value"]),
        "half": (Kind.OTHER, ["value"]),
        "shape_const": (Kind.OTHER, ["value"]),
    }
    assert weights["fc1"].input_shape == (4, 3, 3)  # from shape inference: Flatten of 4x3x3
    assert weights["fc2"].params["transpose"] and weights["fc3"].params["transpose"]
    assert weights["bn"].params["eps"] == pytest.approx(1e-3)
    assert any("kept as plain tensors: add.bias, half, shape_const" in n for n in weights.notes)


def test_values_equal_what_the_onnx_package_reads(tiny):
    expected = _expected(tiny)
    weights = weightconv.load(tiny)
    ours = {layer.location(role): np.asarray(t) for layer, role, t in weights.tensors()}
    assert sorted(ours) == sorted(expected)
    assert ours["prelu.weight"].shape == (4,)  # the (4, 1, 1) slope, per channel as in Caffe
    ours["prelu.weight"] = ours["prelu.weight"].reshape(4, 1, 1)
    for name, array in expected.items():
        assert ours[name].dtype == array.dtype and np.array_equal(ours[name], array), name


def test_to_pt_keeps_the_layout_as_torch_loads_it(tiny, tmp_path):
    torch = pytest.importorskip("torch")
    weightconv.convert(tiny, tmp_path / "t.pt")
    state = torch.load(tmp_path / "t.pt", weights_only=True)
    expected = _expected(tiny)
    assert np.array_equal(state["conv1.weight"].numpy(), expected["conv1.weight"])
    assert np.array_equal(state["bn.running_var"].numpy(), expected["bn.running_var"])
    assert np.array_equal(state["fc1.weight"].numpy(), expected["fc1.weight"])
    assert np.array_equal(state["fc2.weight"].numpy(), expected["fc2.weight"].T)
    assert np.array_equal(state["fc3.weight"].numpy(), expected["fc3.weight"].T)


def test_canonical_fc_rows_follow_the_inferred_input(tiny):
    canonical = weightconv.inspect_tensor(tiny, "fc1/weights", canonical=True).values
    w = _expected(tiny)["fc1.weight"]
    assert np.array_equal(canonical, w.reshape(5, 4, 3, 3).transpose(0, 2, 3, 1).reshape(5, 36).T)


def test_an_unknown_dense_input_is_asked_for(tmp_path):
    path = tmp_path / "symbolic.onnx"
    model = _model(batch="n")
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"  # spatial size unknown
    onnx.save(model, str(path))
    with pytest.raises(ShapeError, match="dense_inputs=fc1=C,H,W"):
        weightconv.inspect_tensor(path, "fc1/weights", canonical=True)

    def canonical(shape):
        report = weightconv.inspect_tensor(
            path, "fc1/weights", canonical=True, dense_inputs={"fc1": shape}
        )
        return report.values

    stored = _expected(path)["fc1.weight"]
    assert np.array_equal(canonical((36,)), stored.T)
    spatial = stored.reshape(5, 4, 3, 3).transpose(0, 2, 3, 1).reshape(5, 36).T
    assert np.array_equal(canonical((4, 3, 3)), spatial)


# -- external data -------------------------------------------------------------------------------


def _external(tmp_path, location: str = "weights.bin"):
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "ext.onnx"
    onnx.save_model(
        _model(typed=False),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path


def test_external_data_is_mapped_from_its_file(tmp_path):
    path = _external(tmp_path)
    bare = onnx.load(str(path), load_external_data=False)
    assert all(i.data_location == TensorProto.EXTERNAL for i in bare.graph.initializer)
    expected = _expected(path)
    weights = weightconv.load(path)
    for layer, role, tensor in weights.tensors():
        array = np.asarray(tensor)
        wanted = expected[layer.location(role)]
        assert np.array_equal(array.reshape(wanted.shape), wanted)  # the slope read as (C,)
        assert file_region(array) is not None  # a view of the mapped file, not a copy


def _relocated(path, location: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, str(path))


@pytest.mark.parametrize(
    "location, message",
    [
        ("../outside.bin", "outside the model's folder"),
        ("/etc/passwd", "outside the model's folder"),
        ("nosuch.bin", "is missing"),
    ],
)
def test_external_data_outside_the_folder_or_missing_is_refused(tmp_path, location, message):
    path = _external(tmp_path)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4096)
    _relocated(path, location)
    assert message in refused(path, ["inspect", str(path)])


def test_external_data_too_short_is_refused(tmp_path):
    path = _external(tmp_path)
    data = path.parent / "weights.bin"
    data.write_bytes(data.read_bytes()[:100])
    assert "holds 100 bytes" in refused(path, ["inspect", str(path)])


# -- hostile files -------------------------------------------------------------------------------


def test_a_truncated_model_is_refused_in_one_line(tiny):
    data = tiny.read_bytes()
    tiny.write_bytes(data[: len(data) // 2])
    refused(tiny, ["inspect", str(tiny)])


def test_garbage_after_an_onnx_head_is_refused_in_one_line(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x08\x08\x3a" + np.random.default_rng(0).bytes(300))
    refused(path, ["inspect", str(path)])


def test_raw_data_of_the_wrong_size_is_refused(tmp_path):
    model = _model()
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    path = tmp_path / "short.onnx"
    onnx.save(model, str(path))
    assert "raw_data holds" in refused(path, ["inspect", str(path)])


# -- writing into a template ---------------------------------------------------------------------


def _run(path, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_weights_written_into_a_template_compute_as_their_source(tmp_path):
    source, template = tmp_path / "source.onnx", tmp_path / "template.onnx"
    onnx.save(_model(seed=1, typed=False), str(source))
    onnx.save(_model(seed=2, typed=False), str(template))
    npy, out = tmp_path / "source.npy", tmp_path / "out.onnx"
    weightconv.convert(source, npy, skip=["add.bias"])  # canonical layout, fc1 rows H,W,C
    report = weightconv.convert(npy, out, model=template)
    assert report.tensors == 12 and not (tmp_path / "out.onnx.tmp").exists()
    onnx.checker.check_model(onnx.load(str(out)))
    written, wanted = _expected(out), _expected(source)
    for name, array in wanted.items():
        if name != "add.bias":  # not a weight: the template's is kept
            assert np.array_equal(written[name], array), name
    assert np.array_equal(written["add.bias"], _expected(template)["add.bias"])
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 5), dtype=np.float32)
    assert not np.array_equal(_run(template, x), _run(source, x))
    mixed = onnx.load(str(source))  # the source with the template's add.bias: what out must be
    mixed.graph.initializer[-2].CopyFrom(numpy_helper.from_array(written["add.bias"], "add.bias"))
    assert mixed.graph.initializer[-2].name == "add.bias"
    onnx.save(mixed, str(tmp_path / "mixed.onnx"))
    np.testing.assert_array_equal(_run(out, x), _run(tmp_path / "mixed.onnx", x))


def test_writing_onnx_without_a_template_asks_for_one(tiny, tmp_path, capsys):
    with pytest.raises(UsageError, match=r"model=TEMPLATE\.onnx"):
        weightconv.convert(tiny, tmp_path / "o.onnx")
    code = cli.main(["convert", str(tiny), str(tmp_path / "o.onnx"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--model TEMPLATE.onnx" in err and err.count("\n") == 1
    assert not (tmp_path / "o.onnx").exists()


def test_a_layer_or_shape_that_does_not_fit_names_both_sides(tiny, tmp_path):
    source, _ = weightconv.load(tiny).select((), ["add.bias", "half", "shape_const"])
    short, _ = source.select((), ["prelu"])
    with pytest.raises(MappingError, match=r"broke at our layer #3 fc1 .* #3 prelu \(prelu.weight"):
        weightconv.save(short, tmp_path / "o.onnx", model=tiny)
    source["fc3"].tensors["weights"] = np.zeros((2, 4), np.float32)
    with pytest.raises(MappingError, match=r"our layer #6 fc3 .*weights 4x2.*fc3\.weight 2x3"):
        weightconv.save(source, tmp_path / "o.onnx", model=tiny)
    assert not (tmp_path / "o.onnx").exists()


def test_the_cli_verbs_work_for_onnx(tiny, tmp_path, capsys):
    assert cli.main(["inspect", str(tiny), "--json"]) == 0
    assert '"onnx"' in capsys.readouterr().out
    npy = str(tmp_path / "t.npy")
    assert cli.main(["onnx2npy", str(tiny), "-o", npy, "-q"]) == 0
    assert cli.main(["diff", str(tiny), npy]) == 0
    capsys.readouterr()
    plain = ["--skip", "add.bias", "--skip", "half", "--skip", "shape_const"]
    out = str(tmp_path / "back.onnx")
    assert cli.main(["npy2onnx", npy, "-o", out, "--model", str(tiny), *plain, "-q"]) == 0
    assert cli.main(["diff", str(tiny), out, "--skip", "add.bias"]) == 0
    capsys.readouterr()
    assert cli.main(["map", npy, "--model", str(tiny), "--explain", *plain]) == 0
    plan = capsys.readouterr().out
    assert "fc2/weights (2, 5) -> fc2.weight (5, 2): dense (in, out) -> (out, in)" in plan
    assert "conv1/weights (4, 3, 3, 3) -> conv1.weight (4, 3, 3, 3)" in plan


# -- real files ----------------------------------------------------------------------------------


@pytest.mark.corpus
def test_the_pytorch_exported_mnist_model(tmp_path):
    path = corpus_file("onnx/mnist-onnxjs/onnx_model.onnx")
    weights = weightconv.load(path)
    kinds = [layer.kind for layer in weights.weighted_layers()]
    assert kinds.count(Kind.CONV) == 12 and kinds.count(Kind.DENSE) == 1
    expected = _expected(path)
    ours = {layer.location(role): np.asarray(t) for layer, role, t in weights.tensors()}
    assert ours.keys() == expected.keys()
    assert all(np.array_equal(ours[n], a) for n, a in expected.items())
    weightconv.convert(path, tmp_path / "m.npy")  # the Gemm's input is known from the graph


@pytest.mark.corpus
def test_the_keras2onnx_mnist_model(tmp_path):
    path = corpus_file("onnx/onnx-parser/mnist-sm.onnx")
    weights = weightconv.load(path)
    kinds = [layer.kind for layer in weights.weighted_layers()]
    assert kinds.count(Kind.CONV) == 2 and kinds.count(Kind.DENSE) == 2
    expected = _expected(path)
    ours = {layer.location(role): np.asarray(t) for layer, role, t in weights.tensors()}
    assert ours.keys() == expected.keys()
    assert all(np.array_equal(ours[n], a) for n, a in expected.items())
    assert any("kept as plain tensors" in note for note in weights.notes)
    # keras2onnx transposes the blob to N,H,W,C before its Reshape: the row order is asked for
    first, second = [layer for layer in weights.layers if layer.kind == Kind.DENSE]
    assert first.params["follows_spatial"] and first.input_shape is None
    assert second.input_shape == (first.tensors["weights"].shape[1],)
    with pytest.raises(ShapeError, match=re.escape(f"dense_inputs={first.name}=C,H,W")):
        weightconv.convert(path, tmp_path / "m.npy")
    assert not (tmp_path / "m.npy").exists()
