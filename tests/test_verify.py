"""The built-in AlexNet graph and `weightconv verify`, checked against OpenCV and reference cards.

Generated AlexNet- and CaffeNet-shaped Caffe models (narrow, but with the real 227x227 input,
grouped convolutions, LRN and the 6x6 pool5 -> fc6 flatten) are converted with the command
line to .npy, a TF checkpoint and a Keras .weights.h5; each conversion, run in the TensorFlow
graph, must predict what OpenCV's Caffe importer predicts from the original .caffemodel on the
same inputs. Each classic conversion mistake must make verify fail, saying which images and
classes disagree. Expected values come from OpenCV and from cards, never from weightconv.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import weightconv
from weightconv import cli
from weightconv.errors import CheckFailed, ShapeError, UsageError
from weightconv.lrn import CaffeLRN
from weightconv.nets import AlexNet, Architecture
from weightconv.nets.alexnet import describe
from weightconv.testing import synthetic
from weightconv.verify import (
    IMAGENET_MEAN_BGR,
    Preprocessing,
    imagenet_labels,
    load_card,
    make_inputs,
    opencv_predictions,
    synthetic_images,
    verify,
    write_card,
)

from .conftest import corpus_file

#: Narrow nets keep the files small; the input stays 227x227.
WIDTH = 0.125
#: Every weight layer multiplies the logits by the weight scale: at 1.0 the softmax of these
#: nets on mean-subtracted 0..255 pixels saturates (logits ~250), at 0.5 it is flat (~2.5);
#: 0.7 gives logits ~25 and top-1 probabilities between 0.3 and 0.85.
SCALE = 0.7
TOLERANCE = 1e-4

try:
    import cv2
except ImportError:  # the test extra has it
    cv2 = None
_ORACLE_MARKS = [
    pytest.mark.oracle,
    pytest.mark.skipif(
        cv2 is None, reason="OpenCV is the reference; pip install opencv-python-headless"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("tensorflow") is None,
        reason="the graph runs in TensorFlow; pip install tensorflow",
    ),
]


def oracle(test):
    """Marks a test that needs OpenCV (the reference) and TensorFlow (the graph)."""
    for mark in _ORACLE_MARKS:
        test = mark(test)
    return test


def run(*argv: str) -> None:
    assert cli.main([*argv, "--force", "-q"]) == 0, argv


class Source:
    """A generated Caffe model, its deploy prototxt, and its conversions by the CLI."""

    def __init__(self, directory: Path, variant: str, encoding: str, input_size: int = 227) -> None:
        built = synthetic.build(
            variant, width=WIDTH, seed=0, scale=SCALE, encoding=encoding, input_size=input_size
        )
        self.variant = variant
        self.directory = directory
        self.model = directory / f"{variant}.caffemodel"
        self.prototxt = directory / f"{variant}.prototxt"
        built.write_caffemodel(self.model)
        self.prototxt.write_text(built.deploy_prototxt)
        self.npy = directory / f"{variant}.npy"
        run("caffe2npy", str(self.model), "--prototxt", str(self.prototxt), "-o", str(self.npy))

    def converted(self, kind: str) -> Path:
        if kind == "npy":
            return self.npy
        out = self.directory / f"{self.variant}.{'ckpt' if kind == 'ckpt' else 'weights.h5'}"
        if not (out.exists() or Path(f"{out}.index").exists()):
            run(f"npy2{'ckpt' if kind == 'ckpt' else 'h5'}", str(self.npy), "-o", str(out))
        return out


@pytest.fixture(
    scope="module", params=[("alexnet", "v2"), ("caffenet", "v1")], ids=["alexnet", "caffenet"]
)
def source(request, tmp_path_factory) -> Source:
    variant, encoding = request.param
    return Source(tmp_path_factory.mktemp(variant), variant, encoding)


@pytest.fixture(scope="module")
def alexnet(tmp_path_factory) -> Source:
    return Source(tmp_path_factory.mktemp("alexnet-only"), "alexnet", "v2")


@pytest.fixture(scope="module")
def caffenet(tmp_path_factory) -> Source:
    return Source(tmp_path_factory.mktemp("caffenet-only"), "caffenet", "v1")


def edited(weights: weightconv.WeightSet, name: str, change) -> weightconv.WeightSet:
    """The set with one layer's (canonical) tensors changed."""
    layers = [
        dataclasses.replace(
            layer, tensors=change({k: np.asarray(v) for k, v in layer.tensors.items()})
        )
        if layer.name == name
        else layer
        for layer in weights.layers
    ]
    return dataclasses.replace(weights, layers=layers)


# --- no TensorFlow, no OpenCV ------------------------------------------------------------


def test_importing_does_not_import_tensorflow():
    code = (
        "import sys, weightconv.verify, weightconv.nets.alexnet; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]


def test_packaged_imagenet_labels():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[0] == "tench, Tinca tinca"
    assert labels[281] == "tabby, tabby cat"
    assert labels[999] == "toilet tissue, toilet paper, bathroom tissue"


def test_packaged_labels_are_the_cards_labels():
    labels = imagenet_labels()
    card = json.loads(corpus_file("reference/caffenet_cat.json").read_text())
    for entry in card["images"][0]["top5"]:
        assert labels[entry["class"]] == entry["label"]


def test_imagenet_mean_is_the_mean_images_channel_average():
    mean = np.load(corpus_file("imagenet/ilsvrc_2012_mean.npy"))
    np.testing.assert_allclose(mean.reshape(3, -1).mean(axis=1), IMAGENET_MEAN_BGR, rtol=1e-12)
    prep = Preprocessing(mean_file=str(corpus_file("imagenet/ilsvrc_2012_mean.npy")))
    np.testing.assert_allclose(prep.mean(), IMAGENET_MEAN_BGR, rtol=1e-6)


@pytest.mark.parametrize(
    ("prototxt", "variant"),
    [
        ("prototxt/bvlc_alexnet.deploy.prototxt", "alexnet"),
        ("prototxt/v1_2014/bvlc_alexnet_deploy.prototxt", "alexnet"),
        ("prototxt/bvlc_reference_caffenet.deploy.prototxt", "caffenet"),
    ],
)
def test_built_in_defaults_are_bvlcs_deploy_nets(prototxt, variant):
    """Without a prototxt the graph is BVLC's: the same layers, kernels, strides, pads,
    groups and LRN constants as their deploy files."""
    from_file = Architecture.from_prototxt(corpus_file(prototxt))
    default = Architecture.bvlc(variant)
    assert from_file.variant == variant and from_file.input_size == default.input_size

    def key(step):
        lrn = (
            None
            if step.lrn is None
            else (  # prototxt floats are float32
                step.lrn.local_size,
                np.float32(step.lrn.alpha),
                step.lrn.beta,
                step.lrn.k,
            )
        )
        return step.op, step.name, step.kernel, step.stride, step.pad, step.group, lrn

    assert [key(s) for s in from_file.steps] == [key(s) for s in default.steps]


def test_synthetic_images_are_deterministic_and_differ():
    a, b = synthetic_images(3, seed=1), synthetic_images(3, seed=1)
    assert a.shape == (3, 227, 227, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a, synthetic_images(3, seed=2))
    assert a.min() == 0 and a.max() == 255


def test_verify_needs_one_reference(alexnet):
    with pytest.raises(UsageError, match="either the source model"):
        verify(alexnet.npy)
    with pytest.raises(UsageError, match="source Caffe model"):
        verify(alexnet.npy, against=alexnet.npy, prototxt=alexnet.prototxt)


def test_missing_opencv_is_a_usage_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(UsageError, match="pip install opencv-python-headless"):
        make_inputs([tmp_path / "any.jpg"])


# --- the reference side: Caffe preprocessing, OpenCV ------------------------------------


@oracle
def test_preprocessing_and_reference_are_caffes_and_opencvs(alexnet, tmp_path):
    """Images from files: read BGR, [0, 1], bilinear resize, x255, minus the mean; the
    reference is exactly what OpenCV's importer gives on that blob."""
    files = []
    for index, image in enumerate(synthetic_images(2, seed=5, size=(240, 300))):
        files.append(tmp_path / f"pattern{index}.png")
        assert cv2.imwrite(str(files[-1]), image)
    inputs = make_inputs(files)
    expected = []
    for path in files:
        pixels = cv2.imread(str(path)).astype(np.float32) / 255
        resized = cv2.resize(pixels, (227, 227), interpolation=cv2.INTER_LINEAR) * 255
        expected.append(resized - np.float32(IMAGENET_MEAN_BGR))
    np.testing.assert_allclose(inputs.bgr, np.stack(expected), rtol=0, atol=1e-4)
    assert inputs.names == ["pattern0.png", "pattern1.png"]

    net = cv2.dnn.readNetFromCaffe(str(alexnet.prototxt), str(alexnet.model))
    net.setInput(np.ascontiguousarray(np.stack(expected).transpose(0, 3, 1, 2)))
    logits, prob = net.forward(["fc8", "prob"])
    reference = opencv_predictions(alexnet.model, alexnet.prototxt, inputs)
    np.testing.assert_allclose(reference.logits, logits.reshape(2, -1), rtol=0, atol=1e-4)
    np.testing.assert_allclose(reference.probabilities, prob.reshape(2, -1), rtol=0, atol=1e-6)


# --- conversions agree with the source ---------------------------------------------------


@oracle
@pytest.mark.parametrize("kind", ["npy", "ckpt", "h5"])
def test_conversion_agrees_with_the_source_model(source, kind):
    result = verify(source.converted(kind), against=source.model, prototxt=source.prototxt)
    summary = result.summary
    assert result.passed, result.report()
    assert result.exit_code == 0
    assert summary["images"] == 8
    assert summary["top1_agree"] == summary["topk_agree"] == 8
    assert summary["max_abs_prob_diff"] < TOLERANCE
    assert summary["relative_logit_diff"] < 1e-5
    # the softmax is not flat: the check compares real preferences
    top1 = [image["reference"][0]["prob"] for image in result.images]
    assert min(top1) > 0.2, top1
    document = json.loads(json.dumps(result.to_dict()))
    assert document["verdict"] == "pass" and len(document["images"]) == 8
    assert (
        document["images"][0]["reference"][0]["label"]
        == imagenet_labels()[document["images"][0]["reference"][0]["class"]]
    )


LAYOUTS = {
    # grouped convolutions written as one kernel per group
    "split-groups": ("caffe2npy", "split.npy", ["--split-groups"], "conv2_group1"),
    # slim names, fully-connected layers stored as convolutions (fc6 a 6x6 kernel)
    "slim-fc-as-conv": (
        "caffe2ckpt",
        "slim.ckpt",
        ["--names", "slim", "--net", "alexnet_v2", "--fc-as-conv"],
        "alexnet_v2/fc6",
    ),
}


@oracle
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_other_layouts_the_graph_reads_agree(alexnet, tmp_path, layout):
    verb, name, options, expected_layer = LAYOUTS[layout]
    out = tmp_path / name
    run(verb, str(alexnet.model), "--prototxt", str(alexnet.prototxt), "-o", str(out), *options)
    assert expected_layer in weightconv.load(out)
    result = verify(out, against=alexnet.model, prototxt=alexnet.prototxt)
    assert result.passed, result.report()


@oracle
def test_rgb_conversion_agrees_when_fed_rgb(alexnet, tmp_path):
    rgb = tmp_path / "rgb.npy"
    run(
        "caffe2npy",
        str(alexnet.model),
        "--prototxt",
        str(alexnet.prototxt),
        "-o",
        str(rgb),
        "--input-channels",
        "rgb",
    )
    assert verify(rgb, against=alexnet.model, prototxt=alexnet.prototxt, channel_order="rgb").passed
    wrong = verify(rgb, against=alexnet.model, prototxt=alexnet.prototxt)
    assert not wrong.passed
    assert any("do not record their input channel order" in note for note in wrong.notes)


@oracle
def test_ceil_mode_pooling_agrees(tmp_path):
    """At 231x231 every pooling rounds up: pool1 56 -> 28, pool2 28 -> 14, pool5 14 -> 7,
    where TF's VALID pooling alone gives 27, 13 and 6."""
    source = Source(tmp_path, "alexnet", "v2", input_size=231)
    result = verify(source.npy, against=source.model, prototxt=source.prototxt)
    assert result.passed, result.report()
    net = AlexNet.from_weights(source.npy, prototxt=source.prototxt)
    assert [net.shapes[name][:2] for name in ("pool1", "pool2", "pool5")] == [
        (28, 28),
        (14, 14),
        (7, 7),
    ]
    assert "pool1: pool 3x3 stride 2 pad 0 -> 28x28x12" in list(describe(net))


@oracle
def test_padded_max_pooling_matches_the_numpy_oracle():
    """Caffe pads max pooling with nothing that can win (negative inputs show it) and drops
    a last window starting in the padding (3x3/2, pad 1 on 6 -> 4, not 3)."""
    from weightconv.formats.caffe.net import LayerDef
    from weightconv.nets.architecture import Step
    from weightconv.nets.tf_ops import caffe_max_pool, import_tensorflow

    from . import numpy_forward as nf

    x = -np.random.default_rng(0).uniform(1, 2, (2, 6, 7, 3)).astype(np.float32)
    for kernel, stride, pad in [(3, 2, 1), (2, 2, 1), (3, 2, 0)]:
        layer = LayerDef(
            "pool",
            "Pooling",
            params={
                "method": "max",
                "kernel": (kernel, kernel),
                "stride": (stride, stride),
                "pad": (pad, pad),
                "global_pooling": False,
                "ceil": True,
            },
        )
        expected = nf.pooling(layer, x.astype(np.float64), [])
        got = caffe_max_pool(
            import_tensorflow(),
            x,
            Step("pool", "pool", (kernel, kernel), (stride, stride), (pad, pad)),
        ).numpy()
        assert got.shape == expected.shape, (kernel, stride, pad)
        np.testing.assert_array_equal(got, expected.astype(np.float32))


@oracle
def test_keras_model_loads_the_converted_weights_file(alexnet):
    """Keras's own loader puts weightconv's .weights.h5 into `to_keras()`'s model, and the
    model then predicts what OpenCV predicts."""
    model = AlexNet.from_weights(alexnet.npy, prototxt=alexnet.prototxt).to_keras(
        include_softmax=False
    )
    names = [layer.name for layer in model.layers if layer.weights]
    assert names == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    model.load_weights(str(alexnet.converted("h5")))
    inputs = make_inputs(count=3)
    reference = opencv_predictions(alexnet.model, alexnet.prototxt, inputs)
    logits = model.predict(inputs.bgr, verbose=0)
    scale = np.abs(reference.logits).max()
    assert np.abs(logits - reference.logits).max() < 1e-5 * scale


# --- conversion mistakes make it fail ---------------------------------------------------


def fc6_rows_chw(tensors):
    """fc6 rows left in Caffe's C, H, W order (the flatten reorder forgotten)."""
    kernel = tensors["weights"]
    c = kernel.shape[0] // 36
    tensors["weights"] = kernel.reshape(6, 6, c, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
    return tensors


def conv1_bgr_flipped(tensors):
    """conv1's input channels reversed: an RGB kernel fed BGR pixels."""
    tensors["weights"] = tensors["weights"][:, :, ::-1, :]
    return tensors


def conv2_groups_misordered(tensors):
    """conv2's two groups joined in the wrong order (group 1's filters and biases first)."""
    kernel, biases = tensors["weights"], tensors["biases"]
    half = kernel.shape[3] // 2
    tensors["weights"] = np.concatenate([kernel[..., half:], kernel[..., :half]], axis=3)
    tensors["biases"] = np.concatenate([biases[half:], biases[:half]])
    return tensors


MISTAKES = {
    "fc6-flattened-CHW": ("fc6", fc6_rows_chw),
    "conv1-BGR-swapped": ("conv1", conv1_bgr_flipped),
    "conv2-groups-misordered": ("conv2", conv2_groups_misordered),
    "lrn-alpha-not-divided": None,
}


@oracle
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_wrong_conversion_fails_with_a_clear_report(source, mistake):
    weights = weightconv.load(source.npy)
    if MISTAKES[mistake] is None:
        # TF's alpha must be Caffe's alpha / local_size: a graph that passes Caffe's 1e-4
        # straight through is what a Caffe local_size-5 LRN with alpha 5e-4 would compute.
        subject = AlexNet.from_weights(
            weights, prototxt=source.prototxt, lrn=CaffeLRN(local_size=5, alpha=5e-4)
        )
        assert [p.alpha for p in subject.lrn_parameters().values()] == pytest.approx([1e-4, 1e-4])
    else:
        layer, change = MISTAKES[mistake]
        subject = edited(weights, layer, change)
    result = verify(subject, against=source.model, prototxt=source.prototxt)
    assert not result.passed
    assert result.exit_code == 1
    summary = result.summary
    assert summary["max_abs_prob_diff"] > 100 * TOLERANCE
    assert summary["failed_images"], summary
    assert summary["top1_agree"] < 8 or summary["topk_agree"] < 8
    report = result.report()
    assert report.splitlines()[-1].startswith("FAIL: top-1 agrees on ")
    for image in result.failures():
        assert f"  {image['image']}:" in report
        assert any(problem.startswith("max |Δprob|") for problem in image["problems"])
        if not image["top1_agree"]:
            ours, ref = image["ours"][0], image["reference"][0]
            assert f"top-1 differs: {ours['class']} '{ours['label']}'" in "\n".join(
                image["problems"]
            )
            assert ref["label"] in report
    with pytest.raises(CheckFailed) as raised:
        result.check()
    assert raised.value.exit_code == 1


def test_weights_that_do_not_fit_name_the_layer_and_both_shapes(alexnet):
    weights = weightconv.load(alexnet.npy)

    def merged(tensors):  # conv2 as if its two groups were one full convolution
        tensors["weights"] = np.concatenate([tensors["weights"]] * 2, axis=2)
        return tensors

    with pytest.raises(
        ShapeError,
        match=r"conv2: weights \(5, 5, 12, 32\) do not fit the "
        r"graph, which expects \(5, 5, 6, 32\)",
    ):
        AlexNet.from_weights(edited(weights, "conv2", merged))

    def short(tensors):
        tensors["weights"] = tensors["weights"][:-32]
        return tensors

    with pytest.raises(ShapeError, match=r"fc6: .*\(1120, 512\).*\(1152, 512\).*6x6x32"):
        AlexNet.from_weights(edited(weights, "fc6", short))


# --- reference cards ---------------------------------------------------------------------


@oracle
def test_a_card_from_the_source_verifies_its_conversions(alexnet, tmp_path):
    card_path = tmp_path / "alexnet.card.json"
    card = write_card(alexnet.model, card_path, prototxt=alexnet.prototxt)
    stored = json.loads(card_path.read_text())
    assert stored == json.loads(json.dumps(card))
    assert (
        stored["model"]["caffemodel_sha1"] == hashlib.sha1(alexnet.model.read_bytes()).hexdigest()
    )
    assert stored["preprocessing"]["mean_bgr"] == pytest.approx(IMAGENET_MEAN_BGR)
    assert len(stored["images"]) == 8 and len(stored["images"][0]["top5"]) == 5
    # the card's numbers are OpenCV's
    reference = opencv_predictions(alexnet.model, alexnet.prototxt, make_inputs())
    first = stored["images"][0]["top5"][0]
    assert first["class"] == int(reference.probabilities[0].argmax())
    assert first["prob"] == pytest.approx(reference.probabilities[0].max(), abs=1e-7)

    for kind in ("ckpt", "h5"):
        result = verify(alexnet.converted(kind), card=card_path)
        assert result.passed, result.report()
        assert result.tolerance.prob == TOLERANCE
    wrong = verify(edited(weightconv.load(alexnet.npy), "fc6", fc6_rows_chw), card=card_path)
    assert not wrong.passed and wrong.exit_code == 1
    assert "reference card alexnet.card.json" in wrong.report()


@oracle
def test_a_card_with_image_files_travels_with_them(alexnet, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "cards").mkdir()
    files = []
    for index, image in enumerate(synthetic_images(2, seed=9, size=(200, 260))):
        files.append(tmp_path / "images" / f"p{index}.png")
        assert cv2.imwrite(str(files[-1]), image)
    card_path = tmp_path / "cards" / "card.json"
    card = write_card(alexnet.model, card_path, prototxt=alexnet.prototxt, images=files)
    assert [entry["file"] for entry in card["images"]] == ["../images/p0.png", "../images/p1.png"]
    assert card["images"][0]["sha256"] == hashlib.sha256(files[0].read_bytes()).hexdigest()
    assert verify(alexnet.npy, card=card_path).passed
    assert cv2.imwrite(str(files[1]), synthetic_images(1, seed=10, size=(200, 260))[0])
    with pytest.raises(CheckFailed, match=r"p1\.png: not the image the card was made with"):
        verify(alexnet.npy, card=card_path)


@oracle
def test_published_caffenet_card_reports_a_mismatch(caffenet):
    """caffenet_cat.json holds BVLC CaffeNet's published top-5 for cat.jpg; synthetic weights
    cannot reproduce it: verify must say so per class, not crash."""
    card_path = corpus_file("reference/caffenet_cat.json")
    corpus_file("images/cat.jpg")
    card = load_card(card_path)
    # the card names BVLC's deploy net; these narrow weights do not fit it, and say where
    with pytest.raises(ShapeError, match=r"conv1: weights \(11, 11, 3, 12\) .*\(11, 11, 3, 96\)"):
        verify(caffenet.npy, card=card)
    result = verify(caffenet.npy, card=card, prototxt=caffenet.prototxt)
    assert not result.passed and result.exit_code == 1
    assert result.summary["images"] == 1
    image = result.images[0]
    assert image["image"] == "cat.jpg"
    assert [e["class"] for e in image["reference"]] == [281, 282, 285, 277, 287]
    report = result.report()
    assert "281 tabby, tabby cat 0.3124" in report
    assert "top-5 differ" in report or "top-1 differs" in report
    assert any("4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46" in note for note in result.notes)
    assert any("states no tolerance" in note for note in result.notes)


# --- closed reader options ---------------------------------------------------------------


def test_an_unknown_reader_option_is_refused_by_the_reader(alexnet):
    with pytest.raises(UsageError, match=r"the npy reader takes no option 'bogus'"):
        verify(
            alexnet.npy, against=alexnet.model, prototxt=alexnet.prototxt, read_options={"bogus": 1}
        )
    with pytest.raises(UsageError, match=r"takes no option 'trust_pickle'"):
        verify(
            alexnet.converted("ckpt"),
            against=alexnet.model,
            prototxt=alexnet.prototxt,
            read_options={"trust_pickle": True},
        )
    with pytest.raises(UsageError, match=r"read_options= apply to a weight file"):
        verify(
            weightconv.load(alexnet.npy),
            against=alexnet.model,
            prototxt=alexnet.prototxt,
            read_options={"trust_pickle": True},
        )


@oracle
def test_trust_pickle_reaches_the_npy_reader(alexnet, capsys):
    result = verify(
        alexnet.npy,
        against=alexnet.model,
        prototxt=alexnet.prototxt,
        count=2,
        format="npy",
        read_options={"trust_pickle": True},
    )
    assert result.passed, result.report()
    argv = ["verify", str(alexnet.npy), "--against", str(alexnet.model)]
    argv += ["--prototxt", str(alexnet.prototxt), "--count", "2", "--trust-pickle", "--from", "npy"]
    assert cli.main(argv) == 0, capsys.readouterr()


# --- a card away from its images -----------------------------------------------------------


def _png_files(folder: Path, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, image in enumerate(synthetic_images(count, seed=seed, size=(200, 260))):
        files.append(folder / f"p{index}.png")
        assert cv2.imwrite(str(files[-1]), image)
    return files


@oracle
def test_a_copied_card_is_pointed_at_its_images(alexnet, tmp_path, capsys):
    """The card's expected predictions are OpenCV's; a copy of the card in another folder
    finds its images through `images=` / ``--image``, matched by sha256 or file name."""
    files = _png_files(tmp_path / "images", 2, seed=9)
    card_path = tmp_path / "cards" / "card.json"
    card_path.parent.mkdir()
    write_card(alexnet.model, card_path, prototxt=alexnet.prototxt, images=files)
    copied = tmp_path / "elsewhere" / "deeper" / "card.json"
    copied.parent.mkdir(parents=True)
    shutil.copy(card_path, copied)

    with pytest.raises(
        UsageError,
        match=r"card\.json: image 0 \(\.\./images/p0\.png\) is not at .*p0\.png; give its "
        r"location with images=PATH",
    ):
        verify(alexnet.npy, card=copied, prototxt=alexnet.prototxt)
    base = ["verify", str(alexnet.npy), "--card", str(copied), "--prototxt", str(alexnet.prototxt)]
    assert cli.main(base) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "image 0 (../images/p0.png) is not at" in err and "--image PATH" in err

    # pointed at the originals, one by one or by their folder: a pass
    result = verify(alexnet.npy, card=copied, prototxt=alexnet.prototxt, images=files[::-1])
    assert result.passed, result.report()
    assert [image["image"] for image in result.images] == ["p0.png", "p1.png"]
    assert cli.main([*base, "--image", str(tmp_path / "images")]) == 0
    assert "PASS" in capsys.readouterr().out

    # a renamed copy is found by its sha256; the image not given is not checked, and said so
    renamed = tmp_path / "renamed" / "holiday.png"
    renamed.parent.mkdir()
    shutil.copy(files[1], renamed)
    result = verify(alexnet.npy, card=copied, prototxt=alexnet.prototxt, images=[renamed])
    assert result.passed and result.summary["images"] == 1
    assert result.images[0]["image"] == "p1.png"
    assert "the card's image p0.png was not given and not checked" in result.notes

    # an image the card does not have: refused in one line, naming it and the card's images
    stranger = _png_files(tmp_path / "strangers", 1, seed=11)[0].rename(tmp_path / "dog.png")
    with pytest.raises(
        UsageError,
        match=r"dog\.png: not an image of .*card\.json: none of its 2 images has this sha256 "
        r"or file name \(p0\.png, p1\.png\)",
    ) as raised:
        verify(alexnet.npy, card=copied, prototxt=alexnet.prototxt, images=[files[0], stranger])
    assert "\n" not in str(raised.value)
    assert cli.main([*base, "--image", str(stranger)]) == 2
    assert "not an image of" in capsys.readouterr().err


def test_given_images_that_do_not_match_the_card_are_refused(tmp_path):
    """Refused before any image is decoded: no OpenCV needed."""
    from weightconv.verify import card_inputs

    original = tmp_path / "cat.jpg"
    original.write_bytes(b"the pixels the card was made with")
    top5 = [{"class": 1, "prob": 0.5}]
    card = {
        "_path": str(tmp_path / "card.json"),
        "images": [
            {
                "file": "cat.jpg",
                "sha256": hashlib.sha256(original.read_bytes()).hexdigest(),
                "top5": top5,
            }
        ],
    }
    edited_cat = tmp_path / "edited" / "cat.jpg"
    edited_cat.parent.mkdir()
    edited_cat.write_bytes(b"other pixels")
    with pytest.raises(CheckFailed, match=r"edited/cat\.jpg: not the image the card was made"):
        card_inputs(card, images=[edited_cat])
    with pytest.raises(UsageError, match=r"the card's cat\.jpg is given twice, also as"):
        card_inputs(card, images=[original, original])
    with pytest.raises(UsageError, match=r"dog\.jpg: no such image"):
        card_inputs(card, images=[tmp_path / "dog.jpg"])
    synthetic_card = {
        "_path": "synthetic.json",
        "images": [{"synthetic": {"index": 0}, "top5": top5}],
    }
    with pytest.raises(UsageError, match=r"whose inputs are all synthetic"):
        card_inputs(synthetic_card, images=[original])


@oracle
def test_verify_with_a_card_uses_the_cards_preprocessing(alexnet, tmp_path, capsys):
    """A card made with another pixel scale is verified with that scale, from the library and
    from the command line, unless a flag overrides it."""
    card_path = tmp_path / "scaled.json"
    card = write_card(
        alexnet.model,
        card_path,
        prototxt=alexnet.prototxt,
        count=3,
        preprocessing=Preprocessing(scale=200.0),
    )
    assert card["preprocessing"]["scale"] == 200.0
    assert verify(alexnet.npy, card=card_path, prototxt=alexnet.prototxt).passed
    argv = ["verify", str(alexnet.npy), "--card", str(card_path), "--prototxt"]
    argv.append(str(alexnet.prototxt))
    assert cli.main(argv) == 0
    assert cli.main([*argv, "--scale", "255"]) == 1
    capsys.readouterr()
