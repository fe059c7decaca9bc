"""The exceptions weightconv raises, and the exit code each one maps to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class WeightconvError(Exception):
    """Base class. The message is one line naming the file, tensor or layer and what went wrong."""

    exit_code = EXIT_BAD_INPUT


class UsageError(WeightconvError):
    """The command line or the call's arguments do not make sense together."""


class FormatError(WeightconvError):
    """A file is not in the format expected, is truncated, corrupt or unsupported."""


class ShapeError(WeightconvError):
    """A tensor's shape does not fit where it has to go."""


class MappingError(WeightconvError):
    """A name or layer cannot be mapped: missing, ambiguous or unknown."""


class UnsafeInputError(WeightconvError):
    """Reading the file would run code (a pickle that names a non-data global)."""


class OutputExistsError(WeightconvError):
    """The output exists and `force` was not given."""


class OutputError(WeightconvError):
    """The output cannot be written: the disk is full, the folder is read-only or not ours."""


class CheckFailed(WeightconvError):
    """A comparison or verification found a difference."""

    exit_code = EXIT_CHECK_FAILED
