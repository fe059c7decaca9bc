"""Work on this thread while other work on the same input (a check, a kernel copy) runs on a
second one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

A = TypeVar("A")
B = TypeVar("B")


def beside(background: Callable[[], A], foreground: Callable[[], B]) -> tuple[A, B]:
    """`background()` on a second thread while `foreground()` runs on this one (for work that
    lets the GIL go: a CRC summed from a file, a kernel copy); both results once both ended.
    If `foreground` raises, that is raised once `background` has ended; else `background`'s
    failure is."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(background)
        try:
            result = foreground()
        except BaseException:
            with contextlib.suppress(Exception):
                running.result()  # it ends before the caller discards its output
            raise
        return running.result(), result


def while_checking(check: Callable[[], object], work: Callable[[], B]) -> B:
    """`work()`, with `check()` running beside it (`beside`): a failed check is raised after
    `work` ends, so what `work` made is to be discarded; `work`'s own failure comes first."""
    return beside(check, work)[1]
