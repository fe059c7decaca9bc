"""The mapping rules: pure transforms, the Mapping plan, map files, and the map/diff verbs.

Expected values come from index arithmetic written out in the tests (what a slim fc6 kernel
element must be, given the Caffe blob element it came from), from NumPy's own reshapes of
independently built arrays, and from round trips that must come back bit-identical.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import weightconv
from weightconv import arrays, cli
from weightconv.mapping import MapFile, Mapping
from weightconv.model import Layer, WeightSet
from weightconv.model import canonical as layout
from weightconv.model.canonical import canonical_layers
from weightconv.testing.synthetic import build

# Pure transforms -----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 4), w=st.integers(1, 4), c=st.integers(1, 5), out=st.integers(1, 6))
def test_fc_as_conv_element_by_element(h, w, c, out):
    """Element (y, x, ch, o) of the conv kernel is dense row y*W*C + x*C + ch (H,W,C flatten)."""
    dense = np.arange(h * w * c * out, dtype=np.float32).reshape(h * w * c, out)
    conv = arrays.dense_to_fc_conv(dense, (h, w, c))
    assert conv.shape == (h, w, c, out)
    for y, x, ch, o in np.ndindex(conv.shape):
        assert conv[y, x, ch, o] == dense[y * w * c + x * c + ch, o]
    assert np.array_equal(arrays.fc_conv_to_dense(conv), dense)


def test_fc_as_conv_wrong_size_names_both_shapes():
    with pytest.raises(weightconv.ShapeError, match=r"\(9216, 10\).*7x7x256 = 12544"):
        arrays.dense_to_fc_conv(np.zeros((9216, 10)), (7, 7, 256))


def test_flip_input_channels():
    kernel = np.zeros((2, 2, 3, 4))
    kernel[:, :, 0, :] = 1  # "blue" in BGR
    flipped = arrays.flip_input_channels(kernel)
    assert (flipped[:, :, 2, :] == 1).all() and (flipped[:, :, :2, :] == 0).all()
    with pytest.raises(weightconv.ShapeError, match="3 input channels"):
        arrays.flip_input_channels(np.zeros((2, 2, 4, 4)))


def test_split_and_merge_groups():
    kernel = np.arange(5 * 5 * 48 * 256).reshape(5, 5, 48, 256)
    halves = arrays.split_groups(kernel, 2)
    assert [h.shape for h in halves] == [(5, 5, 48, 128)] * 2
    assert np.array_equal(halves[1], kernel[..., 128:])
    assert np.array_equal(arrays.merge_groups(halves), kernel)
    with pytest.raises(weightconv.ShapeError, match="cannot split 256 output channels into 3"):
        arrays.split_groups(kernel, 3)


# The plan ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alexnet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("alexnet")
    net = build("alexnet", width=0.125, num_classes=10, seed=4)
    net.write_caffemodel(folder / "a.caffemodel")
    (folder / "a.prototxt").write_text(net.deploy_prototxt)
    return folder, net


def _load(alexnet) -> WeightSet:
    folder, _ = alexnet
    return weightconv.load(folder / "a.caffemodel", prototxt=folder / "a.prototxt")


def _arrays(weights: WeightSet) -> dict[str, np.ndarray]:
    return {layer.tensor_name(role): np.asarray(t) for layer, role, t in weights.tensors()}


def test_identity_mapping_equals_canonical(alexnet):
    source = _load(alexnet)
    mapped = _arrays(Mapping().apply(source))
    direct = {
        layer.tensor_name(role): t
        for layer in canonical_layers(_load(alexnet))
        for role, t in layer.tensors.items()
    }
    assert list(mapped) == list(direct)
    for name in direct:
        assert np.array_equal(mapped[name], direct[name]), name


def test_slim_names_and_fc_as_conv_match_the_caffe_blobs(alexnet):
    _, net = alexnet
    mapped = Mapping(names="slim", net="alexnet_v2", fc_as_conv=True).apply(_load(alexnet))
    arrays = _arrays(mapped)
    assert "alexnet_v2/conv1/weights" in arrays and "alexnet_v2/fc6/weights" in arrays
    blob = np.asarray(net.weights["fc6"][0])  # Caffe (out, C*H*W), C,H,W flatten
    kernel = arrays["alexnet_v2/fc6/weights"]
    c, h, w = mapped["alexnet_v2/fc6"].input_shape
    assert kernel.shape == (h, w, c, blob.shape[0])
    rng = np.random.default_rng(0)
    for _ in range(200):
        y, x, ch, o = (int(rng.integers(n)) for n in kernel.shape)
        assert kernel[y, x, ch, o] == blob[o, ch * h * w + y * w + x]
    assert arrays["alexnet_v2/fc7/weights"].shape[:2] == (1, 1)


def test_keras_names_and_scope(alexnet):
    mapped = Mapping(names="keras", scope="my").apply(_load(alexnet))
    assert [layer.tensor_name(r) for layer in mapped.layers[:1] for r in layer.tensors] == [
        "my/conv1/kernel",
        "my/conv1/bias",
    ]


def test_bgr_to_rgb_flips_only_the_first_conv(alexnet):
    source = _arrays(Mapping().apply(_load(alexnet)))
    rgb = Mapping(input_channels="rgb").apply(_load(alexnet))
    assert rgb.channel_order == "rgb"
    flipped = _arrays(rgb)
    assert np.array_equal(flipped["conv1/weights"], source["conv1/weights"][:, :, ::-1, :])
    assert np.array_equal(flipped["conv2/weights"], source["conv2/weights"])


def test_channel_order_unknown_must_be_stated(tmp_path):
    ws = WeightSet(layers=[Layer("conv1", tensors={"weights": np.zeros((3, 3, 3, 4), "f4")})])
    with pytest.raises(weightconv.MappingError, match="source_channels=rgb"):
        Mapping(input_channels="rgb").apply(ws)
    mapped = Mapping(input_channels="rgb", source_channels="bgr").apply(ws)
    assert mapped.channel_order == "rgb"


def test_split_groups_then_merge_round_trip(alexnet):
    source = _arrays(Mapping().apply(_load(alexnet)))
    split = Mapping(split_groups=True).apply(_load(alexnet))
    names = split.names()
    assert "conv2_group0" in names and "conv2_group1" in names and "conv2" not in names
    halves = _arrays(split)
    assert np.array_equal(
        np.concatenate([halves["conv2_group0/weights"], halves["conv2_group1/weights"]], axis=3),
        source["conv2/weights"],
    )
    merged = _arrays(Mapping(merge_groups=True).apply(split))
    assert list(merged) == list(source)
    for name in source:
        assert np.array_equal(merged[name], source[name]), name


def test_slim_fc_as_conv_and_back_equals_direct(alexnet, tmp_path):
    """The acceptance path at AlexNet size: Caffe -> slim checkpoint with fc-as-conv kernels ->
    .npy with TF1 names and dense kernels equals caffe2npy's output; diff says so (exit 0)."""
    folder, _ = alexnet
    args = ["--prototxt", str(folder / "a.prototxt"), "-q"]
    assert (
        cli.main(
            ["caffe2npy", str(folder / "a.caffemodel"), "-o", str(tmp_path / "direct.npy"), *args]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "caffe2ckpt",
                str(folder / "a.caffemodel"),
                "-o",
                str(tmp_path / "slim.ckpt"),
                "--names",
                "slim",
                "--net",
                "vgg_16",
                "--fc-as-conv",
                *args,
            ]
        )
        == 0
    )
    slim = weightconv.load(tmp_path / "slim.ckpt")
    assert slim["vgg_16/fc6"].tensors["weights"].ndim == 4
    assert (
        cli.main(
            [
                "ckpt2npy",
                str(tmp_path / "slim.ckpt"),
                "-o",
                str(tmp_path / "back.npy"),
                "--names",
                "tf1",
                "--fc-as-dense",
                "-q",
            ]
        )
        == 0
    )
    direct = np.load(tmp_path / "direct.npy", allow_pickle=True).item()
    back = np.load(tmp_path / "back.npy", allow_pickle=True).item()
    assert list(back) == list(direct)
    for name, tensors in direct.items():
        for a, b in zip(tensors, back[name], strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    assert cli.main(["diff", str(tmp_path / "direct.npy"), str(tmp_path / "back.npy"), "-q"]) == 0


def test_fc_input_that_does_not_fit_names_both_shapes(tmp_path):
    ws = WeightSet(
        layers=[Layer("fc6", kind="dense", tensors={"weights": np.zeros((6 * 6 * 256, 8), "f4")})]
    )
    with pytest.raises(weightconv.MappingError, match=r"fc6/weights.*fc_inputs=fc6=H,W,C"):
        Mapping(fc_as_conv=True).apply(ws)
    with pytest.raises(
        weightconv.ShapeError,
        match=r"fc6/weights: fc_inputs=fc6=7,7,256 = 12544 "
        r"does not match its 9216 inputs",
    ):
        Mapping(fc_as_conv=True, fc_inputs={"fc6": (7, 7, 256)}).apply(ws)
    ok = Mapping(fc_as_conv=True, fc_inputs={"fc6": (6, 6, 256)}).apply(ws)
    assert ok["fc6"].tensors["weights"].shape == (6, 6, 256, 8)


def test_ambiguous_mapping_is_refused():
    ws = WeightSet(
        layers=[
            Layer("a/conv1", tensors={"weights": np.zeros((2, 2), "f4")}),
            Layer("b/conv1", tensors={"weights": np.zeros((2, 2), "f4")}),
        ]
    )
    with pytest.raises(
        weightconv.MappingError,
        match=r"'conv1/weights' \(a/conv1/weights and "
        r"b/conv1/weights\).*ambiguous",
    ):
        Mapping(names="tf1").apply(ws)


def test_mapping_is_lazy_and_drops_layers_as_it_goes(alexnet):
    """Planning converts nothing; asking for one tensor converts its layer only."""
    source = _load(alexnet)
    converted = []
    original = layout.to_canonical

    def counting(layer):
        converted.append(layer.name)
        return original(layer)

    mapped = Mapping(names="tf1").apply(source)
    try:
        layout.to_canonical = counting
        assert converted == []
        np.asarray(mapped["fc7"].tensors["weights"])
        np.asarray(mapped["fc7"].tensors["biases"])
        assert converted == ["fc7"]
    finally:
        layout.to_canonical = original


# Map files -----------------------------------------------------------------------------------


def test_map_file_json_and_toml(tmp_path):
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((4, 6)).astype("f4")
    ws = WeightSet(
        layers=[
            Layer("net/dense_1", tensors={"weights": kernel, "biases": np.ones(6, "f4")}),
            Layer("net/logits", tensors={"weights": np.ones((6, 2), "f4")}),
        ]
    )
    spec = {
        "rename": [{"from": r"^net/dense_(\d+)/", "to": r"fc\1/"}],
        "skip": ["net/logits"],
        "tensors": {
            "net/dense_1/weights": {"reshape": [2, 2, 6], "transpose": [1, 0, 2], "flip_axis": 2}
        },
    }
    (tmp_path / "m.json").write_text(json.dumps(spec))
    (tmp_path / "m.toml").write_text("""
skip = ["net/logits"]

[[rename]]
from = '^net/dense_(\\d+)/'
to = 'fc\\1/'

[tensors."net/dense_1/weights"]
reshape = [2, 2, 6]
transpose = [1, 0, 2]
flip_axis = 2
""")
    expected = kernel.reshape(2, 2, 6).transpose(1, 0, 2)[:, :, ::-1]
    for path in (tmp_path / "m.json", tmp_path / "m.toml"):
        mapped = Mapping(map_file=MapFile.load(path)).apply(ws)
        arrays = _arrays(mapped)
        assert sorted(arrays) == ["fc1/biases", "fc1/weights"], path
        assert np.array_equal(arrays["fc1/weights"], expected), path


def test_bad_map_files(tmp_path):
    (tmp_path / "bad.json").write_text('{"rename": [{"from": "("}]}')
    with pytest.raises(weightconv.UsageError, match="exactly 'from' and 'to'"):
        MapFile.load(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text('{"tensors": {"x": {"rotate": 1}}}')
    with pytest.raises(weightconv.UsageError, match="reshape, transpose, flip_axis"):
        MapFile.load(tmp_path / "bad2.json")
    ws = WeightSet(layers=[Layer("x", tensors={"weights": np.zeros((2, 3), "f4")})])
    rule = MapFile.from_dict({"tensors": {"x/weights": {"reshape": [4, 4]}}})
    with pytest.raises(weightconv.ShapeError, match=r"x/weights: cannot reshape \(2, 3\)"):
        Mapping(map_file=rule).apply(ws)


# Verbs ---------------------------------------------------------------------------------------


def test_map_explain_json(alexnet, capsys):
    folder, _ = alexnet
    assert (
        cli.main(
            [
                "map",
                str(folder / "a.caffemodel"),
                "--prototxt",
                str(folder / "a.prototxt"),
                "--names",
                "slim",
                "--net",
                "alexnet_v2",
                "--fc-as-conv",
                "--explain",
                "--json",
            ]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)["plan"]
    fc6 = next(row for row in plan if row["to"] == "alexnet_v2/fc6/weights")
    assert fc6["from"] == "fc6/weights" and len(fc6["to_shape"]) == 4
    assert any("fc-as-conv" in step for step in fc6["transforms"])
    assert not list(folder.glob("*.ckpt*"))  # nothing written


def test_diff_reports_differences_and_exit_code(tmp_path, capsys):
    a = WeightSet(
        layers=[
            Layer("c", tensors={"weights": np.ones((2, 2), "f4"), "biases": np.zeros(2, "f4")}),
            Layer("d", tensors={"weights": np.ones(3, "f4")}),
        ]
    )
    b = WeightSet(
        layers=[
            Layer(
                "c", tensors={"weights": np.full((2, 2), 1.001, "f4"), "biases": np.zeros(2, "f4")}
            ),
            Layer("e", tensors={"weights": np.ones(3, "f4")}),
        ]
    )
    weightconv.save(a, tmp_path / "a.npy")
    weightconv.save(b, tmp_path / "b.npy")
    assert cli.main(["diff", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    status = {row["name"]: row["status"] for row in report["tensors"]}
    assert status == {
        "c/weights": "differs",
        "c/biases": "equal",
        "d/weights": "only in a",
        "e/weights": "only in b",
    }
    row = next(r for r in report["tensors"] if r["name"] == "c/weights")
    assert row["max_abs"] == pytest.approx(0.001, rel=1e-3)
    assert (
        cli.main(
            [
                "diff",
                str(tmp_path / "a.npy"),
                str(tmp_path / "b.npy"),
                "--skip",
                "d",
                "--skip",
                "e",
                "--atol",
                "0.01",
                "-q",
            ]
        )
        == 0
    )
    capsys.readouterr()


def test_skip_of_a_missing_name_is_an_error(alexnet, tmp_path, capsys):
    folder, _ = alexnet
    code = cli.main(
        [
            "caffe2npy",
            str(folder / "a.caffemodel"),
            "--prototxt",
            str(folder / "a.prototxt"),
            "-o",
            str(tmp_path / "x.npy"),
            "--skip",
            "fc9",
        ]
    )
    assert code == 2
    assert "--skip fc9: no layer or tensor" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()


def test_vgg16_shaped_slim_checkpoint_and_back(tmp_path):
    """VGG16 at 224x224 input (1/16 of the channels): fc6 becomes slim's 7x7 convolution,
    fc7 and fc8 1x1 ones, named vgg_16/conv1/conv1_1/...; back to .npy it is caffe2npy's
    output exactly, and diff between the two reports nothing."""
    net = build("vgg16", width=0.0625, num_classes=12, seed=2, input_size=224)
    net.write_caffemodel(tmp_path / "vgg.caffemodel")
    (tmp_path / "vgg.prototxt").write_text(net.deploy_prototxt)
    source = ["--prototxt", str(tmp_path / "vgg.prototxt"), "-q"]
    assert (
        cli.main(
            [
                "caffe2npy",
                str(tmp_path / "vgg.caffemodel"),
                "-o",
                str(tmp_path / "direct.npy"),
                *source,
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "caffe2ckpt",
                str(tmp_path / "vgg.caffemodel"),
                "-o",
                str(tmp_path / "vgg_16.ckpt"),
                "--names",
                "slim",
                "--net",
                "vgg_16",
                "--fc-as-conv",
                *source,
            ]
        )
        == 0
    )
    slim = weightconv.load(tmp_path / "vgg_16.ckpt")
    channels = net.blob_shapes()["conv5_3"][0][0]  # pool5 keeps conv5_3's channels
    assert slim["vgg_16/conv5/conv5_3"].tensors["weights"].shape[3] == channels
    assert slim["vgg_16/fc6"].tensors["weights"].shape == (
        7,
        7,
        channels,
        net.weights["fc6"][0].shape[0],
    )
    assert slim["vgg_16/fc7"].tensors["weights"].shape[:2] == (1, 1)
    assert (
        cli.main(
            [
                "ckpt2npy",
                str(tmp_path / "vgg_16.ckpt"),
                "-o",
                str(tmp_path / "back.npy"),
                "--names",
                "tf1",
                "--fc-as-dense",
                "-q",
            ]
        )
        == 0
    )
    direct = np.load(tmp_path / "direct.npy", allow_pickle=True).item()
    back = np.load(tmp_path / "back.npy", allow_pickle=True).item()
    assert list(back) == list(direct)
    for name in direct:
        for a, b in zip(direct[name], back[name], strict=True):
            assert a.shape == b.shape and a.tobytes() == b.tobytes(), name
    assert (
        cli.main(
            [
                "diff",
                str(tmp_path / "direct.npy"),
                str(tmp_path / "vgg_16.ckpt"),
                "--names",
                "tf1",
                "--fc-as-dense",
                "-q",
            ]
        )
        == 0
    )
