"""The option contract: every option a format declares is applied (it changes what is read or
written) or refused; an option no reader or writer of the run takes is an error, in the API and
on the command line; the library and the CLI give byte-identical outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import weightconv
from weightconv import cli, formats
from weightconv.errors import ShapeError, UnsafeInputError, UsageError
from weightconv.mapping import Mapping
from weightconv.model import CAFFE, Kind, Layer, WeightSet
from weightconv.testing import synthetic

# -- the registry rows --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", formats.FORMATS, ids=lambda f: f.name)
def test_module_signatures_equal_the_declared_options(fmt):
    assert fmt.signature_problems() == []


def _small() -> WeightSet:
    rng = np.random.default_rng(3)
    conv = Layer(
        "conv1",
        Kind.CONV,
        {
            "weights": rng.standard_normal((3, 3, 3, 4), dtype=np.float32),
            "biases": rng.standard_normal(4, dtype=np.float32),
        },
    )
    fc = Layer(
        "fc1",
        Kind.DENSE,
        {
            "weights": rng.standard_normal((36, 5), dtype=np.float32),
            "biases": rng.standard_normal(5, dtype=np.float32),
        },
    )
    return WeightSet(layers=[conv, fc])


# -- unknown options: refused in the API --------------------------------------------------------


def test_load_refuses_a_misspelt_option(tmp_path):
    weightconv.save(_small(), tmp_path / "m.npy")
    with pytest.raises(UsageError, match=r"protottxt.*it takes: trust_pickle"):
        weightconv.load(tmp_path / "m.npy", protottxt="deploy.prototxt")


def test_save_refuses_an_option_its_writer_does_not_take(tmp_path):
    with pytest.raises(UsageError, match=r"'shard'.*shards, max_shard_size, write_state"):
        weightconv.save(_small(), tmp_path / "m.ckpt", shard=4)
    assert list(tmp_path.iterdir()) == []


def test_convert_routes_options_and_refuses_mapping_names_as_options(tmp_path):
    weightconv.save(_small(), tmp_path / "m.npy")
    with pytest.raises(UsageError, match=r"'names'.*neither.*mapping=Mapping"):
        weightconv.convert(tmp_path / "m.npy", tmp_path / "o.ckpt", names="slim", net="lenet")
    assert not (tmp_path / "o.ckpt.index").exists()
    report = weightconv.convert(
        tmp_path / "m.npy",
        tmp_path / "o.ckpt",
        shards=2,
        mapping=Mapping(names="tf1", scope="net/"),
    )
    assert report.options["write"] == {"shards": 2}
    assert report.options["mapping"] == {"names": "tf1", "scope": "net/"}
    assert len(report.files) == 3


def test_wrong_option_types_and_choices_are_refused(tmp_path):
    with pytest.raises(UsageError, match="shards must be int"):
        weightconv.save(_small(), tmp_path / "a.ckpt", shards="4")
    with pytest.raises(UsageError, match="flavour must be one of list, dict, flat"):
        weightconv.save(_small(), tmp_path / "a.npy", flavour="lists")
    assert list(tmp_path.iterdir()) == []


# -- the walk: every declared option changes the result or is refused ---------------------------

KERAS_CONFIG = {
    "class_name": "Sequential",
    "config": {
        "name": "tiny",
        "layers": [
            {
                "class_name": "InputLayer",
                "config": {"name": "input", "batch_shape": [None, 6, 6, 3]},
            },
            {
                "class_name": "Conv2D",
                "config": {"name": "conv1", "filters": 4, "kernel_size": [3, 3], "use_bias": True},
            },
            {"class_name": "Flatten", "config": {"name": "flatten"}},
            {"class_name": "Dense", "config": {"name": "fc1", "units": 5, "use_bias": True}},
        ],
    },
}


def _template(tmp_path: Path, kind: str) -> Path:
    """A target model for _small()'s conv1 and fc1 under other names: a state dict, or an
    ONNX graph (Gemm transB=1 or 0; its input's size known, or not)."""
    folder = tmp_path / "templates"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(8)
    conv, fc = (
        rng.standard_normal((4, 3, 3, 3), np.float32),
        rng.standard_normal((5, 36), np.float32),
    )
    path = folder / (f"{kind}.onnx" if kind != "pt" else "template.pt")
    if path.exists():
        return path
    if kind == "pt":
        layers = [
            Layer(
                "features.0", Kind.CONV, {"weights": conv, "biases": conv[:, 0, 0, 0]}, layout=CAFFE
            ),
            Layer("classifier.0", Kind.DENSE, {"weights": fc, "biases": fc[:, 0]}, layout=CAFFE),
        ]
        weightconv.save(WeightSet(layers=layers), path)
        return path
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    trans_b = 0 if kind == "onnx-in-out" else 1
    inits = [
        numpy_helper.from_array(conv, "c.weight"),
        numpy_helper.from_array(conv[:, 0, 0, 0].copy(), "c.bias"),
        numpy_helper.from_array(fc if trans_b else fc.T.copy(), "g.weight"),
        numpy_helper.from_array(fc[:, 0].copy(), "g.bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c.weight", "c.bias"], ["c"]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "g.weight", "g.bias"], ["y"], transB=trans_b),
    ]
    size = "h" if kind == "onnx-unsized" else 5
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _written(tmp_path: Path, name: str, fmt: str, options: dict) -> bytes:
    """All bytes a writer produced for `options`, its files in order."""
    folder = tmp_path / name
    folder.mkdir()
    options = {
        key: _template(tmp_path, value[1:-1])
        if isinstance(value, str) and value.startswith("<")
        else value
        for key, value in options.items()
    }
    suffix = {
        "npy": ".npy",
        "ckpt": ".ckpt",
        "pt": ".pt",
        "safetensors": ".safetensors",
        "npz": ".npz",
        "onnx": ".onnx",
    }.get(fmt) or (".h5" if options.get("keras_layout") == "keras2" else ".weights.h5")
    result = weightconv.save(_small(), folder / f"out{suffix}", format=fmt, **options)
    names = sorted(p.name for p in folder.iterdir())
    assert all(Path(f).exists() for f in result.files)
    return b"|".join(n.encode() + b":" + (folder / n).read_bytes() for n in names)


WRITE_CASES = {
    ("npy", "flavour"): ({}, {"flavour": "dict"}),
    ("ckpt", "shards"): ({}, {"shards": 2}),
    ("ckpt", "max_shard_size"): ({}, {"max_shard_size": 200}),
    ("ckpt", "write_state"): ({}, {"write_state": False}),
    ("keras-h5", "keras_layout"): ({}, {"keras_layout": "keras2"}),
    ("pt", "torch_dense_inputs"): (
        {"torch_dense_inputs": {"fc1": (36,)}},
        {"torch_dense_inputs": {"fc1": (4, 3, 3)}},
    ),
    ("safetensors", "safetensors_layout"): (
        {},
        {"safetensors_layout": "torch", "torch_dense_inputs": {"fc1": (36,)}},
    ),
    ("safetensors", "torch_dense_inputs"): (
        {"safetensors_layout": "torch", "torch_dense_inputs": {"fc1": (36,)}},
        {"safetensors_layout": "torch", "torch_dense_inputs": {"fc1": (4, 3, 3)}},
    ),
    ("npz", "compressed"): ({}, {"compressed": True}),
    ("keras-h5", "model"): (
        {"keras_layout": "keras2"},
        {"keras_layout": "keras2", "model": KERAS_CONFIG},
    ),
    ("pt", "model"): (
        {"torch_dense_inputs": {"fc1": (36,)}},
        {"torch_dense_inputs": {"fc1": (36,)}, "model": "<pt>"},
    ),
    ("onnx", "model"): ({"model": "<onnx>"}, {"model": "<onnx-in-out>"}),
    ("onnx", "torch_dense_inputs"): (
        {"model": "<onnx-unsized>", "torch_dense_inputs": {"fc1": (36,)}},
        {"model": "<onnx-unsized>", "torch_dense_inputs": {"fc1": (4, 3, 3)}},
    ),
    ("onnx", "external_data"): (
        {"model": "<onnx>"},
        {"model": "<onnx>", "external_data": "always"},
    ),
    ("onnx", "external_data_file"): (
        {"model": "<onnx>", "external_data": "always"},
        {"model": "<onnx>", "external_data": "always", "external_data_file": "weights.bin"},
    ),
}
#: dense_inputs and layout (pt, safetensors) are walked in test_torch_format/test_safetensors.
READ_CASES = [
    "trust_pickle",
    "prototxt",
    "input_shape",
    "flat",
    "strip_scope",
    "dense_inputs",
    "layout",
]


def test_the_walk_covers_every_declared_option():
    declared_write = {
        (f.name, name)
        for f in formats.FORMATS
        if f.write_options
        for name in f.write_options.names()
    }
    declared_read = {name for f in formats.FORMATS for name in f.read_options.names()}
    assert declared_write == set(WRITE_CASES)
    assert declared_read == set(READ_CASES)


@pytest.mark.parametrize("case", sorted(WRITE_CASES), ids="/".join)
def test_every_write_option_changes_the_output(tmp_path, case):
    fmt, _ = case
    base, changed = WRITE_CASES[case]
    assert _written(tmp_path, "base", fmt, base) != _written(tmp_path, "changed", fmt, changed)


def _caffemodel(tmp_path: Path) -> tuple[Path, Path]:
    """conv1 3x3 -> pool 2x2 -> fc1 over a 3x6x6 input the caffemodel does not declare."""
    from google.protobuf import text_format

    from weightconv._proto import caffe_pb2

    rng = np.random.default_rng(0)
    net = caffe_pb2.NetParameter(name="tiny")
    conv = net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["conv1"])
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    pool = net.layer.add(name="pool1", type="Pooling", bottom=["conv1"], top=["pool1"])
    pool.pooling_param.kernel_size = 2
    pool.pooling_param.stride = 2
    fc = net.layer.add(name="fc1", type="InnerProduct", bottom=["pool1"], top=["fc1"])
    fc.inner_product_param.num_output = 5
    deploy = caffe_pb2.NetParameter(name="tiny")
    data = deploy.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add().dim.extend([1, 3, 6, 6])
    deploy.layer.extend(net.layer)  # the definitions, before the blobs are added
    for layer, shape in [(conv, (4, 3, 3, 3)), (fc, (5, 16))]:
        for blob_shape in (shape, shape[:1]):
            blob = layer.blobs.add()
            blob.shape.dim.extend(blob_shape)
            blob.data.extend(rng.standard_normal(int(np.prod(blob_shape))).astype(np.float32))
    model, prototxt = tmp_path / "tiny.caffemodel", tmp_path / "tiny.prototxt"
    model.write_bytes(net.SerializeToString())
    prototxt.write_text(text_format.MessageToString(deploy))
    return model, prototxt


def test_read_option_prototxt_and_input_shape_fix_the_fc_order(tmp_path):
    model, prototxt = _caffemodel(tmp_path)
    with pytest.raises(ShapeError, match="fc1"):
        list(weightconv.model.canonical.canonical_layers(weightconv.load(model)))
    with_prototxt = weightconv.load(model, prototxt=prototxt)
    with_shape = weightconv.load(model, input_shape=(3, 6, 6))
    a = {
        ly.name: np.asarray(ly.tensors["weights"])
        for ly in weightconv.model.canonical.canonical_layers(with_prototxt)
        if "weights" in ly.tensors
    }
    b = {
        ly.name: np.asarray(ly.tensors["weights"])
        for ly in weightconv.model.canonical.canonical_layers(with_shape)
        if "weights" in ly.tensors
    }
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


class _Odd(np.ndarray):
    """An ndarray subclass: pickles through a global the restricted unpickler refuses."""


def test_read_option_trust_pickle(tmp_path):
    path = tmp_path / "odd.npy"
    odd = np.arange(6, dtype=np.float32).view(_Odd)
    np.save(path, {"fc": [odd]}, allow_pickle=True)
    with pytest.raises(UnsafeInputError):
        weightconv.load(path)
    with pickle_importable():
        trusted = weightconv.load(path, trust_pickle=True)
    assert np.array_equal(np.asarray(trusted["fc"].tensors["weights"]), np.arange(6))


class pickle_importable:
    """Let the trusted unpickler find `_Odd` under this test module's name."""

    def __enter__(self):
        import sys

        sys.modules.setdefault(__name__, sys.modules[__name__])

    def __exit__(self, *exc):
        return False


def test_read_options_flat_and_strip_scope(tmp_path):
    weightconv.save(Mapping(scope="net/").apply(_small()), tmp_path / "m.ckpt")
    plain = weightconv.load(tmp_path / "m.ckpt")
    flat = weightconv.load(tmp_path / "m.ckpt", flat=True)
    stripped = weightconv.load(tmp_path / "m.ckpt", strip_scope="net/")
    assert plain.names() == ["net/conv1", "net/fc1"]
    assert sorted(flat.names()) == [
        "net/conv1/biases",
        "net/conv1/weights",
        "net/fc1/biases",
        "net/fc1/weights",
    ]
    assert stripped.names() == ["conv1", "fc1"]
    with pytest.raises(UsageError, match="strip_scope 'nosuch/'"):
        weightconv.load(tmp_path / "m.ckpt", strip_scope="nosuch/")


# -- the command line ---------------------------------------------------------------------------


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_flag_of_another_format_is_refused_in_one_line(capsys, tmp_path):
    weightconv.save(_small(), tmp_path / "m.npy")
    code, _, err = run(capsys, "convert", tmp_path / "m.npy", tmp_path / "o.npy", "--shards", 4)
    assert code == 2 and err.count("\n") == 1
    assert "--shards applies to ckpt output, not to npy output" in err
    code, _, err = run(capsys, "npy2ckpt", tmp_path / "m.npy", "--keras-layout", "keras2")
    assert code == 2 and "--keras-layout applies to keras-h5 output" in err
    code, _, err = run(
        capsys, "convert", tmp_path / "m.npy", tmp_path / "o.ckpt", "--strip-scope", "x/"
    )
    assert code == 2 and "--strip-scope applies to ckpt input, not to npy input" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy"]


def test_global_switches_before_the_verb(capsys, tmp_path):
    code, out, _ = run(capsys, "--json", "formats")
    assert code == 0 and json.loads(out)["verb"] == "formats"
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00garbage")
    code, _, err = run(capsys, "--debug", "inspect", bad)
    assert code == 2 and "Traceback" in err
    code, _, err = run(capsys, "inspect", bad)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1


def test_a_bad_option_value_is_one_line_and_a_hint(capsys, tmp_path):
    code, _, err = run(capsys, "npy2ckpt", tmp_path / "m.npy", "--shards", "many")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and "--shards" in lines[0] and "--help" in lines[1]


def test_a_usage_error_with_json_is_a_json_document(capsys, tmp_path):
    code, out, err = run(capsys, "npy2ckpt", tmp_path / "m.npy", "--shards", "many", "--json")
    document = json.loads(out)
    assert code == 2 and document["ok"] is False and document["exit_code"] == 2
    assert document["verb"] == "npy2ckpt" and "--shards" in document["error"]
    assert len(err.strip().splitlines()) == 2


def test_library_messages_say_option_names_and_the_cli_says_flags(capsys, tmp_path):
    weightconv.save(_small(), tmp_path / "m.npy")
    with pytest.raises(weightconv.OutputExistsError, match=r"force=True"):
        weightconv.save(_small(), tmp_path / "m.npy")
    code, _, err = run(capsys, "convert", tmp_path / "m.npy", tmp_path / "m.npy")
    assert code == 2 and "--force" in err and "force=True" not in err


@pytest.mark.parametrize(
    "library, command_line",
    [
        ("pass force=True to overwrite it", "pass --force to overwrite it"),
        (
            "fc6/weights: fc_inputs=fc6=7,7,256 = 12544",
            "fc6/weights: --fc-input fc6=7,7,256 = 12544",
        ),
        ("say it with source_channels=rgb|bgr", "say it with --source-channels rgb|bgr"),
        ("give the deploy prototxt (prototxt=) or", "give the deploy prototxt (--prototxt) or"),
        ("names=slim needs net= (the", "--names slim needs --net (the"),
        ("the ckpt writer takes no option 'shard'", "the ckpt writer takes no option 'shard'"),
        ("option 'shards' is", "--shards is"),
        ("skip=fc9: no layer", "--skip fc9: no layer"),
        ("give dst_format= (writable", "give --to (writable"),
    ],
)
def test_the_cli_says_flags_where_the_library_says_option_names(library, command_line):
    from weightconv.cli.args import translate

    assert translate(library) == command_line


def test_a_refused_pickle_names_the_flag_on_the_command_line(capsys, tmp_path):
    path = tmp_path / "odd.npy"
    np.save(path, {"fc": [np.arange(3.0).view(_Odd)]}, allow_pickle=True)
    code, _, err = run(capsys, "inspect", path)
    assert code == 2 and "--trust-pickle" in err and "trust_pickle" not in err


def test_npy2ckpt_creates_the_folder_and_says_so(capsys, tmp_path):
    weightconv.save(_small(), tmp_path / "m.npy")
    code, _out, err = run(
        capsys, "npy2ckpt", tmp_path / "m.npy", "-o", tmp_path / "ckpt" / "deep" / "m.ckpt"
    )
    assert code == 0 and (tmp_path / "ckpt" / "deep" / "m.ckpt.index").exists()
    assert "created folder" in err


def test_a_failed_conversion_removes_the_folder_it_created(tmp_path):
    weightconv.save(_small(), tmp_path / "m.npy")
    with pytest.raises(weightconv.WeightconvError):
        weightconv.convert(
            tmp_path / "m.npy", tmp_path / "new" / "m.ckpt", mapping=Mapping(fc_as_conv=True)
        )
    assert not (tmp_path / "new").exists()


def test_map_with_an_output_writes_it(capsys, tmp_path):
    weightconv.save(_small(), tmp_path / "m.npy")
    code, _out, _ = run(
        capsys, "map", tmp_path / "m.npy", "-o", tmp_path / "o.ckpt", "--names", "keras"
    )
    assert code == 0 and (tmp_path / "o.ckpt.index").exists()
    names = weightconv.load(tmp_path / "o.ckpt", flat=True).names()
    assert sorted(names) == ["conv1/bias", "conv1/kernel", "fc1/bias", "fc1/kernel"]


@pytest.mark.parametrize("target", ["npy", "ckpt", "weights.h5"])
def test_a_map_file_rename_reaches_every_output_format(tmp_path, target):
    weightconv.save(_small(), tmp_path / "m.npy")
    rules = tmp_path / "ren.toml"
    rules.write_text("[[rename]]\nfrom = '^conv1/'\nto = 'c1/'\n")
    from weightconv.mapping import MapFile

    weightconv.convert(
        tmp_path / "m.npy", tmp_path / f"o.{target}", mapping=Mapping(map_file=MapFile.load(rules))
    )
    names = weightconv.load(tmp_path / f"o.{target}").names()
    assert "c1" in names and "conv1" not in names


def test_json_documents_carry_a_schema_version_and_the_verb(capsys, tmp_path):
    weightconv.save(_small(), tmp_path / "m.npy")
    for argv, verb in [
        (["inspect", tmp_path / "m.npy"], "inspect"),
        (["convert", tmp_path / "m.npy", tmp_path / "o.ckpt"], "convert"),
        (["npy2h5", tmp_path / "m.npy"], "npy2h5"),
        (["diff", tmp_path / "m.npy", tmp_path / "o.ckpt"], "diff"),
        (["map", tmp_path / "m.npy", "--explain"], "map"),
        (["formats"], "formats"),
        (["lrn", "--local-size", "5", "--alpha", "1e-4"], "lrn"),
        (["demo", "--dir", tmp_path / "demo", "--width", "0.0625", "--no-verify"], "demo"),
    ]:
        code, out, _ = run(capsys, *argv, "--json")
        document = json.loads(out)
        assert code == 0, out
        assert document["schema_version"] == weightconv.SCHEMA_VERSION
        assert document["verb"] == verb and document["ok"] is True


# -- the library and the CLI write the same bytes ----------------------------------------------

SOURCES = ["caffemodel", "npy", "ckpt", "weights.h5"]
TARGETS = ["npy", "ckpt", "weights.h5"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    net = synthetic.build("alexnet", width=0.125, num_classes=10, seed=5)
    net.write_caffemodel(root / "a.caffemodel")
    (root / "deploy.prototxt").write_text(net.deploy_prototxt)
    prototxt = root / "deploy.prototxt"
    weightconv.convert(root / "a.caffemodel", root / "a.npy", prototxt=prototxt)
    weightconv.convert(root / "a.npy", root / "a.ckpt")
    weightconv.convert(root / "a.npy", root / "a.weights.h5")
    return root


def _bytes_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("source", SOURCES)
def test_library_and_cli_write_the_same_bytes(capsys, tmp_path, sources, source, target):
    src = sources / f"a.{source}"
    extra = ["--prototxt", str(sources / "deploy.prototxt")] if source == "caffemodel" else []
    api_dir, cli_dir = tmp_path / "api", tmp_path / "cli"
    api_dir.mkdir()
    cli_dir.mkdir()
    grouped = source == "caffemodel"  # the other formats do not record groups
    mapping = Mapping(names="tf1", scope="net/", split_groups=grouped)
    read = {"prototxt": sources / "deploy.prototxt"} if source == "caffemodel" else {}
    weightconv.convert(src, api_dir / f"o.{target}", read_options=read, mapping=mapping)
    code, _, err = run(
        capsys,
        "convert",
        src,
        cli_dir / f"o.{target}",
        *extra,
        "--names",
        "tf1",
        "--scope",
        "net/",
        *(["--split-groups"] if grouped else []),
        "-q",
    )
    assert code == 0, err
    assert _bytes_of(api_dir) == _bytes_of(cli_dir)


def test_the_readme_vgg16_round_trip_diffs_equal(capsys, tmp_path):
    """README: Caffe VGG16 -> slim vgg_16 checkpoint (RGB, fc as conv) -> .npy (tf1 names, dense
    fc, BGR again), then diff of the two, each side in its own channel order."""
    net = synthetic.build("vgg16", width=0.0625, num_classes=10, seed=2)
    model, prototxt = tmp_path / "vgg16.caffemodel", tmp_path / "deploy.prototxt"
    net.write_caffemodel(model)
    prototxt.write_text(net.deploy_prototxt)
    ckpt, npy = tmp_path / "vgg_16.ckpt", tmp_path / "vgg16.npy"
    steps = [
        [
            "caffe2ckpt",
            model,
            "--prototxt",
            prototxt,
            "-o",
            ckpt,
            "--names",
            "slim",
            "--net",
            "vgg_16",
            "--fc-as-conv",
            "--input-channels",
            "rgb",
        ],
        [
            "ckpt2npy",
            ckpt,
            "-o",
            npy,
            "--names",
            "tf1",
            "--fc-as-dense",
            "--input-channels",
            "bgr",
            "--source-channels",
            "rgb",
        ],
    ]
    for argv in steps:
        code, _, err = run(capsys, *argv, "-q")
        assert code == 0, err
    code, out, err = run(
        capsys,
        "diff",
        npy,
        ckpt,
        "--names",
        "tf1",
        "--fc-as-dense",
        "--a-channels",
        "bgr",
        "--b-channels",
        "rgb",
    )
    assert code == 0, out + err
    assert "DIFFERENT" not in out and "32 equal" in out
    # without the channel orders the two really differ, in conv1_1 only
    code, out, _ = run(capsys, "diff", npy, ckpt, "--names", "tf1", "--fc-as-dense", "--json")
    rows = {row["name"]: row["status"] for row in json.loads(out)["tensors"]}
    assert code == 1 and [n for n, s in rows.items() if s != "equal"] == ["conv1_1/weights"]
    # and the .npy equals what caffe2npy makes of the caffemodel directly
    code, _, err = run(
        capsys, "caffe2npy", model, "--prototxt", prototxt, "-o", tmp_path / "direct.npy", "-q"
    )
    assert code == 0, err
    code, out, _ = run(capsys, "diff", tmp_path / "direct.npy", npy)
    assert code == 0, out
