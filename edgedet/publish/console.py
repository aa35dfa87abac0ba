"""Console/log sink: a line on a label change, else the latest result every ``interval_s`` (rate-limited)."""

from __future__ import annotations

import logging
import time
from typing import Any

from edgedet.model.labels import printable
from edgedet.results import FrameResult, LoopStats

log = logging.getLogger("edgedet.results")


class ConsoleSink:
    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, tuple[str | None, float]] = {}  # by classifier: the label and time last shown

    def handle(self, result: FrameResult, frame: object = None) -> None:
        best = result.top_k[0]
        now = time.monotonic()
        last_label, last_time = self._last.get(result.classifier, (None, 0.0))
        since = now - last_time
        # at most one line per interval, or a label change (but never more than 4 lines a second)
        if since < self.interval_s and (best.label == last_label or since < 0.25):
            return
        self._last[result.classifier] = (best.label, now)
        who = f"{result.classifier}: " if result.classifier else ""
        log.info("frame %d: %s%s %.3f · inference %.1f ms · age %.1f ms", result.frame_id, who,
                 printable(best.label), best.score, result.latency_ms.get("inference", 0.0), result.frame_age_ms)

    def on_stats(self, stats: LoopStats) -> None:
        pass  # the console shows detections; statistics go to the journal's STATUS= line

    def counters(self) -> dict[str, Any]:
        return {}

    def close(self, flush_timeout_s: float | None = None) -> None:
        pass
