"""Small result types shared by the classifier, the frame loop and the sinks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Optional, Protocol


class Class(NamedTuple):
    """One class of a classification: its id (row in the labels file), score in [0, 1] and label."""

    id: int
    score: float
    label: str

    def as_dict(self) -> dict[str, Any]:
        return {"class_id": self.id, "label": self.label, "score": round(float(self.score), 6)}


@dataclass(frozen=True)
class FrameResult:
    """What the frame loop produces for one classified frame and hands to every sink."""

    frame_id: int
    captured_wall: float  # time.time() when the frame was captured
    captured_mono: float  # time.monotonic() at the same moment
    top_k: list[Class]
    # capture_wait, preprocess, inference, postprocess, total (milliseconds)
    latency_ms: dict[str, float] = field(default_factory=dict)
    frame_age_ms: float = 0.0  # capture -> result ready
    model: str = ""
    classifier: str = ""  # the classifier's name in ``models:`` ("" for the one ``model:``)


@dataclass(frozen=True)
class LoopStats:
    """The frame loop's statistics: the loop's part of the ``stats`` message (docs/schemas/stats.json)."""

    frames_captured: int
    frames_processed: int
    frames_dropped: int  # frames a newer one replaced before the model was free
    frames_invalid: int  # frames preprocessing refused
    fps_in: float
    fps_out: float
    uptime_s: float
    source_errors: int
    source_reopens: int
    sink_errors: int
    latency_ms: dict[str, dict[str, Optional[float]]]  # stage -> {"p50", "p90", "p99"}
    # With ``models:``: each classifier's own count, rate and latencies, by name (absent for one ``model:``).
    classifiers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.classifiers:
            del data["classifiers"]
        return data


class Sink(Protocol):
    """A consumer of results (console, JSON lines file, MQTT). The frame loop and the pipeline call only these.

    The cost contract of ``handle``: it runs on the inference thread at every frame, so it does a bounded
    amount of work of the size of the result (a decision, an append to memory or to a buffered file) and
    nothing that waits: no network I/O, no lock held across I/O, no image encoding. A sink that needs more
    (MQTT payloads, snapshot JPEGs) queues the work for a thread of its own. tests/test_sink_contract.py
    holds every sink to it.
    """

    def handle(self, result: FrameResult, frame: Any = None) -> None:
        """One classified frame; ``frame`` is its HxWx3 RGB image, valid only during the call."""
        ...

    def on_stats(self, stats: LoopStats) -> None:
        """The loop's statistics, every ``publish.stats_interval_s`` and once at the end of a run."""
        ...

    def counters(self) -> dict[str, Any]:
        """This sink's own counters for the run's final statistics (e.g. ``{"mqtt": {...}}``); {} for none."""
        ...

    def close(self, flush_timeout_s: float | None = None) -> None:
        """Flush what is buffered (for at most ``flush_timeout_s`` where it waits on a network) and release."""
        ...
