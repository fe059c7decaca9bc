"""Work on this thread while a check of the same input runs on a second one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def while_checking(check: Callable[[], object], work: Callable[[], T]) -> T:
    """`work()`, with `check()` (a CRC summed from the file, which lets the GIL go) running
    on a second thread meanwhile; what `work` returned once both ended. A failed check is
    raised after `work` ends, so what `work` made is to be discarded; `work`'s own failure
    comes first."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        checking = pool.submit(check)
        try:
            result = work()
        except BaseException:
            with contextlib.suppress(Exception):
                checking.result()  # the check ends before the caller discards the output
            raise
        checking.result()
        return result
