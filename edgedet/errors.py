"""User-facing errors.

Every failure a user can fix (a bad file, a bad config value, missing hardware) is an ``EdgedetError``:
the CLI prints its message as one line on stderr and exits with code 2, without a traceback.
"""

from __future__ import annotations

from pathlib import Path

EXIT_USAGE = 2


def one_line(exc: BaseException) -> str:
    """An exception as one log line: its type and its message with the line breaks folded."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class EdgedetError(Exception):
    """A problem the user can fix. ``str(err)`` is the one line shown to them."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, where: str | Path | None = None, fix: str | None = None) -> None:
        self.where = str(where) if where is not None else None
        self.fix = fix
        parts = [f"{self.where}: {message}" if self.where else message]
        if fix:
            parts.append(fix)
        super().__init__("; ".join(parts))


class ModelError(EdgedetError):
    """The model file cannot be used (missing, not TFLite, wrong shape, needs a delegate...)."""


class DelegateError(EdgedetError):
    """The Edge TPU delegate could not be loaded and no fallback was allowed."""


class ImageError(EdgedetError):
    """An input image cannot be decoded or is refused (e.g. a decompression bomb)."""


class LabelsError(EdgedetError):
    """A labels file is missing or empty."""


class ConfigError(EdgedetError):
    """The configuration is invalid."""


class SourceError(EdgedetError):
    """A frame source cannot be opened."""


class UsageError(EdgedetError):
    """A command-line argument is wrong: argparse's message and where to read the usage."""

    def __init__(self, message: str, *, prog: str) -> None:
        super().__init__(f"{message} (see {prog} --help)")
