"""The errors this package raises on purpose, under one base class.

``except MinenetError`` catches every one of them. Each also keeps the built-in base it
had before the common base existed (``InputError`` is a ``ValueError``, ``ModelLoadError``
a ``RuntimeError``), so code that catches those still catches them. They stay importable
from where they were defined first (``data.InputError``, ``zoo.ModelLoadError``,
``inference.Cancelled``).
"""

from __future__ import annotations

__all__ = ["MinenetError", "InputError", "ModelLoadError", "Cancelled"]


class MinenetError(Exception):
    """Base of the errors napari-minenet raises on purpose; the message says what to do."""


class InputError(MinenetError, ValueError):
    """The image or data given cannot be segmented as it is; the message says why."""


class ModelLoadError(MinenetError, RuntimeError):
    """A model could not be found or its files are unreadable / inconsistent."""


class Cancelled(MinenetError):
    """Raised inside a long-running core function when its cancel check returns True."""
