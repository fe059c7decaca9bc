"""``--model TEMPLATE`` for PyTorch: our layers take a target state dict's names (paired in
order by role and shape), `map --explain` shows each pairing, and a pairing that breaks is
refused where it breaks. The templates are torch modules' own state dicts; what is written
is loaded back by torch, strictly."""

from __future__ import annotations

import json

import numpy as np
import pytest

import weightconv
from weightconv import cli
from weightconv.errors import MappingError
from weightconv.mapping.template import explain_template
from weightconv.model import CAFFE, Kind, Layer, WeightSet
from weightconv.testing import synthetic

torch = pytest.importorskip("torch")
nn = torch.nn


class LeNetStyle(nn.Module):
    """LeNet with torchvision-style names: features.0, features.2, classifier.0, classifier.2."""

    def __init__(self, c1: int, c2: int, hidden: int, classes: int, extra: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5), nn.MaxPool2d(2), nn.Conv2d(c1, c2, 5), nn.MaxPool2d(2)
        )
        tail = [nn.Linear(hidden, classes)] + ([nn.ReLU(), nn.Linear(classes, 3)] if extra else [])
        self.classifier = nn.Sequential(nn.Linear(c2 * 16, hidden), nn.ReLU(), *tail)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("lenet")
    net = synthetic.build("lenet", width=0.5, num_classes=10, seed=4)
    net.write_caffemodel(root / "lenet.caffemodel")
    (root / "deploy.prototxt").write_text(net.deploy_prototxt)
    shapes = net.blob_shapes()
    sizes = (shapes["conv1"][0][0], shapes["conv2"][0][0], shapes["ip1"][0][0], 10)
    return root, net, sizes


def _template(path, sizes, **kwargs):
    torch.save(LeNetStyle(*sizes, **kwargs).state_dict(), path)
    return path


def test_the_written_state_dict_loads_strictly_with_the_templates_names(lenet, tmp_path):
    root, net, sizes = lenet
    template = _template(tmp_path / "template.pt", sizes)
    out = tmp_path / "lenet.pt"
    report = weightconv.convert(
        root / "lenet.caffemodel", out, prototxt=root / "deploy.prototxt", model=template
    )
    assert any("8 tensors paired" in note for note in report.notes)
    model = LeNetStyle(*sizes)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    pairs = {
        "features.0": "conv1",
        "features.2": "conv2",
        "classifier.0": "ip1",
        "classifier.2": "ip2",
    }
    state = model.state_dict()
    for theirs, ours in pairs.items():
        weights, biases = net.weights[ours]  # the generator's own arrays, Caffe layout
        written = state[f"{theirs}.weight"].numpy()
        assert np.array_equal(written, weights.reshape(written.shape))
        assert np.array_equal(state[f"{theirs}.bias"].numpy(), biases.reshape(-1))


def test_map_explain_shows_each_pairing(lenet, tmp_path, capsys):
    root, _, sizes = lenet
    template = _template(tmp_path / "template.pt", sizes)
    argv = ["map", str(root / "lenet.caffemodel"), "--model", str(template), "--explain"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    c1 = sizes[0]
    assert f"conv1/weights ({c1}, 1, 5, 5) -> features.0.weight ({c1}, 1, 5, 5): as is" in lines
    assert lines[-1] == "ip2/biases (10) -> classifier.2.bias (10): as is"
    assert len(lines) == 8
    assert cli.main([*argv, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert [row["to"] for row in plan][:2] == ["features.0.weight", "features.0.bias"]
    rows = explain_template(weightconv.load(root / "lenet.caffemodel"), template)
    assert rows == plan


def test_a_count_mismatch_says_where_the_pairing_broke(lenet, tmp_path, capsys):
    root, _, sizes = lenet
    template = _template(tmp_path / "bigger.pt", sizes, extra=True)
    with pytest.raises(MappingError, match=r"has 5 weighted layers, ours 4: after 8 paired .*"):
        weightconv.convert(root / "lenet.caffemodel", tmp_path / "o.pt", model=template)
    assert not (tmp_path / "o.pt").exists()
    out = str(tmp_path / "o.pt")
    code = cli.main(
        ["caffe2pt", str(root / "lenet.caffemodel"), "-o", out, "--model", str(template)]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "classifier.4.weight" in err
    assert not (tmp_path / "o.pt").exists()


def test_a_shape_mismatch_names_both_layers(lenet, tmp_path):
    root, _, (c1, c2, hidden, classes) = lenet
    template = _template(tmp_path / "narrow.pt", (c1 + 1, c2, hidden, classes))
    with pytest.raises(
        MappingError, match=r"broke at our layer #1 conv1 .*features\.0\.weight 11x1x5x5"
    ):
        weightconv.convert(root / "lenet.caffemodel", tmp_path / "o.pt", model=template)


def test_a_dtype_the_template_does_not_have_is_refused(lenet, tmp_path):
    root, _, sizes = lenet
    template = tmp_path / "double.pt"
    torch.save(LeNetStyle(*sizes).double().state_dict(), template)
    with pytest.raises(MappingError, match=r"features\.0\.weight is float64.*float32"):
        weightconv.convert(root / "lenet.caffemodel", tmp_path / "o.pt", model=template)
    assert not (tmp_path / "o.pt").exists()


def test_a_caffe_batchnorm_and_its_scale_fill_one_torch_batchnorm(tmp_path):
    rng = np.random.default_rng(1)
    conv = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
    mean, var = rng.standard_normal(4, dtype=np.float32), rng.uniform(1, 2, 4).astype(np.float32)
    gamma, beta = rng.standard_normal(4, dtype=np.float32), rng.standard_normal(4, dtype=np.float32)
    factor = np.array([2.0], np.float32)
    weights = WeightSet(
        layers=[
            Layer("conv1", Kind.CONV, {"weights": conv}, layout=CAFFE),
            Layer(
                "bn1",
                Kind.BATCHNORM,
                {"mean": mean * 2, "variance": var * 2, "scale_factor": factor},
                layout=CAFFE,
            ),
            Layer("scale1", Kind.SCALE, {"scale": gamma, "offset": beta}, layout=CAFFE),
        ]
    )
    module = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    template = tmp_path / "bn.pt"
    torch.save(module.state_dict(), template)
    weightconv.save(weights, tmp_path / "o.pt", model=template)
    module.load_state_dict(torch.load(tmp_path / "o.pt", weights_only=True), strict=True)
    bn = module[1]
    assert np.array_equal(module[0].weight.detach().numpy(), conv)
    assert np.array_equal(bn.weight.detach().numpy(), gamma)
    assert np.array_equal(bn.bias.detach().numpy(), beta)
    np.testing.assert_array_equal(bn.running_mean.numpy(), mean)
    np.testing.assert_array_equal(bn.running_var.numpy(), var)
    assert int(bn.num_batches_tracked) == 0  # the template's own count
