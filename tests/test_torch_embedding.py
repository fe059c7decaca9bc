"""A 2-D weight without a bias is a bias-free Linear or an embedding table: the TensorFlow
layout transposes the one and not the other, so converting it there asks which."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import weightconv


@pytest.fixture
def state_dict(tmp_path):
    table = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    path = tmp_path / "model.pt"
    torch.save(
        {"embed.weight": table, "fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}, path
    )
    return path, table.numpy()


def test_converting_it_to_the_tensorflow_layout_is_refused_with_the_choices(state_dict, tmp_path):
    path, _ = state_dict
    with pytest.raises(
        weightconv.ShapeError, match=r"'embed'.*embedding table.*dense_inputs=embed=N.*skip=embed"
    ):
        weightconv.convert(path, tmp_path / "out.npy")
    assert not (tmp_path / "out.npy").exists()


def test_said_to_be_dense_it_is_transposed_and_skipped_it_is_left_out(state_dict, tmp_path):
    path, table = state_dict
    weightconv.convert(path, tmp_path / "dense.npy", dense_inputs={"embed": (3,), "fc": (3,)})
    dense = np.load(tmp_path / "dense.npy", allow_pickle=True).item()
    assert np.array_equal(dense["embed"][0], table.T)
    weightconv.convert(path, tmp_path / "skipped.npy", skip=["embed"], dense_inputs={"fc": (3,)})
    assert "embed" not in np.load(tmp_path / "skipped.npy", allow_pickle=True).item()


def test_same_layout_routes_keep_it_as_it_is(state_dict, tmp_path):
    path, table = state_dict
    weightconv.convert(path, tmp_path / "copy.pt")
    back = torch.load(tmp_path / "copy.pt", weights_only=True)
    assert np.array_equal(back["embed.weight"].numpy(), table)
