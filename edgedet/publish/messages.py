"""Pure functions that build the MQTT payloads (the contract documented in docs/mqtt.md and docs/schemas/).

Topics live under ``<mqtt.topic_prefix>/<device_id>/``: ``status``, ``info``, ``detection``, ``stats``,
``snapshot`` and (Home Assistant) ``state``. Nothing here touches the network, so every payload is unit-testable.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional, TypeVar

from edgedet import __version__
from edgedet.machine import cpu_temperature_c
from edgedet.results import FrameResult, LoopStats
from edgedet.timefmt import iso_utc

T = TypeVar("T")

LATENCY_KEYS = ("preprocess", "inference", "postprocess", "total")
STATUS_ONLINE, STATUS_OFFLINE = "online", "offline"  # the retained ``status`` payloads


def _ms(value: Any) -> float:
    return round(float(value), 3)


def round_score(score: float) -> float:
    """A score as every message carries it."""
    return round(float(score), 6)


def frame_fields(result: FrameResult) -> dict[str, Any]:
    """What the ``detection`` and ``state`` messages say of one classified frame, in this order."""
    top = result.top_k[0] if result.top_k else None
    return {
        "frame_id": result.frame_id,
        "ts": iso_utc(result.captured_wall),
        "label": top.label if top else None,
        "class_id": top.id if top else None,
        "score": round_score(top.score) if top else None,
        "top_k": [c.as_dict() for c in result.top_k],
        "latency_ms": {k: _ms(result.latency_ms.get(k, 0.0)) for k in LATENCY_KEYS},
    }


def detection_payload(result: FrameResult, run_id: str, seq: int, model_name: str) -> dict[str, Any]:
    """One ``detection`` message. ``seq`` counts detection messages of this run: 1, 2, 3 ..."""
    payload = {"run_id": run_id, "seq": seq, **frame_fields(result), "frame_age_ms": _ms(result.frame_age_ms),
               "model": model_name or result.model}
    if result.classifier:
        payload["classifier"] = result.classifier  # one of several (models:); its topic says it too
    return payload


@dataclass(frozen=True)
class ModelSection:
    name: str
    path: str
    sha256: str
    input_shape: list[int]
    input_dtype: str
    label_count: int


@dataclass(frozen=True)
class RuntimeSection:
    name: str
    version: str
    threads: int


@dataclass(frozen=True)
class DelegateSection:
    requested: str
    active: str
    device: Optional[str]


@dataclass(frozen=True)
class SourceSection:
    type: str
    resolution: Optional[list[int]]


@dataclass(frozen=True)
class ClassifierSection:
    """One classifier of ``models:`` in the ``info`` message: what runs, on which region, how often."""

    name: str
    detection_topic: str
    roi: Optional[list[float]]
    every_n_frames: int
    interval_s: float
    model: ModelSection
    delegate: DelegateSection


@dataclass(frozen=True)
class InfoMessage:
    """The retained ``info`` message (docs/schemas/info.json). ``model``, ``runtime`` and ``delegate`` are the
    first classifier's; ``classifiers`` lists every one when ``models:`` names them (absent otherwise)."""

    edgedet_version: str
    device_id: str
    run_id: str
    started: str
    model: ModelSection
    runtime: RuntimeSection
    delegate: DelegateSection
    source: SourceSection
    classifiers: Optional[list[ClassifierSection]] = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.classifiers is None:
            del data["classifiers"]
        return data


def _section(cls: type[T], values: dict[str, Any] | None) -> T:
    """The documented keys of a section (a missing one is null); anything else the caller has stays out."""
    values = values or {}
    return cls(**{f.name: values.get(f.name) for f in fields(cls)})  # type: ignore[arg-type]


def info_payload(*, device_id: str, run_id: str, started_wall: float, model: dict[str, Any],
                 runtime: dict[str, Any], delegate: dict[str, Any], source: dict[str, Any],
                 classifiers: Optional[list[dict[str, Any]]] = None, version: str = __version__) -> dict[str, Any]:
    """The ``info`` message's JSON from the classifier's and the source's descriptions; ``classifiers``: one
    dict per classifier of ``models:`` (name, detection_topic, roi, every_n_frames, interval_s, model,
    delegate)."""
    lanes = None if classifiers is None else [ClassifierSection(
        name=c["name"], detection_topic=c["detection_topic"], roi=c.get("roi"), every_n_frames=c["every_n_frames"],
        interval_s=c["interval_s"], model=_section(ModelSection, c["model"]),
        delegate=_section(DelegateSection, c["delegate"])) for c in classifiers]
    return InfoMessage(edgedet_version=version, device_id=device_id, run_id=run_id, started=iso_utc(started_wall),
                       model=_section(ModelSection, model), runtime=_section(RuntimeSection, runtime),
                       delegate=_section(DelegateSection, delegate),
                       source=_section(SourceSection, source), classifiers=lanes).to_json()


def rss_mb() -> float:
    """Resident memory of this process in MiB (current on Linux, peak elsewhere)."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
        return round(int(fields[1]) * resource.getpagesize() / 2**20, 1)
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


@dataclass(frozen=True)
class MqttCounters:
    queued: int  # in the outbox plus sent and not yet acknowledged
    dropped: int  # evicted from a full outbox
    reconnects: int


@dataclass(frozen=True)
class StatsMessage:
    """The ``stats`` message (docs/schemas/stats.json): the frame loop's statistics and the device's."""

    device_id: str
    run_id: str
    ts: str
    loop: LoopStats
    mqtt: MqttCounters
    rss_mb: float
    cpu_temp_c: Optional[float] = None  # only where the board tells

    def to_json(self) -> dict[str, Any]:
        payload = {"device_id": self.device_id, "run_id": self.run_id, "ts": self.ts, **self.loop.as_dict(),
                   "mqtt": asdict(self.mqtt), "rss_mb": self.rss_mb}
        if self.cpu_temp_c is not None:
            payload["cpu_temp_c"] = self.cpu_temp_c
        return payload


def stats_payload(loop_stats: LoopStats, mqtt_stats: dict[str, Any], *, device_id: str, run_id: str,
                  wall: float, thermal: Optional[Path] = None) -> dict[str, Any]:
    """The ``stats`` message's JSON: the loop's statistics plus ``mqtt``, ``cpu_temp_c`` and ``rss_mb``."""
    counters = MqttCounters(**{f.name: int(mqtt_stats.get(f.name, 0)) for f in fields(MqttCounters)})
    return StatsMessage(device_id=device_id, run_id=run_id, ts=iso_utc(wall), loop=loop_stats, mqtt=counters,
                        rss_mb=rss_mb(), cpu_temp_c=cpu_temperature_c(thermal)).to_json()
