"""ONNX models written with their data inline a tensor at a time (`formats.onnx.inline`): the
file, laid out from protobuf's encoding of its parts, is the model the onnx package makes of
the template with our values in it, and passes the checker read from disk; a wrong layout or
a failed write publishes nothing."""

from __future__ import annotations

import numpy as np
import pytest

import weightconv
from weightconv.errors import FormatError, UsageError

from .test_onnx_wire import BIG, RNG, _model

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from weightconv.formats.onnx import inline, output  # noqa: E402

#: The template's initializers that are not weights: kept as they are.
KEPT = ["under", "typed", "big_const"]


@pytest.fixture
def models(tmp_path):
    """A template (with model fields that protobuf encodes after the graph) and a source of
    the same graph with other values."""
    kept = numpy_helper.from_array(RNG.standard_normal(BIG, dtype=np.float32), "big_const")
    template = _model([kept])
    template.doc_string = "the template"
    helper.set_model_props(template, {"author": "tests", "note": "after the graph"})
    source = onnx.ModelProto()
    source.CopyFrom(template)
    for initializer in source.graph.initializer:
        if initializer.name not in KEPT:
            array = numpy_helper.to_array(initializer)
            other = RNG.standard_normal(array.shape, dtype=np.float32)
            initializer.CopyFrom(numpy_helper.from_array(other, initializer.name))
    paths = tmp_path / "template.onnx", tmp_path / "source.onnx"
    onnx.save(template, str(paths[0]))
    onnx.save(source, str(paths[1]))
    return paths


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_the_model_written_inline_is_the_one_the_onnx_package_makes(models, tmp_path):
    template, source = models
    out = tmp_path / "out.onnx"
    weightconv.convert(source, out, model=template, external_data="never", skip=KEPT)
    expected = onnx.load(str(template))
    values = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(source)).graph.initializer}
    for initializer in expected.graph.initializer:
        if (name := initializer.name) not in KEPT:
            initializer.CopyFrom(numpy_helper.from_array(values[name], name))
    assert onnx.load(str(out)) == expected
    onnx.checker.check_model(str(out), full_check=True)
    assert not (tmp_path / "out.onnx.data").exists()
    assert _names(tmp_path) == ["out.onnx", "source.onnx", "template.onnx"]


def _shifted(sink) -> None:
    """Every raw_data said to be one byte further on than where it was written."""
    sink.layout = {name: (at + 1, n) for name, (at, n) in sink.layout.items()}


def _damaged(sink) -> None:
    """The file's first bytes overwritten."""
    sink.handle.seek(0)
    sink.handle.write(b"\xff\xff")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_shifted, r"out\.onnx: initializer '.*'s data is at"),
        (_damaged, r"out\.onnx: the written model does not parse"),
    ],
)
def test_a_wrong_layout_is_refused_and_nothing_published(
    models, tmp_path, monkeypatch, damage, message
):
    """The written file is parsed back before it is published: a raw_data not where the layout
    put it, or bytes that do not parse, are caught."""
    template, source = models
    finish = inline.Spliced.finish

    def damaging(self):
        size = finish(self)
        damage(self)
        return size

    monkeypatch.setattr(inline.Spliced, "finish", damaging)
    with pytest.raises(FormatError, match=message):
        weightconv.convert(source, tmp_path / "out.onnx", model=template, skip=KEPT)
    assert _names(tmp_path) == ["source.onnx", "template.onnx"]


def test_a_failure_midway_leaves_no_file(models, tmp_path, monkeypatch):
    template, source = models
    put = inline.Spliced.put
    calls = []

    def failing(self, initializer, array, advance):
        calls.append(initializer.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        put(self, initializer, array, advance)

    monkeypatch.setattr(inline.Spliced, "put", failing)
    with pytest.raises(weightconv.WeightconvError, match=r"out\.onnx: cannot be written"):
        weightconv.convert(source, tmp_path / "out.onnx", model=template, skip=KEPT)
    assert _names(tmp_path) == ["source.onnx", "template.onnx"]


@pytest.mark.parametrize("name", [".hidden.onnx", "two..dots.onnx"])
def test_a_name_whose_temporary_holds_two_dots_is_written_and_checked_whole(
    models, tmp_path, monkeypatch, name
):
    """onnx.checker refuses a location holding '..', as the temporary of a hidden model's
    name does: that model is checked as a file, its data read whole by the checker."""
    template, source = models
    checked = []
    check = output.check
    monkeypatch.setattr(
        output, "check", lambda path, where: checked.append(path) or check(path, where)
    )
    weightconv.convert(source, tmp_path / name, model=template, external_data="never", skip=KEPT)
    assert [p.name.startswith(f".{name}.") for p in checked] == [True]
    written = {
        i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / name)).graph.initializer
    }
    expected = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(source)).graph.initializer}
    assert written.keys() == expected.keys()
    assert all(np.array_equal(written[k], expected[k]) for k in expected)
    assert _names(tmp_path) == sorted([name, "source.onnx", "template.onnx"])


def test_a_hidden_data_file_name_is_refused_before_anything_is_written(models, tmp_path):
    template, source = models
    with pytest.raises(
        UsageError, match=r"\.hidden\.onnx\.data starts with '\.'.*external_data_file"
    ):
        weightconv.convert(
            source, tmp_path / ".hidden.onnx", model=template, external_data="always", skip=KEPT
        )
    assert _names(tmp_path) == ["source.onnx", "template.onnx"]
    weightconv.convert(
        source, tmp_path / ".hidden.onnx", model=template, external_data_file="data.bin", skip=KEPT
    )
    assert (tmp_path / "data.bin").exists()
