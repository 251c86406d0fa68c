"""The small set of exceptions ctgrid raises on purpose.

The CLI turns :class:`ConfigError` and :class:`DataError` into one line on stderr
and exit code 2 (bad input); everything else is a bug or a failed job.
"""
from __future__ import annotations


class CTGridError(Exception):
    """Base class of every error ctgrid raises deliberately."""


#: longer messages keep their start and end (a value repeated in full can be megabytes)
MAX_MESSAGE = 600


class ConfigError(CTGridError, ValueError):
    """A configuration value (grid key, flag, YAML entry) is invalid."""

    def __init__(self, message: object = "") -> None:
        text = str(message)
        if len(text) > MAX_MESSAGE:
            cut = len(text) - MAX_MESSAGE
            text = f"{text[:MAX_MESSAGE // 2]} ...[{cut} characters]... {text[-MAX_MESSAGE // 2:]}"
        super().__init__(text)


class DataError(CTGridError):
    """A data file is missing or malformed."""


class StoreError(CTGridError):
    """The results directory is locked, corrupt or inconsistent."""


class JobFailedError(CTGridError):
    """A job raised or trained to non-finite values; carries its record."""
