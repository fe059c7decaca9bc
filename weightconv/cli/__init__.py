"""The `weightconv` command: parse, call the library, render."""

from weightconv.cli.core import main

__all__ = ["main"]
