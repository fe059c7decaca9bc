"""Keras is the judge of our Keras HDF5 files, both ways.

- Reading: every file Keras 3 writes (``.weights.h5``, ``.keras``, legacy weights-only and
  full-model ``.h5``, with optimizer state) and Keras 2 writes (tf_keras ``save_weights`` and
  ``model.save``) lists exactly the datasets h5py sees and reads bit-identically to the
  weights Keras holds, under the layer names Keras uses.
- Writing: Keras 3 (and Keras 2) load every file we write, in both layouts, into the real
  models, which then compute the same outputs as the models whose weights were set
  directly; given the model, our ``.weights.h5`` is byte for byte the one Keras writes.
- Inspecting lists every dataset h5py sees, optimizer state set aside as such; a mapping's
  renames are the layer names h5py finds in what we write; ``.keras`` is never written.

Keras runs only in subprocesses (tests/keras_oracle.py); this process never imports it.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import weightconv
from weightconv import formats
from weightconv.cli import main
from weightconv.errors import FormatError, MappingError, OutputExistsError, ShapeError, UsageError
from weightconv.formats.caffe import hdf5 as caffe_h5
from weightconv.formats.keras_h5 import format as keras_h5
from weightconv.model import CANONICAL, Kind, Layer, WeightSet
from weightconv.testing import synthetic

from .conftest import corpus_file
from .keras_oracle import KERAS2_MODELS, MODELS, digest, load_source, run_oracle

ROLE_OF_VARIABLE = {"kernel": "weights", "bias": "biases"}
KIND_OF_CLASS = {"Conv2D": Kind.CONV, "Dense": Kind.DENSE, "BatchNormalization": Kind.BATCHNORM}
KERAS3_FILES = ("weights_h5", "keras", "legacy_h5", "full_h5")
#: Files that say each layer's class: by config, or by Keras 3's class-named paths.
CLASS_KNOWN = ("weights_h5", "plain_weights_h5", "keras", "full_h5", "k2full_h5")
#: Files with a config, which settles every role (BatchNormalization(center=False) has 3
#: variables: from its path alone, gamma-or-beta is undecidable and they read as var0..2).
CONFIG_KNOWN = ("keras", "full_h5", "k2full_h5")


def _parallel(*calls: tuple[Any, ...]) -> list[Any]:
    """Run oracle calls at once (each is mostly Keras's import time); a skip or failure comes
    back as the exception object instead of a result."""

    def call(args: tuple[Any, ...]) -> Any:
        function, *rest = args
        try:
            return function(*rest)
        except (pytest.skip.Exception, AssertionError) as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(call, calls))


def _result(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Files Keras 3 and Keras 2 wrote, with their manifests (Keras 2: the exception that
    skipped or failed it, raised by the tests that need it)."""
    root = tmp_path_factory.mktemp("keras_saved")
    keras3, keras2 = _parallel(
        (run_oracle, "save", root / "k3"),
        (lambda d: run_oracle("save2", d, keras2=True), root / "k2"),
    )
    return {"keras3": _result(keras3), "keras2": keras2}


def _keras2(saved: dict[str, Any]) -> dict[str, Any]:
    return _result(saved["keras2"])


def _expected_role(record: dict[str, Any], variable: dict[str, Any]) -> str:
    short = variable["name"].split("/")[-1].split(":")[0]
    if record["class"] == "DepthwiseConv2D" and short == "kernel":  # Keras 3's name for it
        return "depthwise_kernel"
    return ROLE_OF_VARIABLE.get(short, short)


def _source_weights(entry: dict[str, Any]) -> WeightSet:
    """The seeded arrays the oracle set into the model, as a WeightSet built here (no
    reader involved): roles from the Keras variable names."""
    arrays = load_source(entry["source_npz"])
    layers = []
    for record in entry["source_layers"]:
        if not record["weights"]:
            continue
        tensors = {
            _expected_role(record, v): arrays[f"{record['name']}/{i}"]
            for i, v in enumerate(record["weights"])
        }
        layers.append(
            Layer(
                record["name"],
                KIND_OF_CLASS.get(record["class"], Kind.OTHER),
                tensors,
                layout=CANONICAL,
            )
        )
    return WeightSet(layers=layers)


def _check_read(
    path: str, listing: dict[str, Any], records: list[dict[str, Any]], kind: str
) -> WeightSet:
    """Our read of `path` against h5py's listing of it and the weights Keras holds."""
    assert formats.detect(path).name == "keras-h5"
    ws = keras_h5.read(path)
    detail = ws.source.detail
    # exactly the datasets h5py sees: model tensors, optimizer state, nothing else
    ours = keras_h5.list_datasets(path)
    assert sorted(ours["weights"] + ours["optimizer"]) == sorted(listing["datasets"])
    assert ours["unlisted"] == []
    assert detail["optimizer_tensors"] == len(ours["optimizer"])
    assert bool(ours["optimizer"]) == any("optimizer tensors" in note for note in ws.notes)
    tensors = list(ws.tensors())
    assert len(tensors) == len(ours["weights"])
    for (layer, role, tensor), dataset in zip(tensors, ours["weights"], strict=True):
        assert digest(np.asarray(tensor)) == listing["datasets"][dataset]["sha256"], (
            layer.name,
            role,
            dataset,
        )
    weighted = [r for r in records if r["weights"]]
    ours = ws.weighted_layers()
    assert [layer.name for layer in ours] == [r["name"] for r in weighted]
    for layer, record in zip(ours, weighted, strict=True):
        tensors = list(layer.tensors.items())
        assert len(tensors) == len(record["weights"]), layer.name
        for (role, tensor), variable in zip(tensors, record["weights"], strict=True):
            array = np.asarray(tensor)
            assert list(array.shape) == variable["shape"], (layer.name, role)
            assert array.dtype.name == variable["dtype"], (layer.name, role)
            assert digest(array) == variable["sha256"], (layer.name, role)
            if kind in CONFIG_KNOWN or (kind in CLASS_KNOWN and not role.startswith("var")):
                assert role == _expected_role(record, variable), (layer.name, role)
        if kind in CLASS_KNOWN:
            assert layer.source_type == record["class"]
            assert layer.kind == KIND_OF_CLASS.get(record["class"], layer.kind)
    if detail["layout"] == "keras3":  # weightless layers too, all in the model's order
        assert ws.names() == [r["name"] for r in records]
    return ws


# 1. We read what Keras writes --------------------------------------------------------------


@pytest.mark.oracle
@pytest.mark.parametrize(
    ("model", "kind"),
    [*((m, k) for m in MODELS for k in KERAS3_FILES), ("alexnet", "plain_weights_h5")],
)
def test_we_read_every_file_keras3_writes(saved, model, kind):
    entry = saved["keras3"]["models"][model]
    file = entry["files"][kind]
    records = entry["source_layers"] if kind == "plain_weights_h5" else entry["layers"]
    ws = _check_read(file["path"], file, records, kind)
    if kind == "keras":
        assert ws.source.detail["has_config"]
    if kind == "weights_h5" and model == "branchy":
        assert list(ws["bn2"].tensors) == ["var0", "var1", "var2"]
    if kind == "legacy_h5" and model == "branchy":
        # no config, and Keras 3 names a depthwise kernel "kernel": read as a convolution
        assert list(ws["dw"].tensors) == ["weights", "biases"]
        assert any("no model_config" in note for note in ws.notes)


@pytest.mark.oracle
@pytest.mark.parametrize("model", KERAS2_MODELS)
@pytest.mark.parametrize("kind", ["k2_h5", "k2full_h5"])
def test_we_read_every_file_keras2_writes(saved, model, kind):
    entry = _keras2(saved)["models"][model]
    file = entry["files"][kind]
    ws = _check_read(file["path"], file, entry["layers"], kind)
    layer = ws["conv1" if model == "alexnet" else "c1"]
    assert layer.locations["weights"].endswith("/kernel:0")  # as weight_names spell it
    assert layer.tensor_name("weights").endswith("/kernel")  # Keras's variable path
    if model == "branchy":  # Keras 2 calls it depthwise_kernel, so no config is needed
        assert list(ws["dw"].tensors) == ["depthwise_kernel", "biases"]
    if model == "alexnet" and kind == "k2full_h5":
        assert ws.source.detail["optimizer_tensors"] and ws["conv2"].params["group"] == 2


def _strip_name_attrs(source: Path, target: Path) -> None:
    """Copy a .weights.h5, or a .keras with its model.weights.h5, without the layer names
    Keras 3 keeps in the vars groups' "name" attributes."""

    def strip(h5: Any) -> None:
        with h5py.File(h5, "r+") as handle:
            handle.visititems(
                lambda _, obj: obj.attrs.__delitem__("name") if "name" in obj.attrs else None
            )

    if source.suffix != ".keras":
        shutil.copyfile(source, target)
        strip(target)
        return
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename == "model.weights.h5":
                buffer = io.BytesIO(data)
                strip(buffer)
                data = buffer.getvalue()
            out.writestr(info, data)


@pytest.mark.oracle
@pytest.mark.parametrize("model", ["alexnet", "nested"])
def test_layer_names_from_config_or_paths_when_the_file_names_none(saved, model, tmp_path):
    entry = saved["keras3"]["models"][model]
    archive = tmp_path / f"{model}.keras"
    _strip_name_attrs(Path(entry["files"]["keras"]["path"]), archive)
    ws = keras_h5.read(archive)  # names from config.json
    weighted = [r["name"] for r in entry["layers"] if r["weights"]]
    assert [layer.name for layer in ws.weighted_layers()] == weighted
    plain = tmp_path / f"{model}.weights.h5"
    _strip_name_attrs(Path(entry["files"]["weights_h5"]["path"]), plain)
    ws = keras_h5.read(plain)  # names are the paths, still in the model's order
    paths = [
        d[: -len("/vars/0")]
        for d in keras_h5.list_datasets(plain)["weights"]
        if d.endswith("/vars/0")
    ]
    assert sorted(paths) == sorted(
        d[: -len("/vars/0")]
        for d in entry["files"]["weights_h5"]["datasets"]
        if d.startswith("layers/") and d.endswith("/vars/0")
    )
    assert [layer.name for layer in ws.weighted_layers()] == [
        p.replace("layers/", "") for p in paths
    ]
    classes = [r["class"] for r in entry["layers"] if r["weights"]]
    assert [layer.source_type for layer in ws.weighted_layers()] == classes


@pytest.mark.oracle
def test_stored_names_spell_the_file(saved):
    """A tensor's location is where the file keeps it (the dataset path); its name is Keras's
    variable path (``layer/kernel``), what a conversion names it."""
    files = saved["keras3"]["models"]["branchy"]["files"]
    ws = keras_h5.read(files["weights_h5"]["path"])
    assert ws["dw"].location("depthwise_kernel") == "layers/depthwise_conv2d/vars/0"
    assert ws["dw"].tensor_name("depthwise_kernel") == "dw/depthwise_kernel"
    ws = keras_h5.read(files["full_h5"]["path"])
    assert ws["dw"].tensor_name("depthwise_kernel") == "dw/kernel"
    assert ws["dw"].location("depthwise_kernel") == "model_weights/dw/dw/kernel"
    assert ws["bn1"].tensor_name("moving_mean") == "bn1/moving_mean"


@pytest.mark.oracle
def test_snake_case_names_are_keras_names(saved):
    for class_name, snake in saved["keras3"]["snake_names"].items():
        assert keras_h5.snake_case(class_name) == snake, class_name


@pytest.mark.oracle
def test_keras_files_are_not_caffe_snapshots(saved, tmp_path):
    for entry in saved["keras3"]["models"].values():
        for kind in ("weights_h5", "legacy_h5", "full_h5"):
            path = Path(entry["files"][kind]["path"])
            assert not caffe_h5.sniff(path.read_bytes()[:4096], path), path


def _caffe_snapshot(path: Path) -> Path:
    with h5py.File(path, "w") as handle:
        handle["data/conv1/0"] = np.ones((4, 3, 3, 3), np.float32)
        handle["data/conv1/1"] = np.zeros(4, np.float32)
        handle["data/fc/0"] = np.ones((2, 36), np.float32)
    return path


def test_caffe_snapshots_are_not_keras(tmp_path):
    path = _caffe_snapshot(tmp_path / "net.h5")
    head = path.read_bytes()[:4096]
    assert not keras_h5.sniff(head, path)
    assert formats.detect(path).name == "caffe-h5"


@pytest.mark.corpus
def test_corpus_digits_weights():
    path = corpus_file("keras/digits.weights.h5")
    assert formats.detect(path).name == "keras-h5"
    ws = keras_h5.read(path)
    dense = ws.weighted_layers()
    assert [(layer.name, layer.kind) for layer in dense] == [
        ("dense", Kind.DENSE),
        ("dense_1", Kind.DENSE),
        ("dense_2", Kind.DENSE),
    ]
    assert [tuple(layer.tensors["weights"].shape) for layer in dense] == [
        (784, 128),
        (128, 64),
        (64, 10),
    ]
    assert [tuple(layer.tensors["biases"].shape) for layer in dense] == [(128,), (64,), (10,)]
    assert ws.names()[0] == "flatten" and not ws["flatten"].tensors
    assert len(keras_h5.list_datasets(path)["optimizer"]) == 14
    assert any("left out 14 optimizer tensors" in note for note in ws.notes)
    listing = keras_h5.list_datasets(path)
    assert listing["weights"] == [
        f"layers/{n}/vars/{i}" for n in ("dense", "dense_1", "dense_2") for i in (0, 1)
    ]
    with h5py.File(path, "r") as handle:  # the values are h5py's, bit for bit
        for (_, _, tensor), dataset in zip(ws.tensors(), listing["weights"], strict=True):
            assert digest(np.asarray(tensor)) == digest(handle[dataset][()])


# 2. Keras loads what we write --------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(saved, tmp_path_factory):
    """Our files from each model's seeded source weights, in both layouts, with and without
    the model; Keras 3 loads all, Keras 2 the keras2 ones: (jobs, Keras 3, Keras 2)."""
    root = tmp_path_factory.mktemp("keras_written")
    jobs: list[dict[str, Any]] = []
    for name, entry in saved["keras3"]["models"].items():
        source = _source_weights(entry)
        config = root / f"{name}.config.json"
        config.write_text(json.dumps(entry["config"]))
        variants = [
            ("keras3", None),
            ("keras3", entry["files"]["keras"]["path"]),
            ("keras3", str(config)),
            ("keras2", None),
            ("keras2", entry["files"]["full_h5"]["path"]),
        ]
        for layout, model in variants:
            derived = model is None
            if derived and name == "nested" and layout == "keras2":
                continue  # a flat derived model and the nested one differ in layer count
            tag = "derived" if derived else Path(model).name.split(".", 1)[1].replace(".", "_")
            suffix = ".weights.h5" if layout == "keras3" else ".h5"
            path = root / f"{name}.{layout}.{tag}{suffix}"
            summary = keras_h5.write(source, path, keras_layout=layout, model=model)
            jobs.append(
                {
                    "model": name,
                    "file": str(path),
                    "layout": layout,
                    "derived": derived,
                    "summary": summary.to_dict(),
                    "expect_error": derived and name == "nested",
                }
            )
    jobs_file = root / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    keras2_jobs = [job for job in jobs if job["layout"] == "keras2" and job["model"] != "halfs"]
    jobs2_file = root / "jobs2.json"
    jobs2_file.write_text(json.dumps(keras2_jobs))
    keras3, keras2 = _parallel(
        (run_oracle, "load", jobs_file), (lambda f: run_oracle("load2", f, keras2=True), jobs2_file)
    )
    return jobs, _result(keras3), keras2


def _check_loaded(result: dict[str, Any], entry: dict[str, Any]) -> None:
    assert "error" not in result, result["error"]
    expected = np.array(entry["outputs"]["values"])
    outputs = np.array(result["outputs"]["values"])
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=1e-6)
    arrays = load_source(entry["source_npz"])
    loaded = [r for r in result["layers"] if r["weights"]]
    assert [r["name"] for r in loaded] == [
        r["name"] for r in entry["source_layers"] if r["weights"]
    ]
    for record in loaded:
        for i, variable in enumerate(record["weights"]):
            assert variable["sha256"] == digest(arrays[f"{record['name']}/{i}"]), (
                result["file"],
                record["name"],
                i,
            )


@pytest.mark.oracle
@pytest.mark.parametrize("model", MODELS)
def test_keras3_loads_what_we_write(saved, loaded, model):
    jobs, keras3, _ = loaded
    entry = saved["keras3"]["models"][model]
    checked = 0
    for job, result in zip(jobs, keras3["results"], strict=True):
        if job["model"] != model:
            continue
        assert result["file"] == job["file"]
        if job["expect_error"]:  # the control: Keras does refuse a file that does not fit
            assert "error" in result, job["file"]
            continue
        _check_loaded(result, entry)
        checked += 1
    assert checked >= 3


@pytest.mark.oracle
@pytest.mark.parametrize("model", KERAS2_MODELS)
def test_keras2_loads_what_we_write(saved, loaded, model):
    _, _, keras2 = loaded
    results = _result(keras2)["results"]
    entry = saved["keras3"]["models"][model]
    mine = [r for r in results if r["model"] == model]
    assert mine
    for result in mine:
        _check_loaded(result, entry)


@pytest.mark.oracle
@pytest.mark.parametrize("model", MODELS)
def test_given_the_model_we_write_the_bytes_keras_writes(saved, loaded, model):
    jobs, _, _ = loaded
    entry = saved["keras3"]["models"][model]
    reference = entry["files"].get("plain_weights_h5") or entry["files"]["weights_h5"]
    expected = Path(reference["path"]).read_bytes()
    ours = [
        job
        for job in jobs
        if job["model"] == model and job["layout"] == "keras3" and not job["derived"]
    ]
    assert len(ours) == 2  # model from the .keras and from the config JSON
    for job in ours:
        assert Path(job["file"]).read_bytes() == expected, job["file"]


@pytest.mark.oracle
def test_keras2_layout_is_keras_legacy_structure(saved, loaded):
    jobs, _, _ = loaded
    job = next(j for j in jobs if j["model"] == "nested" and j["layout"] == "keras2")
    with h5py.File(job["file"], "r") as handle:
        assert list(handle.attrs["layer_names"]) == ["inner", "tail", "top"]
        assert handle.attrs["keras_version"] == keras_h5.KERAS2_VERSION
        names = list(handle["inner"].attrs["weight_names"])
        # a nested model lists trainable variables first, as Keras orders them
        assert names == [
            "c1/kernel:0",
            "c1/bias:0",
            "bn1/gamma:0",
            "bn1/beta:0",
            "head/kernel:0",
            "head/bias:0",
            "bn1/moving_mean:0",
            "bn1/moving_variance:0",
        ]
        assert list(handle["top_level_model_weights"].attrs["weight_names"]) == []


# 3. Ours -> ours ------------------------------------------------------------------------------


@pytest.mark.oracle
@pytest.mark.parametrize("layout", ["keras3", "keras2"])
@pytest.mark.parametrize("with_model", [False, True])
def test_round_trip(saved, tmp_path, layout, with_model):
    entry = saved["keras3"]["models"]["branchy"]
    source = _source_weights(entry)
    path = tmp_path / ("out.weights.h5" if layout == "keras3" else "out.h5")
    model = entry["files"]["keras"]["path"] if with_model else None
    summary = keras_h5.write(source, path, keras_layout=layout, model=model)
    assert summary.layers == len(source.weighted_layers())
    assert summary.parameters == source.parameter_count
    assert summary.bytes == path.stat().st_size
    back = keras_h5.read(path)
    assert [layer.name for layer in back.weighted_layers()] == source.names()
    for layer in source:
        ours = back[layer.name]
        roles = list(layer.tensors)
        if layout == "keras3" and layer.name == "bn2":  # no config: gamma-or-beta undecided
            roles = ["var0", "var1", "var2"]
        assert list(ours.tensors) == roles
        assert ours.kind == layer.kind or layer.kind == Kind.OTHER
        for role, array in zip(roles, layer.tensors.values(), strict=True):
            assert digest(np.asarray(ours.tensors[role])) == digest(array), (layer.name, role)


@pytest.mark.oracle
def test_bfloat16_round_trip(saved, tmp_path):
    source = _source_weights(saved["keras3"]["models"]["halfs"])
    keras_h5.write(source, tmp_path / "h.weights.h5")
    back = keras_h5.read(tmp_path / "h.weights.h5")
    assert np.asarray(back["hb"].tensors["weights"]).dtype.name == "bfloat16"
    assert np.asarray(back["hf"].tensors["weights"]).dtype == np.float16
    summary = keras_h5.write(source, tmp_path / "h.h5", keras_layout="keras2")
    assert any("bfloat16" in note for note in summary.notes)
    widened = np.asarray(keras_h5.read(tmp_path / "h.h5")["hb"].tensors["weights"])
    assert widened.dtype == np.float32
    np.testing.assert_array_equal(
        widened, np.asarray(source["hb"].tensors["weights"], dtype=np.float32)
    )


def test_long_name_lists_are_split_like_keras(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"layer_{i:03d}_" + "x" * 200 for i in range(400)]  # 400 x 208 B > 64512 B
    ws = WeightSet([Layer(n, Kind.DENSE, {"weights": rng.standard_normal((2, 2))}) for n in names])
    keras_h5.write(ws, tmp_path / "long.h5", keras_layout="keras2")
    with h5py.File(tmp_path / "long.h5", "r") as handle:
        assert "layer_names" not in handle.attrs
        parts = [list(handle.attrs[f"layer_names{i}"]) for i in range(2)]
        assert "layer_names2" not in handle.attrs and [len(p) for p in parts] == [200, 200]
    assert keras_h5.read(tmp_path / "long.h5").names() == names


# 5. Bad input ---------------------------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.oracle
def test_truncated_file(saved, tmp_path):
    data = Path(saved["keras3"]["models"]["alexnet"]["files"]["weights_h5"]["path"]).read_bytes()
    path = tmp_path / "cut.weights.h5"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError) as exc:
        formats.detect(path).read(path)
    assert str(path) in _one_line(exc) and "truncated" in str(exc.value)


def test_hdf5_that_is_neither_keras_nor_caffe(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as handle:
        handle["measurements/x"] = np.arange(5.0)
        handle.attrs["instrument"] = "probe"
    head = path.read_bytes()[:4096]
    assert not keras_h5.sniff(head, path) and not caffe_h5.sniff(head, path)
    with pytest.raises(FormatError) as exc:
        keras_h5.read(path)
    assert str(path) in _one_line(exc) and "not Keras weights" in str(exc.value)


@pytest.mark.oracle
def test_weight_names_pointing_at_a_missing_dataset(saved, tmp_path):
    path = tmp_path / "broken.h5"
    shutil.copyfile(saved["keras3"]["models"]["alexnet"]["files"]["legacy_h5"]["path"], path)
    with h5py.File(path, "r+") as handle:
        missing = list(handle["fc7"].attrs["weight_names"])[1]
        del handle["fc7"][missing]
    with pytest.raises(FormatError) as exc:
        keras_h5.read(path)
    message = _one_line(exc)
    assert "'fc7'" in message and missing in message and str(path) in message


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.oracle
def test_shape_that_does_not_fit_the_model(saved, tmp_path):
    entry = saved["keras3"]["models"]["alexnet"]
    model = entry["files"]["keras"]["path"]
    out = tmp_path / "out"
    out.mkdir()
    source = _source_weights(entry)
    source["fc8"].tensors["weights"] = source["fc8"].tensors["weights"][:, :9]
    with pytest.raises(ShapeError) as exc:
        keras_h5.write(source, out / "a.weights.h5", model=model)
    assert "fc8/weights" in _one_line(exc) and "(64, 10)" in str(exc.value)
    assert "(64, 9)" in str(exc.value)
    source = _source_weights(entry)  # input channels come from the model's build config
    source["conv1"].tensors["weights"] = np.zeros((11, 11, 4, 16), np.float32)
    with pytest.raises(ShapeError) as exc:
        keras_h5.write(source, out / "a.h5", model=model, keras_layout="keras2")
    assert "conv1/weights" in _one_line(exc) and "(11, 11, 3, 16)" in str(exc.value)
    assert _leftovers(out) == []


@pytest.mark.oracle
def test_missing_and_extra_layers(saved, tmp_path):
    entry = saved["keras3"]["models"]["alexnet"]
    model = entry["files"]["keras"]["path"]
    source = _source_weights(entry)
    fewer = WeightSet([layer for layer in source if layer.name != "fc7"])
    with pytest.raises(MappingError) as exc:
        keras_h5.write(fewer, tmp_path / "a.weights.h5", model=model)
    assert "'fc7'" in _one_line(exc)
    more = WeightSet([*source.layers, Layer("fc9", Kind.DENSE, {"weights": np.ones((10, 2))})])
    with pytest.raises(MappingError) as exc:
        keras_h5.write(more, tmp_path / "a.weights.h5", model=model)
    assert "fc9" in _one_line(exc)
    assert _leftovers(tmp_path) == []


def test_writer_refusals(tmp_path):
    ws = WeightSet(
        [
            Layer(
                "fc",
                Kind.DENSE,
                {"weights": np.ones((3, 2), np.float32), "biases": np.zeros(2, np.float32)},
            )
        ]
    )
    with pytest.raises(UsageError) as exc:
        keras_h5.write(ws, tmp_path / "w.h5", keras_layout="keras3")  # needs .weights.h5
    assert "w.weights.h5" in _one_line(exc)
    with pytest.raises(UsageError):
        keras_h5.write(ws, tmp_path / "w.weights.h5", keras_layout="keras2")
    with pytest.raises(UsageError):
        keras_h5.write(ws, tmp_path / "w.keras")
    keras_h5.write(ws, tmp_path / "w.weights.h5")
    with pytest.raises(OutputExistsError):
        keras_h5.write(ws, tmp_path / "w.weights.h5")
    keras_h5.write(ws, tmp_path / "w.weights.h5", force=True)
    odd = WeightSet([Layer("prelu", Kind.PRELU, {"alpha": np.ones(3, np.float32)})])
    with pytest.raises(MappingError) as exc:
        keras_h5.write(odd, tmp_path / "p.weights.h5")
    assert "'prelu'" in _one_line(exc)
    bad_bias = WeightSet(
        [
            Layer(
                "fc",
                Kind.DENSE,
                {"weights": np.ones((3, 2), np.float32), "biases": np.zeros(5, np.float32)},
            )
        ]
    )
    with pytest.raises(ShapeError):
        keras_h5.write(bad_bias, tmp_path / "b.weights.h5")
    assert _leftovers(tmp_path) == ["w.weights.h5"]
    # without a layout, the name decides: a plain .h5 is Keras 2's save_weights layout
    (tmp_path / "legacy").mkdir()
    plain = tmp_path / "legacy" / "plain.h5"
    assert keras_h5.write(ws, plain).detail["keras_layout"] == "keras2"
    with h5py.File(plain, "r") as handle:
        assert "layer_names" in handle.attrs and "layers" not in handle


# 6. Everything the file holds is listed; names as mapped; .keras is read only ----------------

#: Where Keras keeps optimizer state: Keras 3 ``optimizer/vars/<i>``, legacy full-model
#: files ``optimizer_weights/...``.
OPTIMIZER_GROUPS = ("optimizer/", "optimizer_weights/")


def _check_inventory(path: str, listing: dict[str, Any]) -> int:
    """`weightconv.inspect` lists exactly the datasets h5py found, each once, with h5py's
    shape and dtype; what it sets aside is the optimizer state. Returns how much that is."""
    inventory = weightconv.inspect(path)
    names = [t.name for t in inventory.tensors]
    assert len(names) == len(set(names))
    assert set(names) == set(listing["datasets"])
    for entry in inventory.tensors:
        dataset = listing["datasets"][entry.name]
        assert list(entry.shape) == dataset["shape"], entry.name
        dtype = dataset["dtype"]
        if dtype == "void16":  # Keras 3's legacy writer: bfloat16 as unmarked opaque data
            dtype = "bfloat16"
        assert entry.dtype == dtype, entry.name
    aside = {t.name: t.status for t in inventory.tensors if t.status != "weights"}
    state = {d for d in listing["datasets"] if d.startswith(OPTIMIZER_GROUPS)}
    assert set(aside) == state
    assert set(aside.values()) <= {keras_h5.OPTIMIZER_STATE}
    assert inventory.totals["set_aside"] == len(state)
    return len(state)


@pytest.mark.oracle
@pytest.mark.parametrize("model", MODELS)
def test_inspect_lists_every_dataset_keras3_writes(saved, model):
    files = saved["keras3"]["models"][model]["files"]
    state = {kind: _check_inventory(file["path"], file) for kind, file in files.items()}
    if model == "alexnet":  # trained one step, so all but the weights-only files hold state
        assert state["plain_weights_h5"] == state["legacy_h5"] == 0
        assert state["weights_h5"] and state["keras"] and state["full_h5"]


@pytest.mark.oracle
@pytest.mark.parametrize("model", KERAS2_MODELS)
def test_inspect_lists_every_dataset_keras2_writes(saved, model):
    files = _keras2(saved)["models"][model]["files"]
    state = {kind: _check_inventory(file["path"], file) for kind, file in files.items()}
    if model == "alexnet":
        assert state["k2full_h5"] and not state["k2_h5"]


@pytest.mark.corpus
def test_corpus_digits_inventory_is_h5py_listing():
    path = corpus_file("keras/digits.weights.h5")
    datasets: dict[str, Any] = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, obj: (
                datasets.__setitem__(name, {"shape": list(obj.shape), "dtype": obj.dtype.name})
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    assert _check_inventory(str(path), {"datasets": datasets}) == 14


def _written_names(path: Path) -> tuple[list[str], list[str]]:
    """(layer names, weight names) as h5py finds them: Keras 2's ``layer_names`` and
    ``weight_names`` attributes, or the ``name`` attributes of Keras 3's vars groups."""
    with h5py.File(path, "r") as handle:
        if "layer_names" in handle.attrs:
            layers = [str(n) for n in handle.attrs["layer_names"]]
            weights = [str(w) for n in layers for w in handle[n].attrs["weight_names"]]
            return layers, weights
        groups: list[str] = []
        handle.visititems(
            lambda name, obj: (
                groups.append(name)
                if isinstance(obj, h5py.Group) and name.endswith("/vars") and "name" in obj.attrs
                else None
            )
        )
        return [str(handle[g].attrs["name"]) for g in groups], []


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("lenet")
    net = synthetic.build("lenet", seed=3)
    model, prototxt = folder / "lenet.caffemodel", folder / "lenet.prototxt"
    net.write_caffemodel(model)
    prototxt.write_text(net.deploy_prototxt)
    return model, prototxt


@pytest.mark.parametrize(
    ("flags", "layers"),
    [
        (["--map", "MAP"], ["c1", "conv2", "ip1", "classifier"]),
        (["--scope", "net/"], ["net/conv1", "net/conv2", "net/ip1", "net/ip2"]),
        (["--names", "keras"], ["conv1", "conv2", "ip1", "ip2"]),
        (
            ["--names", "slim", "--net", "lenet"],
            ["lenet/conv1", "lenet/conv2", "lenet/ip1", "lenet/ip2"],
        ),
    ],
)
def test_mapped_names_are_the_names_written(capsys, tmp_path, lenet, flags, layers):
    """The repro: ``convert lenet.caffemodel ren.h5 --prototxt ... --map ren.toml``."""
    model, prototxt = lenet
    map_file = tmp_path / "ren.toml"
    map_file.write_text(
        '[[rename]]\nfrom = "^conv1/"\nto = "c1/"\n\n'
        '[[rename]]\nfrom = "^ip2/"\nto = "classifier/"\n'
    )
    flags = [str(map_file) if flag == "MAP" else flag for flag in flags]
    k2, k3 = tmp_path / "ren.h5", tmp_path / "ren.weights.h5"
    for target, layout in ((k2, "keras2"), (k3, "keras3")):
        argv = ["convert", model, target, "--prototxt", prototxt, *flags, "--keras-layout", layout]
        assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    capsys.readouterr()
    written, weight_names = _written_names(k2)
    assert written == layers
    assert weight_names == [f"{n}/{v}:0" for n in layers for v in ("kernel", "bias")]
    assert _written_names(k3)[0] == layers
    # and they read back under those names
    assert [layer.name for layer in keras_h5.read(k2).weighted_layers()] == layers
    assert [layer.name for layer in keras_h5.read(k3).weighted_layers()] == layers


def test_a_rename_that_splits_a_layer_is_refused(capsys, tmp_path, lenet):
    model, prototxt = lenet
    map_file = tmp_path / "half.toml"
    map_file.write_text('[[rename]]\nfrom = "^conv1/weights$"\nto = "c1/weights"\n')
    out = tmp_path / "out"
    out.mkdir()
    for target in ("half.weights.h5", "half.h5"):
        code = main(
            [
                "convert",
                str(model),
                str(out / target),
                "--prototxt",
                str(prototxt),
                "--map",
                str(map_file),
                *(["--keras-layout", "keras2"] if target == "half.h5" else []),
            ]
        )
        err = capsys.readouterr().err
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1, err
        assert "'conv1'" in err and "c1/weights" in err and "conv1/biases" in err
    assert _leftovers(out) == []


def test_keras_archives_are_read_but_not_written(capsys, tmp_path):
    source = tmp_path / "x.npy"
    np.save(source, {"fc": {"weights": np.ones((3, 2), np.float32)}}, allow_pickle=True)
    for extra in ([], ["--to", "keras-h5"]):
        code = main(["convert", str(source), str(tmp_path / "out.keras"), *extra])
        err = capsys.readouterr().err
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1, err
        assert "out.keras" in err and ".keras" in err and "read but not written" in err
        assert ".weights.h5" in err and ".h5" in err
    assert _leftovers(tmp_path) == ["x.npy"]
    with pytest.raises(UsageError) as exc:
        formats.for_output(tmp_path / "out.keras")
    assert "keras-h5 writes .weights.h5, .h5, .hdf5" in _one_line(exc)
    with pytest.raises(UsageError) as exc:
        formats.for_output(tmp_path / "out.unknown")
    assert ".keras" not in _one_line(exc) and ".weights.h5" in str(exc.value)
    with pytest.raises(UsageError) as exc:
        keras_h5.check_output(tmp_path / "w.keras", force=True)
    message = _one_line(exc)
    assert "w.weights.h5 (Keras 3)" in message and "w.h5 (Keras 2" in message
    assert formats.for_output(tmp_path / "w.weights.h5").name == "keras-h5"
    assert formats.for_output(tmp_path / "w.h5").name == "keras-h5"


def test_datasets_in_no_keras_place_are_set_aside(tmp_path):
    ws = WeightSet([Layer("fc", Kind.DENSE, {"weights": np.ones((3, 2), np.float32)})])
    path = tmp_path / "w.h5"
    keras_h5.write(ws, path, keras_layout="keras2")
    with h5py.File(path, "r+") as handle:
        handle["extra/stray"] = np.arange(6, dtype=np.int16).reshape(2, 3)
    inventory = weightconv.inspect(path)
    rows = {t.name: t for t in inventory.tensors}
    assert set(rows) == {"fc/fc/kernel:0", "extra/stray"}
    stray = rows["extra/stray"]
    assert (stray.status, stray.shape, stray.dtype, stray.bytes) == (
        keras_h5.OUTSIDE_LAYOUT,
        (2, 3),
        "int16",
        12,
    )
    assert keras_h5.list_datasets(path)["unlisted"] == ["extra/stray"]
    assert any("extra/stray" in note for note in inventory.notes)
