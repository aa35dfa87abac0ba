"""Small result types shared by the classifier, the frame loop and the sinks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


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


class Sink(Protocol):
    """A consumer of results (console, JSON lines file, MQTT). ``handle`` must not block the loop."""

    def handle(self, result: FrameResult, frame: Any = None) -> None:
        """One classified frame; ``frame`` is its HxWx3 RGB image (for snapshots), valid during the call."""
        ...

    def close(self, flush_timeout_s: float | None = None) -> None:
        """Release resources; a sink that buffers (MQTT) flushes for at most ``flush_timeout_s``."""
        ...
