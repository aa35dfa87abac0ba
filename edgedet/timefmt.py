"""The one timestamp format of every output (MQTT, JSON lines, JSON logs, bench and sidecar files)."""

from __future__ import annotations

from datetime import datetime, timezone


def iso_utc(wall: float) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z`` suffix, e.g. ``2024-05-01T12:00:00.123Z``."""
    return datetime.fromtimestamp(wall, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
