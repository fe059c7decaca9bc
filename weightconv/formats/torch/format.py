"""The PyTorch format module the registry row names: `sniff`, `read` and `write`."""

from weightconv.formats.torch.read import read, sniff
from weightconv.formats.torch.write import write

__all__ = ["read", "sniff", "write"]
