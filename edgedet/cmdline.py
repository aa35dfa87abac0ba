"""What every edgedet console command shares: one argparse class and one error line.

A usage error and an :class:`~edgedet.errors.EdgedetError` both end as ``PROG: error: MESSAGE`` on one line of
stderr and exit code 2, never a traceback (``edgedet`` and ``edgedet-host`` alike).

A subcommand parser may be built lazily (``populate``): ``edgedet run`` then never imports the modules that
define ``bench``'s or ``models``' arguments, and ``edgedet-host`` never imports TensorFlow to parse.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, Callable, NoReturn, Optional

from edgedet.errors import EdgedetError, UsageError

Populate = Callable[[argparse.ArgumentParser], None]


class OneLineParser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (one line) instead of printing usage and exiting.

    ``populate``, when given, adds the parser's arguments the first time it parses or formats help, so a
    subcommand's module is imported only when that subcommand is used."""

    def __init__(self, *args: Any, populate: Optional[Populate] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._populate = populate

    def _ensure_populated(self) -> None:
        populate, self._populate = self._populate, None
        if populate is not None:
            populate(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Optional[Sequence[str]] = None, namespace: Optional[argparse.Namespace] = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._ensure_populated()
        parsed, extras = super().parse_known_args(args, namespace)
        if not hasattr(parsed, "_command_prog"):  # the innermost subcommand parsed first and wins
            parsed._command_prog = self.prog
        return parsed, extras

    def parse_args(  # type: ignore[override]
        self, args: Optional[Sequence[str]] = None, namespace: Optional[argparse.Namespace] = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # argparse would name the top-level program; the subcommand's --help is the useful one
            raise UsageError(f"unrecognized arguments: {' '.join(extras)}",
                             prog=getattr(parsed, "_command_prog", self.prog))
        return parsed

    def format_help(self) -> str:
        self._ensure_populated()
        return super().format_help()

    def format_usage(self) -> str:
        self._ensure_populated()
        return super().format_usage()

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, prog=self.prog)


def report_error(program: str, error: EdgedetError) -> int:
    """Print ``PROGRAM: error: ERROR`` on stderr; return the exit code (2)."""
    print(f"{program}: error: {error}", file=sys.stderr, flush=True)
    return error.exit_code
