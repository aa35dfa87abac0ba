"""JSON-lines file sink: one object per classified frame, appended with one write each."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

from edgedet.errors import ConfigError
from edgedet.results import FrameResult, LoopStats
from edgedet.timefmt import iso_utc

log = logging.getLogger("edgedet.jsonl")


def result_record(result: FrameResult) -> dict:
    best = result.top_k[0]
    record = {
        "frame_id": result.frame_id,
        "ts": iso_utc(result.captured_wall),
        "label": best.label, "class_id": best.id, "score": round(best.score, 6),
        "top_k": [c.as_dict() for c in result.top_k],
        "latency_ms": {k: round(v, 3) for k, v in result.latency_ms.items()},
        "frame_age_ms": round(result.frame_age_ms, 3), "model": result.model,
    }
    if result.classifier:
        record["classifier"] = result.classifier  # one of models:
    return record


class JsonlSink:
    """Appends one record per frame with one ``write`` each, so the file never holds half a record followed by
    the next one: a record that does not fit (full disk, file size limit) is cut off again and counted, a torn
    tail left by a power cut is cut at the next start. Both are said in one line, and so is the recovery."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = self._cut_torn_tail()
        except OSError as exc:
            raise ConfigError(f"cannot open the JSON-lines file for appending ({exc.strerror})",
                              where=f"publish.jsonl_path {self.path}", fix="pick a writable path") from None
        self._failing = False
        self.lost = 0

    def _cut_torn_tail(self) -> int:
        """Truncate a last record without its newline (a crash mid-write); returns the file size."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0
        with self.path.open("rb") as f:
            keep = size
            step = 4096
            while keep > 0:
                start = max(0, keep - step)
                f.seek(start)
                chunk = f.read(keep - start)
                if keep == size and chunk.endswith(b"\n"):
                    return size
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                keep = start
        os.ftruncate(self._fd, keep)
        log.warning("%s: cut a torn last record (%d bytes, the previous run stopped mid-write)", self.path,
                    size - keep)
        return keep

    def handle(self, result: FrameResult, frame: object = None) -> None:
        data = (json.dumps(result_record(result), separators=(",", ":")) + "\n").encode()
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            self._lost(exc)
            return
        self._size += written
        if self._failing:
            self._failing = False
            log.warning("%s: writing works again (%d record(s) were not written)", self.path, self.lost)

    def _lost(self, exc: OSError) -> None:
        self.lost += 1
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._size)  # never leave half a record for the next one to be glued to
        if not self._failing:
            self._failing = True
            log.error("%s: cannot write (%s); records are skipped until there is room again: free space on "
                      "its disk or point publish.jsonl_path elsewhere", self.path, exc.strerror or exc)

    def on_stats(self, stats: LoopStats) -> None:
        pass  # one record per classified frame; statistics are not records

    def counters(self) -> dict[str, Any]:
        return {}

    def close(self, flush_timeout_s: float | None = None) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
