"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations


class HeadvecError(Exception):
    """A problem with the user's input or setup, shown as one line (the CLI exits with code 2)."""


class UnknownArchitectureError(HeadvecError):
    """The attention output projections of a model could not be found."""


class DataError(HeadvecError):
    """A malformed data row, a missing file, or inputs the model cannot take."""
