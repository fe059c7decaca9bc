"""The registry is the one extension point: a toy format (its module in tests/toy_format.py and
one row) gets short verbs, a default output suffix, a help group and option checking, with no
edit anywhere else."""

from __future__ import annotations

import json

import numpy as np
import pytest

import weightconv
from weightconv import cli, formats
from weightconv.errors import UsageError
from weightconv.model import Kind, Layer, WeightSet

from . import toy_format


@pytest.fixture
def toy():
    formats.register(toy_format.ROW)
    yield toy_format.ROW
    formats.unregister("toy")


def _weights() -> WeightSet:
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    return WeightSet(layers=[Layer("fc", Kind.DENSE, {"weights": values, "biases": values[0]})])


def test_the_toy_row_declares_what_its_module_takes(toy):
    assert toy.signature_problems() == []


def test_short_verbs_come_from_the_row(toy):
    verbs = formats.verbs()
    assert verbs["npy2toy"] == (("npy",), "toy")
    assert verbs["caffe2toy"] == (("caffe-h5", "caffemodel"), "toy")
    assert verbs["toy2ckpt"] == (("toy",), "ckpt")


def test_a_short_verb_writes_the_default_suffix_with_the_option(toy, tmp_path, capsys):
    weightconv.save(_weights(), tmp_path / "m.npy")
    code = cli.main(["npy2toy", str(tmp_path / "m.npy"), "--indent", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["output"] == {"path": str(tmp_path / "m.toy"), "format": "toy"}
    assert report["options"]["write"] == {"indent": 2}
    text = (tmp_path / "m.toy").read_text()
    assert text.startswith('{\n  "toy"')  # indented: the option was applied
    assert json.loads(text)["toy"]["fc/weights"] == np.arange(12).reshape(3, 4).tolist()
    back = weightconv.load(tmp_path / "m.toy")  # detected by the module's sniff
    assert np.array_equal(np.asarray(back["fc"].tensors["weights"]), np.arange(12).reshape(3, 4))


def test_the_help_shows_the_toy_group(toy, capsys):
    assert cli.main(["npy2toy", "--help"]) == 0
    out = capsys.readouterr().out
    assert "toy output options:" in out and "--indent N" in out


def test_the_toy_option_is_checked(toy, tmp_path, capsys):
    with pytest.raises(UsageError, match=r"'indnt'.*it takes: indent"):
        weightconv.save(_weights(), tmp_path / "m.toy", indnt=2)
    with pytest.raises(UsageError, match="indent must be int"):
        weightconv.save(_weights(), tmp_path / "m.toy", indent="2")
    weightconv.save(_weights(), tmp_path / "m.npy")
    code = cli.main(["convert", str(tmp_path / "m.npy"), str(tmp_path / "o.npy"), "--indent", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "--indent applies to toy output, not to npy output" in err
    assert not (tmp_path / "o.npy").exists() and not (tmp_path / "m.toy").exists()


def test_unregistered_the_toy_is_gone(tmp_path):
    assert "npy2toy" not in formats.verbs()
    with pytest.raises(UsageError, match="cannot tell the output format"):
        weightconv.save(_weights(), tmp_path / "m.toy")
