"""Pure functions that build the MQTT payloads (the contract documented in docs/mqtt.md and docs/schemas/).

Topics live under ``<mqtt.topic_prefix>/<device_id>/``: ``status``, ``info``, ``detection``, ``stats``,
``snapshot`` and (Home Assistant) ``state``. Nothing here touches the network, so every payload is unit-testable.
"""

from __future__ import annotations

import re
import resource
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgedet import __version__
from edgedet.results import FrameResult

TOPIC_LEAVES = ("status", "info", "detection", "stats", "snapshot", "state")
LATENCY_KEYS = ("preprocess", "inference", "postprocess", "total")
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
_TOPIC_LEVEL = re.compile(r"[^a-zA-Z0-9_-]")


def sanitize_id(raw: str) -> str:
    """Reduce an id to ``[a-zA-Z0-9_-]``: it becomes one MQTT topic level, where ``+ # /`` would break."""
    return _TOPIC_LEVEL.sub("_", raw) or "edgedet"


def topic(prefix: str, device_id: str, leaf: str) -> str:
    if leaf not in TOPIC_LEAVES:
        raise ValueError(f"unknown topic leaf {leaf!r}; expected one of {', '.join(TOPIC_LEAVES)}")
    return f"{prefix.rstrip('/')}/{device_id}/{leaf}"


def iso_utc(wall: float) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z`` suffix, e.g. ``2024-05-01T12:00:00.123Z``."""
    return datetime.fromtimestamp(wall, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _ms(value: Any) -> float:
    return round(float(value), 3)


def detection_payload(result: FrameResult, run_id: str, seq: int, model_name: str) -> dict[str, Any]:
    """One ``detection`` message. ``seq`` counts detection messages of this run: 1, 2, 3 ..."""
    top = result.top_k[0] if result.top_k else None
    return {
        "run_id": run_id,
        "seq": seq,
        "frame_id": result.frame_id,
        "ts": iso_utc(result.captured_wall),
        "label": top.label if top else None,
        "class_id": top.id if top else None,
        "score": round(float(top.score), 6) if top else None,
        "top_k": [c.as_dict() for c in result.top_k],
        "latency_ms": {k: _ms(result.latency_ms.get(k, 0.0)) for k in LATENCY_KEYS},
        "frame_age_ms": _ms(result.frame_age_ms),
        "model": model_name or result.model,
    }


def _pick(section: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    section = section or {}
    return {k: section.get(k) for k in keys}


def info_payload(*, device_id: str, run_id: str, started_wall: float, model: dict[str, Any],
                 runtime: dict[str, Any], delegate: dict[str, Any], source: dict[str, Any],
                 version: str = __version__) -> dict[str, Any]:
    """The retained ``info`` message. Each section keeps exactly the documented keys (missing -> null)."""
    return {
        "edgedet_version": version,
        "device_id": device_id,
        "run_id": run_id,
        "started": iso_utc(started_wall),
        "model": _pick(model, ("name", "path", "sha256", "input_shape", "input_dtype", "label_count")),
        "runtime": _pick(runtime, ("name", "version", "threads")),
        "delegate": _pick(delegate, ("requested", "active", "device")),
        "source": _pick(source, ("type", "resolution")),
    }


def cpu_temp_c(path: Path = THERMAL_ZONE) -> float | None:
    """The SoC temperature in °C where the board exposes it (millidegrees in sysfs), else None."""
    try:
        return round(int(path.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def rss_mb() -> float:
    """Resident memory of this process in MiB (current on Linux, peak elsewhere)."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
        return round(int(fields[1]) * resource.getpagesize() / 2**20, 1)
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def stats_payload(loop_stats: dict[str, Any], mqtt_stats: dict[str, Any], *, device_id: str, run_id: str,
                  wall: float, thermal_path: Path = THERMAL_ZONE) -> dict[str, Any]:
    """The ``stats`` message: the frame loop's statistics plus ``mqtt``, ``cpu_temp_c`` and ``rss_mb``."""
    payload: dict[str, Any] = dict(loop_stats)
    payload.update({
        "device_id": device_id,
        "run_id": run_id,
        "ts": iso_utc(wall),
        "mqtt": {k: int(mqtt_stats.get(k, 0)) for k in ("queued", "dropped", "reconnects")},
        "rss_mb": rss_mb(),
    })
    temperature = cpu_temp_c(thermal_path)
    if temperature is not None:
        payload["cpu_temp_c"] = temperature
    return payload
