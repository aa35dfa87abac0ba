"""Several classifiers on one camera: a ``Lane`` is one classifier of ``models:`` with its schedule and its own
statistics. The frame loop reads each frame once and runs every lane that is due on it, each on its own
region of interest (the region is part of the classifier's preprocessing).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Optional

from edgedet.model.classifier import Classifier

LANE_STAGES = ("preprocess", "inference", "postprocess", "total")
WINDOW = 1024  # latency samples kept per stage, as for the loop's own statistics


class Lane:
    """One classifier and when it runs: every ``every_n_frames``-th frame read, at most once per ``interval_s``.

    ``name`` is the classifier's name in ``models:`` ("" for the one ``model:``)."""

    def __init__(self, name: str, classifier: Classifier, every_n_frames: int = 1, interval_s: float = 0.0) -> None:
        self.name = name
        self.classifier = classifier
        self.every_n_frames, self.interval_s = every_n_frames, interval_s
        self._last_run = -float("inf")
        self._lock = threading.Lock()
        self.frames_processed = 0
        self._processed_at: deque[float] = deque(maxlen=4096)
        self.samples: dict[str, deque[float]] = {stage: deque(maxlen=WINDOW) for stage in LANE_STAGES}

    @property
    def every_frame(self) -> bool:
        return self.every_n_frames == 1 and self.interval_s == 0

    def due(self, frame_number: int, now: float) -> bool:
        """Whether this lane classifies the ``frame_number``-th frame read (0, 1, 2 ...) at ``now``."""
        if frame_number % self.every_n_frames:
            return False
        return self.interval_s <= 0 or now - self._last_run >= self.interval_s

    def start(self, now: float) -> None:
        """This lane classifies a frame now (``interval_s`` counts from here)."""
        self._last_run = now

    def ran(self, now: float, stages: dict[str, float]) -> None:
        with self._lock:
            self.frames_processed += 1
            self._processed_at.append(now)
            for stage in LANE_STAGES:
                self.samples[stage].append(stages[stage])

    def snapshot(self, now: Optional[float] = None, fps_window_s: float = 30.0) -> dict[str, Any]:
        """This lane's part of the ``stats`` message (``classifiers.<name>``)."""
        from edgedet.loop import percentiles, rate

        now = time.monotonic() if now is None else now
        with self._lock:
            processed, stamps = self.frames_processed, list(self._processed_at)
            samples = {stage: list(values) for stage, values in self.samples.items()}
        return {"model": self.classifier.name, "every_n_frames": self.every_n_frames, "interval_s": self.interval_s,
                "frames_processed": processed, "fps_out": round(rate(stamps, now, fps_window_s), 2),
                "latency_ms": {stage: percentiles(values, (50, 90, 99)) for stage, values in samples.items()}}
