"""Logging for a terminal, for journald, or as JSON lines.

Under systemd, stderr is connected to the journal and ``$JOURNAL_STREAM`` names that stream
(``DEVICE:INODE``). The journal stamps every line itself, so we then print no timestamp and prefix
the syslog priority (``<4>``) so ``journalctl -p warning`` works (SyslogLevelPrefix= defaults to yes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, TextIO

from edgedet.timefmt import iso_utc

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "plain", "json", "journal")

# logging level -> syslog priority (sd-daemon(3)): debug 7, info 6, warning 4, error 3, critical 2.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

# LogRecord attributes that are not user extras (logging's own bookkeeping).
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def stream_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True if ``stream`` is the journal stream systemd gave us (not a later redirection of stderr)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


class JournalFormatter(logging.Formatter):
    """``<6>info edgedet.loop: message``: no timestamp, syslog priority prefix for journald."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = f"<{priority}>{record.levelname.lower()} {record.name}: {record.getMessage()}"
        if record.exc_info:
            # One journal entry per line: keep the traceback's lines under the same priority.
            trace = self.formatException(record.exc_info)
            text += "".join(f"\n<{priority}>{line}" for line in trace.splitlines())
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO 8601), level, logger, message, plus any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def make_formatter(fmt: str, stream: TextIO) -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        return JsonFormatter()
    if fmt == "journal" or (fmt == "auto" and stream_is_journal(stream)):
        return JournalFormatter()
    return logging.Formatter(PLAIN_FORMAT)


def setup_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger once (idempotent: a SIGHUP reload may call it again)."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    stream = stream or sys.stderr
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_edgedet", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(fmt, stream))
    handler._edgedet = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``; None means "use the config's logging: section"."""
    parser.add_argument("--log-level", choices=LEVELS, default=None,
                        help="override logging.level from the config (default: info)")
    parser.add_argument("--log-format", choices=FORMATS, default=None,
                        help="auto = journal style under systemd, else plain with timestamps; or json")
