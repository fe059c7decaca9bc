"""Random option sets: a conversion either applies every option it was given or fails with a
WeightconvError before writing anything (no output, no temporary, no folder)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import weightconv
from weightconv.errors import WeightconvError
from weightconv.mapping import Mapping
from weightconv.model import Kind, Layer, WeightSet

#: Option values to draw from: valid ones, wrong types, out-of-range choices, other formats'.
WRITE_VALUES = {
    "flavour": st.sampled_from(["list", "dict", "flat", "lists", 3]),
    "shards": st.sampled_from([1, 2, 3, 0, "2"]),
    "max_shard_size": st.sampled_from([100, 10_000, None, -1]),
    "write_state": st.booleans(),
    "keras_layout": st.sampled_from(["keras3", "keras2", "keras4"]),
    "trust_pickle": st.booleans(),  # a read option, never a writer's
    "bogus": st.integers(),
}
TARGETS = {"npy": ".npy", "ckpt": ".ckpt", "keras3": ".weights.h5", "keras2": ".h5"}


def _source(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    conv = Layer(
        "conv1",
        Kind.CONV,
        {"weights": rng.standard_normal((3, 3, 3, 4)).astype("f4"), "biases": np.zeros(4, "f4")},
        params={"group": 2},
    )
    fc = Layer(
        "fc1",
        Kind.DENSE,
        {"weights": rng.standard_normal((16, 5)).astype("f4"), "biases": np.ones(5, "f4")},
    )
    path = folder / "src.npy"
    weightconv.save(WeightSet(layers=[conv, fc]), path)
    return path


@st.composite
def option_sets(draw):
    target = draw(st.sampled_from(sorted(TARGETS)))
    names = draw(st.lists(st.sampled_from(sorted(WRITE_VALUES)), max_size=3, unique=True))
    write = {name: draw(WRITE_VALUES[name]) for name in names}
    mapping = {
        "names": draw(st.sampled_from(["keep", "tf1", "keras", "caffe", "slim", "bogus"])),
        "net": draw(st.sampled_from(["", "vgg_16"])),
        "scope": draw(st.sampled_from(["", "net/", "a/b"])),
        "fc_as_conv": draw(st.booleans()),
        "split_groups": draw(st.booleans()),
        "input_channels": draw(st.sampled_from([None, "rgb", "bgr"])),
        "source_channels": draw(st.sampled_from([None, "bgr"])),
    }
    skip = draw(st.sampled_from([[], ["fc1"], ["nothing*"]]))
    return target, write, mapping, skip


def _tensor_names(path: Path) -> list[str]:
    weights = weightconv.load(path)
    return [layer.tensor_name(role) for layer in weights.layers for role in layer.tensors]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option_sets())
def test_a_conversion_applies_every_option_or_writes_nothing(case):
    target, write, mapping_options, skip = case
    folder = Path(tempfile.mkdtemp())
    try:
        src = _source(folder)
        out = folder / "out" / f"model{TARGETS[target]}"
        if target.startswith("keras"):
            write = {"keras_layout": target, **write}
        try:
            mapping = Mapping(**mapping_options)
            report = weightconv.convert(src, out, write_options=write, mapping=mapping, skip=skip)
        except WeightconvError:
            assert sorted(p.name for p in folder.iterdir()) == ["src.npy"]
            return
        # applied: the report says so, and the output shows it
        defaults = {
            "flavour": None,
            "shards": 1,
            "max_shard_size": None,
            "write_state": True,
            "keras_layout": None,
        }
        assert report.options["write"] == {k: v for k, v in write.items() if v != defaults[k]}
        assert report.options["mapping"] == mapping.changed()
        assert report.options["skip"] == skip
        names = _tensor_names(out)
        assert all(name.startswith(mapping.scope) for name in names)
        if skip:
            assert not any(name.split("/")[-2:-1] == ["fc1"] or "fc1" in name for name in names)
        if target == "ckpt" and "max_shard_size" not in report.options["write"]:
            shards = write.get("shards", 1)
            assert len(list(out.parent.glob("model.ckpt.data-*"))) == shards
        if target == "ckpt":
            assert (out.parent / "checkpoint").exists() == write.get("write_state", True)
        if target == "npy":
            loaded = np.load(out, allow_pickle=True).item()
            flavour = write.get("flavour") or "list"
            first = next(iter(loaded.values()))
            expected = {"list": list, "dict": dict, "flat": np.ndarray}[flavour]
            assert isinstance(first, expected)
        if mapping.split_groups:
            assert any("_group1" in name for name in names)
    finally:
        shutil.rmtree(folder)
