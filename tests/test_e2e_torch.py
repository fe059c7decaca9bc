"""End to end: a generated AlexNet-shaped caffemodel reaches PyTorch and ONNX Runtime and
computes what OpenCV computes from the caffemodel itself.

The torch models are written here from the prototxt's facts (grouped convolutions, Caffe's
LRN, ceil-mode pooling, fc6 reading pool5 flattened C,H,W); the oracle is OpenCV's forward of
the caffemodel. Paths: caffemodel -> .pt (strict load_state_dict, with Caffe's names and with
a torchvision-style template's names); caffemodel -> .ckpt -> .safetensors (tf layout) -> .pt
(the reverse transforms and the fc6 row order, given with torch_dense_inputs); caffemodel ->
.onnx written into a template exported from the torch model, run by ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import weightconv
from weightconv.errors import ShapeError
from weightconv.testing import synthetic

cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")
nn = torch.nn

BATCH = 4
RELATIVE = 1e-4
_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")


class Built:
    """The generated net, its files, its channel counts, some images and OpenCV's logits."""

    def __init__(self, folder: Path) -> None:
        net = synthetic.build("alexnet", width=0.25, num_classes=10, seed=11)
        self.folder = folder
        self.model = folder / "alexnet.caffemodel"
        self.prototxt = folder / "deploy.prototxt"
        net.write_caffemodel(self.model)
        self.prototxt.write_text(net.deploy_prototxt)
        shapes = net.blob_shapes()
        self.channels = [shapes[f"conv{i}"][0][0] for i in range(1, 6)]
        self.hidden = [shapes["fc6"][0][0], shapes["fc7"][0][0]]
        self.classes = shapes["fc8"][0][0]
        assert shapes["fc6"][0][1] == self.channels[4] * 36  # pool5 is C x 6 x 6
        rng = np.random.default_rng(3)
        self.x = rng.uniform(-120, 120, (BATCH, 3, 227, 227)).astype(np.float32)
        cv = cv2.dnn.readNetFromCaffe(str(self.prototxt), str(self.model))
        cv.setInput(self.x)
        self.logits = np.asarray(cv.forward("fc8"), dtype=np.float64).reshape(BATCH, -1)

    def tolerance(self) -> float:
        return RELATIVE * max(1.0, float(np.abs(self.logits).max()))

    def assert_matches(self, logits: np.ndarray) -> None:
        diff = float(np.abs(np.asarray(logits, np.float64) - self.logits).max())
        assert diff < self.tolerance(), f"max |ours - OpenCV| = {diff:.3g}"
        assert (np.argmax(logits, 1) == np.argmax(self.logits, 1)).all()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    return Built(tmp_path_factory.mktemp("e2e"))


def _lrn():
    # Caffe ACROSS_CHANNELS: x / (k + alpha/n * sum over n channels centred on c of x^2)^beta,
    # which is torch's LocalResponseNorm(n, alpha, beta, k) (it pads n//2 before, (n-1)//2 after)
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


def _pool():
    return nn.MaxPool2d(3, stride=2, ceil_mode=True)


def _features(c: list[int]) -> list:
    return [
        nn.Conv2d(3, c[0], 11, stride=4),
        nn.ReLU(),
        _lrn(),
        _pool(),
        nn.Conv2d(c[0], c[1], 5, padding=2, groups=2),
        nn.ReLU(),
        _lrn(),
        _pool(),
        nn.Conv2d(c[1], c[2], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c[2], c[3], 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(c[3], c[4], 3, padding=1, groups=2),
        nn.ReLU(),
        _pool(),
    ]


class TorchvisionStyle(nn.Module):
    """AlexNet with torchvision's names: features.0.weight, ..., classifier.6.bias."""

    def __init__(self, built: Built) -> None:
        super().__init__()
        h = built.hidden
        self.features = nn.Sequential(*_features(built.channels))
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(built.channels[4] * 36, h[0]),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(h[0], h[1]),
            nn.ReLU(),
            nn.Linear(h[1], built.classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class CaffeNamed(nn.Module):
    """The same net with the caffemodel's layer names: conv1.weight, ..., fc8.bias."""

    def __init__(self, built: Built) -> None:
        super().__init__()
        steps = _features(built.channels)
        for name, index in zip(_CONVS, (0, 4, 8, 10, 12), strict=True):
            setattr(self, name, steps[index])
        object.__setattr__(self, "steps", steps)  # run in order; registered by name above
        h = built.hidden
        self.fc6 = nn.Linear(built.channels[4] * 36, h[0])
        self.fc7 = nn.Linear(h[0], h[1])
        self.fc8 = nn.Linear(h[1], built.classes)

    def forward(self, x):
        for step in self.steps:
            x = step(x)
        x = torch.relu(self.fc6(torch.flatten(x, 1)))
        return self.fc8(torch.relu(self.fc7(x)))


def _load_strict(model, path: Path) -> None:
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()


def _logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).double().numpy()


def test_caffe2pt_loads_strictly_and_matches_opencv(built, tmp_path):
    out = tmp_path / "alexnet.pt"
    report = weightconv.convert(built.model, out, prototxt=built.prototxt)
    assert report.transforms == []  # Caffe's layout is PyTorch's: nothing is transformed
    model = CaffeNamed(built)
    _load_strict(model, out)
    built.assert_matches(_logits(model, built.x))


def test_a_torchvision_style_template_gives_the_names(built, tmp_path):
    template = tmp_path / "template.pt"
    torch.save(TorchvisionStyle(built).state_dict(), template)
    out = tmp_path / "alexnet_tv.pt"
    weightconv.convert(built.model, out, prototxt=built.prototxt, model=template)
    model = TorchvisionStyle(built)
    _load_strict(model, out)
    built.assert_matches(_logits(model, built.x))


def test_through_ckpt_and_tf_layout_safetensors(built, tmp_path):
    ckpt, st, out = tmp_path / "a.ckpt", tmp_path / "a.safetensors", tmp_path / "a.pt"
    weightconv.convert(built.model, ckpt, prototxt=built.prototxt)
    weightconv.convert(ckpt, st, safetensors_layout="tf")
    assert weightconv.load(st).source.detail["layout"] == "tf"
    with pytest.raises(ShapeError, match="torch_dense_inputs=fc6"):
        weightconv.convert(st, out)
    assert not out.exists()
    report = weightconv.convert(st, out, torch_dense_inputs={"fc6": (built.channels[4], 6, 6)})
    steps = {item["step"]: item["layers"] for item in report.transforms}  # what the writer did
    assert steps[f"flatten order H,W,C -> C,H,W ({built.channels[4]}x6x6)"] == ["fc6"]
    assert steps["conv kernel HWIO -> OIHW"] == [f"conv{i}" for i in range(1, 6)]
    model = CaffeNamed(built)
    _load_strict(model, out)
    built.assert_matches(_logits(model, built.x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_caffemodel_into_an_exported_onnx_template_runs_in_onnxruntime(built, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    template = tmp_path / "template.onnx"
    model = TorchvisionStyle(built).eval()
    torch.onnx.export(
        model,
        (torch.from_numpy(built.x[:1]),),
        str(template),
        input_names=["data"],
        output_names=["logits"],
        dynamic_axes={"data": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )
    out = tmp_path / "alexnet.onnx"
    report = weightconv.convert(built.model, out, prototxt=built.prototxt, model=template)
    assert report.tensors == 16
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"data": built.x})
    built.assert_matches(logits)
    # the template's own (random) weights compute something else
    (theirs,) = ort.InferenceSession(str(template), providers=["CPUExecutionProvider"]).run(
        None, {"data": built.x}
    )
    assert np.abs(theirs - built.logits).max() > built.tolerance()
