"""Tensors that are read on demand."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from weightconv._util.alongside import while_checking

T = TypeVar("T")


class LazyTensor:
    """A tensor known by shape and dtype whose values are read (and checked) on demand.

    Readers of indexed formats hand these out so that listing a file does not read
    it. ``np.asarray(t)`` loads the values; nothing is cached, so memory is released
    as soon as the caller drops the array.
    """

    __slots__ = ("_loader", "_releaser", "dtype", "shape")

    def __init__(
        self,
        shape: Sequence[int],
        dtype: np.dtype[Any] | type | str,
        loader: Callable[[], np.ndarray],
        releaser: Callable[[], None] | None = None,
    ) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self._loader = loader
        self._releaser = releaser

    def release(self) -> None:
        """Drop the memory-mapped pages behind the values, if the reader maps them."""
        if self._releaser is not None:
            self._releaser()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        count = 1
        for n in self.shape:
            count *= n
        return count

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def load(self) -> np.ndarray:
        return self._loader()

    def __getitem__(self, key: Any) -> Any:
        """Index like the array it stands for (reads it)."""
        return self._loader()[key]

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        array = self._loader()
        if dtype is not None and np.dtype(dtype) != array.dtype:
            return array.astype(dtype)
        return array.copy() if copy else array

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"


class FilledTensor(LazyTensor):
    """A tensor not made yet: `fill(out)` writes its values into a C-contiguous array of its
    shape and dtype, which may be a writer's mapped output file; ``np.asarray(t)`` fills a
    fresh array. A converted tensor costs nothing until its values are asked for."""

    __slots__ = ("fill",)

    def __init__(
        self,
        shape: Sequence[int],
        dtype: np.dtype[Any] | type | str,
        fill: Callable[[np.ndarray], None],
    ) -> None:
        def make() -> np.ndarray:
            out = np.empty(self.shape, self.dtype)
            fill(out)
            return out

        super().__init__(shape, dtype, make)
        self.fill = fill

    def __repr__(self) -> str:
        return f"FilledTensor(shape={self.shape}, dtype={self.dtype})"


class CheckedTensor(LazyTensor):
    """A stored tensor whose bytes lie in a mapped input and whose check (its CRC) can run
    apart from reading them: `deferred()` gives (the unchecked view, the check, which raises
    on a mismatch), or None where it cannot (then load it). A writer that only copies the
    bytes, file to file, may run the check alongside the copy, so long as a failed check
    fails the write; every other use loads the tensor, checked first, as any `LazyTensor`."""

    __slots__ = ("deferred",)

    def __init__(
        self,
        shape: Sequence[int],
        dtype: np.dtype[Any] | type | str,
        loader: Callable[[], np.ndarray],
        releaser: Callable[[], None] | None,
        deferred: Callable[[], tuple[np.ndarray, Callable[[], None]] | None],
    ) -> None:
        super().__init__(shape, dtype, loader, releaser)
        self.deferred = deferred

    def __repr__(self) -> str:
        return f"CheckedTensor(shape={self.shape}, dtype={self.dtype})"


def converted(tensor: Tensor, convert: Callable[[np.ndarray], T]) -> T:
    """``convert(np.asarray(tensor))``, except that a `CheckedTensor`'s check runs on a second
    thread while `convert` works on its unchecked values (a failed check raised after it:
    what `convert` made is to be discarded)."""
    deferred = tensor.deferred() if isinstance(tensor, CheckedTensor) else None
    if deferred is None:
        return convert(np.asarray(tensor))
    values, check = deferred
    return while_checking(check, lambda: convert(values))


#: What a layer's tensor is: an array, or a tensor read when asked for. Both index and
#: ``np.asarray()`` the same way and have ``shape``, ``dtype``, ``size`` and ``nbytes``.
Tensor = np.ndarray | LazyTensor
