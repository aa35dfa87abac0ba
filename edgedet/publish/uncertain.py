"""``publish.save_uncertain``: keep the hard examples for retraining, bounded on disk.

A frame is kept when its top score is below ``below`` or its top label differs from the previous frame's
(a flip: one of the two is likely wrong). It is saved as the model sees it (region of interest, crop, input
size) as a lossless PNG in ``dir/<predicted label>/``; beyond ``max_mb`` the oldest files go first.

``handle`` runs on the inference thread: it decides and copies the frame into a small bounded queue (a full
queue skips the frame and counts it). The resize, the PNG encoding, the write and the deletions happen on
this sink's own thread, with a preprocessor of its own (the classifier's reuses its buffers on the
inference thread).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
from PIL import Image

from edgedet.errors import ConfigError
from edgedet.model.preprocess import InputQuantization, Preprocessor
from edgedet.publish.config import SaveUncertainConfig
from edgedet.results import FrameResult, LoopStats

log = logging.getLogger(__name__)

QUEUE_SIZE = 4
_UNSAFE = re.compile(r"[^\w.-]+")

# Only the view before quantization is used, so any quantization does.
RAW_PIXELS = InputQuantization(np.dtype(np.uint8), np.ones(3, np.float32), np.zeros(3, np.float32), raw=True)


def view_preprocessor(template: Preprocessor) -> Preprocessor:
    """A preprocessor of its own with the same view (size, ROI, crop, resize) as ``template``, giving pixels."""
    return template.copy(RAW_PIXELS)


def label_folder(label: str) -> str:
    """A label as one safe folder name (a label may hold '/' or spaces)."""
    return _UNSAFE.sub("_", label).strip("._") or "unlabelled"


def save_png(path: Path, rgb: np.ndarray) -> int:
    """Write ``rgb`` as PNG through a temporary file (a reader never sees half a file); returns its size."""
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path.stat().st_size


class _Job(NamedTuple):
    classifier: str
    label: str
    frame_id: int
    wall: float
    frame: np.ndarray
    preprocessor: Preprocessor


class DiskBudget:
    """The PNG files under a folder, oldest first, and their total size: deletes the oldest beyond a limit."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes
        found = []
        for path in [*root.glob("*/*.png"), *root.glob("*/*/*.png")]:  # label/ or classifier/label/
            try:
                st = path.stat()
            except OSError:
                continue
            found.append((st.st_mtime_ns, path.name, path, st.st_size))
        found.sort()
        self.files: deque[tuple[Path, int]] = deque((path, size) for _, _, path, size in found)
        self.total = sum(size for _, size in self.files)
        self.deleted = 0

    def add(self, path: Path, size: int) -> None:
        self.files.append((path, size))
        self.total += size
        while self.total > self.max_bytes and self.files:
            old, old_size = self.files.popleft()
            try:
                old.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("save_uncertain: cannot delete %s (%s)", old, exc)
            self.total -= old_size
            self.deleted += 1


class UncertainSink:
    """Implements the Sink protocol (edgedet/results.py). ``preprocessor`` returns the preprocessor of the
    running classifier of that name (a reload may change the model, and with it the view). The frames of one
    of several classifiers (``models:``) go to ``dir/<classifier>/<label>/``."""

    def __init__(self, cfg: SaveUncertainConfig, preprocessor: Callable[[str], Preprocessor],
                 *, queue_size: int = QUEUE_SIZE) -> None:
        self.cfg = cfg
        self.root = Path(cfg.dir)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the folder ({exc.strerror})", where=f"publish.save_uncertain.dir "
                              f"{self.root}", fix="pick a writable folder") from None
        if not os.access(self.root, os.W_OK):
            raise ConfigError("folder is not writable", where=f"publish.save_uncertain.dir {self.root}",
                              fix="pick a folder the service user may write")
        self.budget = DiskBudget(self.root, int(cfg.max_mb * 1024 * 1024))
        self._preprocessor = preprocessor
        self._views: dict[tuple[Any, ...], Preprocessor] = {}  # the view's parameters -> this thread's copy
        self._queue: queue.Queue[Optional[_Job]] = queue.Queue(maxsize=queue_size)
        self._previous: dict[str, Optional[str]] = {}  # by classifier
        self.saved = self.skipped = self.errors = 0
        self.saved_bytes = 0  # every byte written, including files deleted since
        self._thread = threading.Thread(target=self._work, name="edgedet-save-uncertain", daemon=True)
        self._thread.start()

    # -- the inference thread ----------------------------------------------------------------------------

    def handle(self, result: FrameResult, frame: Any = None) -> None:
        top = result.top_k[0] if result.top_k else None
        label = top.label if top is not None else None
        previous = self._previous.get(result.classifier)
        flipped = previous is not None and label != previous
        self._previous[result.classifier] = label
        if top is None or frame is None or not (top.score < self.cfg.below or flipped):
            return
        if self._queue.full():
            self.skipped += 1
            return
        # The frame is valid only during this call; the copy is the one cost on this thread.
        job = _Job(result.classifier, top.label, result.frame_id, result.captured_wall, np.array(frame, copy=True),
                   self._preprocessor(result.classifier))
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.skipped += 1

    def on_stats(self, stats: LoopStats) -> None:
        pass

    def counters(self) -> dict[str, Any]:
        return {"save_uncertain": {"saved": self.saved, "skipped": self.skipped, "errors": self.errors,
                                   "deleted": self.budget.deleted, "bytes_written": self.saved_bytes,
                                   "bytes_on_disk": self.budget.total,
                                   "dir": str(self.root)}}

    def close(self, flush_timeout_s: float | None = None) -> None:
        """Let the queued frames be written (for at most ``flush_timeout_s``, default 5 s), then stop."""
        deadline = time.monotonic() + (5.0 if flush_timeout_s is None else flush_timeout_s)
        while True:
            try:
                self._queue.put(None, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    return  # the worker is a daemon thread: a stuck disk does not hold up the stop
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 0.01)

    # -- this sink's thread ------------------------------------------------------------------------------

    def _view(self, template: Preprocessor) -> Preprocessor:
        key = (template.out_w, template.out_h, template.method, template.crop, template.backend, template.roi)
        view = self._views.get(key)
        if view is None:
            view = view_preprocessor(template)
            if len(self._views) >= 8:  # reloads leave views of models no longer running
                self._views.clear()
            self._views[key] = view
        return view

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._save(job)
            except Exception as exc:  # a full disk must not end the thread: count, log the first few
                self.errors += 1
                if self.errors <= 3:
                    log.error("save_uncertain: cannot save frame %d: %s", job.frame_id, exc)

    def _save(self, job: _Job) -> None:
        folder = self.root / label_folder(job.classifier) / label_folder(job.label) if job.classifier \
            else self.root / label_folder(job.label)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(job.wall)) + f"{job.wall % 1:.3f}"[1:]
        path = folder / f"{stamp}_{job.frame_id:08d}.png"
        size = save_png(path, self._view(job.preprocessor).view(job.frame))
        self.saved += 1
        self.saved_bytes += size
        self.budget.add(path, size)
