""".npz weight archives (`np.savez`, `np.savez_compressed`; see `format`).

This module holds only the options the registry needs up front.
"""

from __future__ import annotations

from dataclasses import dataclass

from weightconv.formats.base import Options, option


@dataclass(frozen=True)
class NpzWriteOptions(Options):
    compressed: bool = option(
        False, help="deflate the members (np.savez_compressed); default stored (np.savez)"
    )
