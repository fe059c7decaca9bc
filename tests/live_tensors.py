"""Lazy dense layers whose loaded arrays are counted while alive: a writer that holds one
layer at a time never has two of them at once."""

from __future__ import annotations

import weakref

import numpy as np

from weightconv.model import CANONICAL, Kind, Layer, LazyTensor


class LiveArrays:
    def __init__(self) -> None:
        self.alive: list[int] = []
        self.most = 0

    def layers(self, count: int, shape: tuple[int, ...] = (8, 8)) -> list[Layer]:
        """`count` canonical dense layers ``fc<i>``, their weights seeded by i."""
        return [
            Layer(
                name=f"fc{i}",
                kind=Kind.DENSE,
                tensors={"weights": LazyTensor(shape, np.float32, self._loader(shape, i))},
                layout=CANONICAL,
                params={"follows_spatial": False},
            )
            for i in range(count)
        ]

    def _loader(self, shape: tuple[int, ...], seed: int):
        def load() -> np.ndarray:
            array = values(shape, seed)
            self.alive.append(seed)
            self.most = max(self.most, len(self.alive))
            weakref.finalize(array, self.alive.remove, seed)
            return array

        return load


def values(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
