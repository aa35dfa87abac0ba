"""JSON-lines file sink: one object per classified frame, appended; flushed at least once a second."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

from edgedet.errors import ConfigError
from edgedet.results import FrameResult, LoopStats
from edgedet.timefmt import iso_utc


def result_record(result: FrameResult) -> dict:
    best = result.top_k[0]
    return {
        "frame_id": result.frame_id,
        "ts": iso_utc(result.captured_wall),
        "label": best.label, "class_id": best.id, "score": round(best.score, 6),
        "top_k": [c.as_dict() for c in result.top_k],
        "latency_ms": {k: round(v, 3) for k, v in result.latency_ms.items()},
        "frame_age_ms": round(result.frame_age_ms, 3), "model": result.model,
    }


class JsonlSink:
    def __init__(self, path: str | Path, flush_every_s: float = 1.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot open the JSON-lines file for appending ({exc.strerror})",
                              where=f"publish.jsonl_path {self.path}", fix="pick a writable path") from None
        self.flush_every_s = flush_every_s
        self._last_flush = time.monotonic()

    def handle(self, result: FrameResult, frame: object = None) -> None:
        self._file.write(json.dumps(result_record(result), separators=(",", ":")) + "\n")
        now = time.monotonic()
        if now - self._last_flush >= self.flush_every_s:
            self._file.flush()
            self._last_flush = now

    def on_stats(self, stats: LoopStats) -> None:
        pass  # one record per classified frame; statistics are not records

    def counters(self) -> dict[str, Any]:
        return {}

    def close(self, flush_timeout_s: float | None = None) -> None:
        self._file.close()
