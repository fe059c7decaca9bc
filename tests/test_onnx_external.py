"""ONNX models written with external data: the initializers in a data file beside the model,
as ``onnx.load`` resolves it and ONNX Runtime runs it, checked against the same weights
written inline and against a NumPy forward pass of the source's own arrays; ``auto`` going
external past protobuf's limit (lowered here, not 2 GB written), ``never`` refusing; both files
published together or neither; memory near one tensor while writing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import weightconv
from weightconv import cli
from weightconv._util.regions import file_region
from weightconv.errors import FormatError, OutputExistsError, UsageError

from .test_onnx_format import _expected, _model, _run

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from weightconv.formats.onnx import output  # noqa: E402

MiB = 1 << 20


def _mlp(path, seed: int, width: int = 512, wide: int = 1024) -> None:
    """reshape -> fc1 (Gemm transB=1, 2 MiB) -> relu -> fc2 (Gemm transB=0) -> relu -> fc3
    (MatMul) -> add c: fc1 is aligned to 64 KiB, c (1200 bytes) is the template's own and goes
    out with the weights, the shape constant (16 bytes) stays in the model."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    arrays = {
        "fc1.weight": normal(width, wide),
        "fc1.bias": normal(width),
        "fc2.weight": normal(width, 64),  # (in, out)
        "fc2.bias": normal(64),
        "fc3.weight": normal(64, 300),  # (in, out)
        "c": normal(300),
    }
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["g1"], transB=1),
        helper.make_node("Relu", ["g1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "fc2.weight", "fc2.bias"], ["g2"]),
        helper.make_node("Relu", ["g2"], ["r2"]),
        helper.make_node("MatMul", ["r2", "fc3.weight"], ["m"]),
        helper.make_node("Add", ["m", "c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, wide // 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 300])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _numpy_forward(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    f = x.reshape(1, -1).astype(np.float64)
    r1 = np.maximum(f @ arrays["fc1.weight"].T + arrays["fc1.bias"], 0)
    r2 = np.maximum(r1 @ arrays["fc2.weight"] + arrays["fc2.bias"], 0)
    return r2 @ arrays["fc3.weight"] + arrays["c"]


@pytest.fixture
def mlp(tmp_path):
    """A source and a template of the same MLP with other values."""
    source, template = tmp_path / "source.onnx", tmp_path / "template.onnx"
    _mlp(source, seed=1)
    _mlp(template, seed=2)
    return source, template


def _x(wide: int = 1024) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, 4, wide // 4), dtype=np.float32)


def _convert(source, out, template, **options):
    return weightconv.convert(source, out, model=template, skip=["c", "shape"], **options)


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_always_writes_the_data_file_that_onnx_and_onnxruntime_read(mlp, tmp_path):
    source, template = mlp
    out, inline = tmp_path / "out.onnx", tmp_path / "inline.onnx"
    result = _convert(source, out, template, external_data="always")
    data = tmp_path / "out.onnx.data"
    assert result.files == [str(out), str(data)]
    assert result.bytes == out.stat().st_size + data.stat().st_size
    assert any("initializers' data in out.onnx.data" in note for note in result.notes)
    bare = onnx.load(str(out), load_external_data=False)
    entries = {
        init.name: {e.key: e.value for e in init.external_data} for init in bare.graph.initializer
    }
    assert entries["shape"] == {}  # 16 bytes of the template's own: kept in the model
    wanted = _expected(source)
    end = 0
    for init in bare.graph.initializer:
        if init.name == "shape":
            continue
        entry = entries[init.name]
        assert init.data_location == TensorProto.EXTERNAL and not init.HasField("raw_data")
        assert set(entry) == {"location", "offset", "length"}
        assert entry["location"] == "out.onnx.data"
        offset, length = int(entry["offset"]), int(entry["length"])
        assert length == wanted[init.name].nbytes
        assert offset % (64 << 10 if length >= MiB else 64) == 0, init.name
        end = max(end, offset + length)
    assert int(entries["fc1.weight"]["offset"]) % (64 << 10) == 0
    assert data.stat().st_size == end
    onnx.checker.check_model(str(out))
    written = _expected(out)  # onnx.load reads the data file
    for name, array in wanted.items():
        expected = _expected(template)[name] if name in ("c", "shape") else array
        assert written[name].dtype == expected.dtype and np.array_equal(written[name], expected)
    _convert(source, inline, template)
    assert _names(tmp_path) == [
        "inline.onnx",
        "out.onnx",
        "out.onnx.data",
        "source.onnx",
        "template.onnx",
    ]
    x = _x()
    np.testing.assert_array_equal(_run(out, x), _run(inline, x))
    arrays = {**wanted, "c": _expected(template)["c"]}
    np.testing.assert_allclose(_run(out, x)[0], _numpy_forward(arrays, x)[0], rtol=1e-4, atol=1e-4)


def test_our_reader_maps_the_written_data_file(mlp, tmp_path):
    source, template = mlp
    out = tmp_path / "out.onnx"
    _convert(source, out, template, external_data="always")
    weights = weightconv.load(out)
    fc1 = np.asarray(weights["fc1"].tensors["weights"])
    assert file_region(fc1) is not None
    wanted = {**_expected(source), **{k: _expected(template)[k] for k in ("c", "shape")}}
    ours = {layer.location(role): np.asarray(t) for layer, role, t in weights.tensors()}
    assert ours.keys() == wanted.keys()
    assert all(np.array_equal(ours[name], wanted[name]) for name in wanted)


def test_the_tiny_net_round_trips_through_external_data(tmp_path, monkeypatch):
    source, template = tmp_path / "source.onnx", tmp_path / "template.onnx"
    onnx.save(_model(seed=1, typed=False), str(source))
    onnx.save(_model(seed=2), str(template))  # conv1.bias in float_data, an fp16 constant
    npy, out, inline = tmp_path / "s.npy", tmp_path / "out.onnx", tmp_path / "inline.onnx"
    weightconv.convert(source, npy, skip=["add.bias"])  # canonical: fc1 rows H,W,C
    report = weightconv.convert(npy, out, model=template, external_data="always")
    weightconv.convert(npy, inline, model=template)
    assert report.tensors == 12
    onnx.checker.check_model(str(out))
    written, wanted = _expected(out), _expected(source)
    for name, array in wanted.items():
        if name != "add.bias":
            assert np.array_equal(written[name], array), name
    assert written["half"].dtype == np.float16
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 5), dtype=np.float32)
    np.testing.assert_array_equal(_run(out, x), _run(inline, x))
    monkeypatch.setattr(output, "MAX_BYTES", inline.stat().st_size)  # just fits: inline
    assert weightconv.convert(npy, tmp_path / "fits.onnx", model=template).files == [
        str(tmp_path / "fits.onnx")
    ]
    monkeypatch.setattr(output, "MAX_BYTES", inline.stat().st_size - 1)  # one byte over
    report = weightconv.convert(npy, tmp_path / "over.onnx", model=template)
    assert len(report.files) == 2
    assert f"would be {inline.stat().st_size:,} bytes" in " ".join(report.notes)


def test_auto_writes_a_model_under_the_limit_inline(mlp, tmp_path):
    source, template = mlp
    result = _convert(source, tmp_path / "out.onnx", template)
    assert result.files == [str(tmp_path / "out.onnx")]
    assert result.detail["external_data"] is None
    assert not (tmp_path / "out.onnx.data").exists()
    bare = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    assert all(init.data_location != TensorProto.EXTERNAL for init in bare.graph.initializer)


def test_auto_goes_external_over_the_limit(mlp, tmp_path, monkeypatch):
    source, template = mlp
    inline = tmp_path / "inline.onnx"
    _convert(source, inline, template, external_data="never")
    monkeypatch.setattr(output, "MAX_BYTES", 100_000)
    out = tmp_path / "out.onnx"
    result = _convert(source, out, template)
    assert result.files == [str(out), str(tmp_path / "out.onnx.data")]
    note = next(n for n in result.notes if "over protobuf's 2 GB" in n)
    # the size foreseen is the size protobuf gives the model written inline
    assert f"would be {inline.stat().st_size:,} bytes" in note
    assert out.stat().st_size < 100_000
    x = _x()
    np.testing.assert_array_equal(_run(out, x), _run(inline, x))


def test_never_over_the_limit_is_refused_in_one_line(mlp, tmp_path, monkeypatch, capsys):
    source, template = mlp
    monkeypatch.setattr(output, "MAX_BYTES", 100_000)
    out = tmp_path / "out.onnx"
    with pytest.raises(FormatError) as caught:
        _convert(source, out, template, external_data="never")
    message = str(caught.value)
    assert "\n" not in message and str(out) in message
    assert re.search(r"would be [\d,]+ bytes with its data inline, over protobuf's limit", message)
    assert "100,000" in message and "out.onnx.data" in message
    assert _names(tmp_path) == ["source.onnx", "template.onnx"]
    argv = ["convert", str(source), str(out), "--model", str(template), "--skip", "c"]
    code = cli.main([*argv, "--skip", "shape", "--external-data", "never", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--external-data never refuses" in err
    assert _names(tmp_path) == ["source.onnx", "template.onnx"]


def _external_template(tmp_path: Path, template: Path) -> Path:
    """An MLP template saved by onnx with every initializer in ``t.bin`` beside it."""
    _mlp(tmp_path / "plain.onnx", seed=2)
    onnx.save_model(
        onnx.load(str(tmp_path / "plain.onnx")),
        str(template),
        save_as_external_data=True,
        location="t.bin",
        size_threshold=0,
    )
    return template


def test_a_template_with_external_data_of_its_own(tmp_path):
    folder, elsewhere = tmp_path / "template", tmp_path / "out"
    folder.mkdir()
    elsewhere.mkdir()
    template = _external_template(tmp_path, folder / "t.onnx")
    source = tmp_path / "source.onnx"
    _mlp(source, seed=1)
    kept = _expected(template)
    out, inline = elsewhere / "out.onnx", elsewhere / "inline.onnx"
    _convert(source, out, template, external_data="always")
    _convert(source, inline, template)
    for path, location in ((out, {"out.onnx.data"}), (inline, set())):
        bare = onnx.load(str(path), load_external_data=False)
        assert {
            e.value for i in bare.graph.initializer for e in i.external_data if e.key == "location"
        } == location
        (shape,) = [i for i in bare.graph.initializer if i.name == "shape"]
        assert shape.HasField("raw_data")  # back in the model, where ONNX Runtime reads it
    for child in folder.iterdir():  # the outputs owe the template nothing
        child.unlink()
    folder.rmdir()
    for path in (out, inline):
        onnx.checker.check_model(str(path))
        written = _expected(path)
        assert np.array_equal(written["c"], kept["c"])
        assert np.array_equal(written["shape"], kept["shape"])
        assert np.array_equal(written["fc1.weight"], _expected(source)["fc1.weight"])
    np.testing.assert_array_equal(_run(out, _x()), _run(inline, _x()))


def test_external_data_outside_the_initializers_is_refused(mlp, tmp_path):
    source, _ = mlp
    model = onnx.load(str(tmp_path / "template.onnx"))
    assert model.graph.initializer[-1].name == "shape"
    del model.graph.initializer[-1]  # the shape a Constant node's instead, kept externally
    value = numpy_helper.from_array(np.array([1, -1], np.int64), "shape_value")
    model.graph.node.insert(0, helper.make_node("Constant", [], ["shape"], value=value))
    folder = tmp_path / "constant"
    folder.mkdir()
    template = folder / "t.onnx"
    onnx.save_model(
        model,
        str(template),
        save_as_external_data=True,
        location="t.bin",
        size_threshold=0,
        convert_attribute=True,
    )
    with pytest.raises(FormatError, match=r"'shape_value' keeps its data in an external file"):
        _convert(source, tmp_path / "o.onnx", template, external_data="always")
    assert not (tmp_path / "o.onnx").exists()


def test_a_failure_midway_leaves_neither_file(mlp, tmp_path, monkeypatch):
    source, template = mlp
    put = output.DataFile.put
    calls = []

    def failing(self, initializer, array, advance):
        calls.append(initializer.name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        put(self, initializer, array, advance)

    monkeypatch.setattr(output.DataFile, "put", failing)
    full = r"out\.onnx: cannot be written: the disk is full"
    with pytest.raises(weightconv.WeightconvError, match=full):
        _convert(source, tmp_path / "out.onnx", template, external_data="always")
    assert _names(tmp_path) == ["source.onnx", "template.onnx"]  # no temporaries either
    monkeypatch.undo()

    def invalid(path):
        raise onnx.checker.ValidationError("bad\nmodel")

    monkeypatch.setattr(output.checker, "check_model", invalid)
    for mode in ("always", "never"):
        with pytest.raises(FormatError, match=r"fails onnx\.checker\.check_model: bad model"):
            _convert(source, tmp_path / "out.onnx", template, external_data=mode)
        assert _names(tmp_path) == ["source.onnx", "template.onnx"]


def test_replacing_a_pair_never_leaves_a_model_with_the_other_run_data(mlp, tmp_path, monkeypatch):
    source, template = mlp
    out, data = tmp_path / "out.onnx", tmp_path / "out.onnx.data"
    _convert(source, out, template, external_data="always")
    assert out.exists() and data.exists()
    publish = output.publish

    def failing(temporary, target, *, replace):
        if target == out:
            raise OSError(5, "Input/output error")
        publish(temporary, target, replace=replace)

    monkeypatch.setattr(output, "publish", failing)
    with pytest.raises(OSError):
        _convert(template, out, template, external_data="always", force=True)
    assert _names(tmp_path) == ["source.onnx", "template.onnx"]  # neither: no model, no data


def test_the_data_file_counts_as_part_of_the_output(mlp, tmp_path):
    source, template = mlp
    out, data = tmp_path / "out.onnx", tmp_path / "out.onnx.data"
    data.write_bytes(b"an earlier run's")
    with pytest.raises(OutputExistsError, match=r"out\.onnx\.data: exists .*force=True"):
        _convert(source, out, template)
    with pytest.raises(OutputExistsError, match=r"out\.onnx\.data: exists"):
        _convert(source, out, template, external_data="always")
    assert data.read_bytes() == b"an earlier run's" and not out.exists()
    _convert(source, out, template, external_data="always", force=True)
    first = data.read_bytes()
    assert np.array_equal(_expected(out)["fc1.weight"], _expected(source)["fc1.weight"])
    with pytest.raises(OutputExistsError, match=r"out\.onnx: exists"):
        _convert(template, out, template, external_data="always")
    _convert(template, out, template, external_data="always", force=True)
    assert data.read_bytes() != first and len(data.read_bytes()) == len(first)
    assert np.array_equal(_expected(out)["fc1.weight"], _expected(template)["fc1.weight"])
    result = _convert(source, out, template, force=True)  # inline now: the old data goes
    assert not data.exists() and result.files == [str(out)]
    assert any("removed out.onnx.data" in note for note in result.notes)
    assert np.array_equal(_expected(out)["fc1.weight"], _expected(source)["fc1.weight"])


@pytest.mark.parametrize("mode", ["always", "never"])
def test_an_interrupted_run_s_temporaries_are_removed(mlp, tmp_path, mode):
    source, template = mlp
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = int(done.stdout)
    stale = [tmp_path / f".out.onnx{suffix}.{dead}.0a1b2c3d.partial" for suffix in ("", ".data")]
    for path in stale:
        path.write_bytes(b"half")
    result = _convert(source, tmp_path / "out.onnx", template, external_data=mode)
    assert not any(path.exists() for path in stale)
    assert sum("left in" in note and "interrupted run" in note for note in result.notes) == 2


def test_the_data_file_name_can_be_given(mlp, tmp_path):
    source, template = mlp
    out = tmp_path / "out.onnx"
    result = _convert(source, out, template, external_data_file="weights.bin")  # auto: external
    assert result.files == [str(out), str(tmp_path / "weights.bin")]
    bare = onnx.load(str(out), load_external_data=False)
    locations = {e.value for i in bare.graph.initializer for e in i.external_data}
    assert "weights.bin" in locations and "out.onnx.data" not in locations
    assert np.array_equal(_expected(out)["fc2.weight"], _expected(source)["fc2.weight"])
    for name in ("sub/w.bin", "../w.bin", "a..b", "o2.onnx", ""):
        with pytest.raises(UsageError, match="external_data_file="):
            _convert(source, tmp_path / "o2.onnx", template, external_data_file=name)
    with pytest.raises(UsageError, match="external_data=never writes none"):
        _convert(
            source, tmp_path / "o2.onnx", template, external_data="never", external_data_file="w"
        )
    with pytest.raises(UsageError, match="must be one of auto, always, never"):
        _convert(source, tmp_path / "o2.onnx", template, external_data="sometimes")
    assert not (tmp_path / "o2.onnx").exists()


def test_the_template_data_file_is_not_overwritten(tmp_path):
    source = tmp_path / "source.onnx"
    _mlp(source, seed=1)
    template = _external_template(tmp_path, tmp_path / "t.onnx")
    with pytest.raises(UsageError, match=r"t\.bin: is the template's external data file"):
        _convert(source, tmp_path / "o.onnx", template, external_data_file="t.bin", force=True)
    assert np.array_equal(_expected(template)["c"], _expected(tmp_path / "plain.onnx")["c"])


def test_the_cli_flags(mlp, tmp_path):
    source, template = mlp
    out = tmp_path / "out.onnx"
    argv = ["convert", str(source), str(out), "--model", str(template), "--skip", "c"]
    argv += ["--skip", "shape", "--external-data", "always", "--external-data-file", "w.bin"]
    assert cli.main([*argv, "-q"]) == 0
    assert (tmp_path / "w.bin").exists()
    assert np.array_equal(_expected(out)["fc1.weight"], _expected(source)["fc1.weight"])


# -- memory ------------------------------------------------------------------------------------

SLACK = 32 * MiB
CHILD = textwrap.dedent(
    """
    import sys
    import weightconv, weightconv.cli, onnx, onnx.checker
    from weightconv.formats.onnx import format
    if sys.argv[1] == "convert":
        weightconv.convert(sys.argv[2], sys.argv[3], model=sys.argv[4], external_data="always")
    with open("/proc/self/status") as status:
        print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
    """
)


def _peak(*arguments: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *arguments], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]) * 1024


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """Twelve 8 MiB dense layers, Gemms with transB=1 and 0 in turn: a source .npy and an
    .onnx with external data, and a template with external data of its own."""
    folder = tmp_path_factory.mktemp("onnx_streaming")
    n, count = 1448, 12
    rng = np.random.default_rng(5)
    inits, nodes, previous = [], [], "x"
    for i in range(count):
        w = rng.standard_normal((n, n), dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight")]
        inits += [numpy_helper.from_array(np.zeros(n, np.float32), f"fc{i}.bias")]
        inputs = [previous, f"fc{i}.weight", f"fc{i}.bias"]
        nodes.append(helper.make_node("Gemm", inputs, [f"y{i}"], transB=i % 2))
        previous = f"y{i}"
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, n])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for name in ("source", "template"):
        onnx.save_model(
            model, str(folder / f"{name}.onnx"), save_as_external_data=True, location=f"{name}.bin"
        )
    weightconv.convert(folder / "source.onnx", folder / "source.npy")
    yield {"folder": folder, "largest": n * n * 4, "total": count * n * (n + 1) * 4}
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("source", ["source.npy", "source.onnx"])
def test_writing_external_data_holds_about_one_tensor(large, source, tmp_path):
    folder = large["folder"]
    baseline = _peak("import")
    out = tmp_path / "out.onnx"
    peak = _peak("convert", str(folder / source), str(out), str(folder / "template.onnx"))
    added = peak - baseline
    assert large["total"] > 2 * (large["largest"] + SLACK)
    assert added <= large["largest"] + SLACK, (
        f"{source}: {added / MiB:.0f} MiB over the imports; the largest tensor is "
        f"{large['largest'] / MiB:.0f} MiB, the model {large['total'] / MiB:.0f} MiB"
    )
    assert (tmp_path / "out.onnx.data").stat().st_size >= large["total"]


def test_a_wrong_external_data_choice_is_refused(mlp, tmp_path, capsys):
    source, template = mlp
    out = tmp_path / "out.onnx"
    with pytest.raises(UsageError, match="external_data must be one of auto, always, never"):
        weightconv.convert(source, out, model=template, external_data="sometimes")
    argv = ["convert", str(source), str(out), "--model", str(template)]
    assert cli.main([*argv, "--external-data", "sometimes", "-q"]) == 2
    assert "sometimes" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.onnx.data").exists()
