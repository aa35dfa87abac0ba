"""The bounded frame loop: capture on its own thread into a one-slot latest-frame buffer, classify the newest.

Capture and preprocessing run on the capture thread, so the next frame is already a model-ready tensor
when ``invoke()`` returns; the inference side only sets the tensor, invokes and post-processes. A newer
frame replaces an unread one (counted as dropped), so a slow model never builds a backlog and memory
stays flat. For sources that have a frame whenever asked (synthetic, files read as fast as possible) the
capture thread reads just in time, so it needs little CPU and inference gets every core.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from edgedet.errors import EdgedetError, SourceError
from edgedet.frames.base import Frame, FrameSource
from edgedet.model.classifier import Classifier, top_classes
from edgedet.model.preprocess import FrameError
from edgedet.model.runtime import cpu_count
from edgedet.results import FrameResult, Sink

log = logging.getLogger(__name__)

STAGES = ("capture_wait", "preprocess", "inference", "postprocess", "total", "frame_age")
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
# A reopened source must deliver this long before its backoff starts again from 1 s, so a flapping camera
# (fails every few frames) backs off like one that never opens.
BACKOFF_RESET_S = 30.0
LEAD_SLACK_S = 0.0005
# Python hands the GIL to a waiting thread only every switch interval (5 ms by default): after invoke()
# returns, the inference thread would wait that long for the capture thread's Python code. 0.2 ms keeps the
# hand-over small next to a millisecond-scale invoke.
SWITCH_INTERVAL_S = 0.0002
# SIGTERM must exit within 2 s in total (sinks still get up to 0.8 s to flush): a capture thread stuck in a
# hung camera read is a daemon thread and is left behind after this long. A reload or a bounded run that
# ends on its own may wait longer, so the old pipeline releases the camera before the new one opens it.
CAPTURE_JOIN_STOP_S = 0.5
CAPTURE_JOIN_S = 2.0


def auto_threads(cores: Optional[int] = None) -> int:
    """Inference threads for ``model.num_threads: auto``: every core.

    Measured here (2 cores, benchmarks/pipeline.py): with capture read just in time and resized by OpenCV
    (about 0.2 ms a frame), the capture thread needs so little that leaving it a core costs throughput:
    the daemon ran MobileNet V2 1.0 224 1.7x faster with 2 inference threads than with 1, and V1 0.25 128
    at the same speed. (A capture thread that produced frames continuously, the first design, made 2
    threads slower than 1: that is what just-in-time capture removed.)
    """
    return max(1, cores or cpu_count())


@dataclass
class Prepared:
    """A captured frame and its model-ready tensor."""

    frame: Frame
    frame_id: int
    tensor: Optional[np.ndarray]  # None if the frame could not be converted (counted, dropped)
    preprocess_ms: float


class LatestSlot:
    """A one-slot buffer: ``put`` replaces an unread item (counted), ``take`` waits for a new one.

    For on-demand sources the consumer also ``announce``s when it will next take a frame, so the capture
    thread can read and preprocess one just in time: fresh, and without producing frames only to drop them.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Optional[Prepared] = None
        self.replaced = 0
        self._demand_seq = 0
        self._demand_at = 0.0

    def announce(self, next_take_mono: float) -> None:
        with self._cond:
            self._demand_seq += 1
            self._demand_at = next_take_mono
            self._cond.notify_all()

    def wait_demand(self, last_seq: int, timeout_s: float) -> Optional[tuple[int, float]]:
        """The newest announcement after ``last_seq`` as (seq, monotonic time), or None on timeout."""
        with self._cond:
            if self._demand_seq == last_seq:
                self._cond.wait(timeout_s)
            if self._demand_seq == last_seq:
                return None
            return self._demand_seq, self._demand_at

    def put(self, item: Prepared) -> None:
        with self._cond:
            if self._item is not None:
                self.replaced += 1
            self._item = item
            self._cond.notify()

    def take(self, timeout_s: float) -> Optional[Prepared]:
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout_s)
            item, self._item = self._item, None
            return item

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class RollingStats:
    """Counters plus the last ``window`` samples of each stage: bounded memory however long it runs."""

    def __init__(self, window: int = 1024, fps_window_s: float = 30.0) -> None:
        self.started_mono = time.monotonic()
        self.started_wall = time.time()
        self.samples: dict[str, deque[float]] = {stage: deque(maxlen=window) for stage in STAGES}
        self._captured_at: deque[float] = deque(maxlen=4096)
        self._processed_at: deque[float] = deque(maxlen=4096)
        self.fps_window_s = fps_window_s
        self.frames_captured = 0
        self.frames_processed = 0
        self.frames_invalid = 0
        self.source_errors = 0
        self.source_reopens = 0
        self.sink_errors = 0
        self._lock = threading.Lock()

    def captured(self) -> None:
        with self._lock:
            self.frames_captured += 1
            self._captured_at.append(time.monotonic())

    def processed(self, stages: dict[str, float]) -> None:
        with self._lock:
            self.frames_processed += 1
            self._processed_at.append(time.monotonic())
            for stage, value in stages.items():
                self.samples[stage].append(value)

    def _rate(self, stamps: deque[float], now: float) -> float:
        recent = [t for t in stamps if now - t <= self.fps_window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], recent[-1] - recent[0])
        return (len(recent) - 1) / span if span > 0 else 0.0

    def snapshot(self, frames_dropped: int) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            latency = {}
            for stage, values in self.samples.items():
                arr = np.fromiter(values, dtype=np.float64, count=len(values))
                latency[stage] = ({f"p{q}": round(float(np.percentile(arr, q)), 3) for q in (50, 90, 99)}
                                  if arr.size else {"p50": None, "p90": None, "p99": None})
            return {
                "frames_captured": self.frames_captured,
                "frames_processed": self.frames_processed,
                "frames_dropped": frames_dropped,
                "frames_invalid": self.frames_invalid,
                "fps_in": round(self._rate(self._captured_at, now), 2),
                "fps_out": round(self._rate(self._processed_at, now), 2),
                "uptime_s": round(now - self.started_mono, 3),
                "source_errors": self.source_errors,
                "source_reopens": self.source_reopens,
                "sink_errors": self.sink_errors,
                "latency_ms": latency,
            }


class CaptureThread(threading.Thread):
    """Reads frames, preprocesses them and puts them in the slot; reopens a failing source with backoff."""

    def __init__(self, source: FrameSource, classifier: Classifier, slot: LatestSlot, stats: RollingStats,
                 stop: threading.Event, timeout_s: float, max_retries: int = 0, opened: bool = False) -> None:
        super().__init__(name="edgedet-capture", daemon=True)
        self.source, self.classifier, self.slot, self.stats = source, classifier, slot, stats
        self.stop, self.timeout_s, self.max_retries = stop, timeout_s, max_retries
        self.exhausted = threading.Event()
        self.fatal: Optional[BaseException] = None
        self._next_id = 0
        self._warned_invalid = False
        self._opened_by_caller = opened
        self._lead_s = 0.0

    def run(self) -> None:
        backoff = BACKOFF_MIN_S
        failures = 0
        opened, delivered = self._opened_by_caller, False
        healthy_since = time.monotonic()
        demand_seq = 0
        while not self.stop.is_set():
            if self.source.on_demand:
                demand = self.slot.wait_demand(demand_seq, 0.1)
                if demand is None:
                    continue
                demand_seq, due = demand
                # Read and preprocess so the tensor is ready just as the model becomes free.
                delay = due - self._lead_s - time.monotonic()
                if delay > 0 and self.stop.wait(delay):
                    break
            started = time.monotonic()
            try:
                if not opened:
                    self.source.open()
                    opened = True
                    healthy_since = time.monotonic()
                    if delivered or failures:
                        self.stats.source_reopens += 1
                        log.info("source reopened after %d failure(s)", failures)
                frame = self.source.read(self.timeout_s)
                if frame is None:
                    if not self.stop.is_set():
                        self.exhausted.set()
                    break
            except SourceError as exc:
                if self.stop.is_set():  # the stopping loop closed the source under the read: not a failure
                    break
                if not delivered and failures == 0:  # a bad config or a missing device at start: tell the user
                    self.fatal = exc
                    self.exhausted.set()
                    break
                opened, failures, backoff = self._failed(exc, failures, backoff)
                if failures < 0:
                    break
                continue
            except Exception as exc:  # a camera that stopped, a dropped stream, a timeout: close and reopen
                if self.stop.is_set():
                    break
                opened, failures, backoff = self._failed(exc, failures, backoff)
                if failures < 0:
                    break
                continue
            delivered, failures = True, 0
            if backoff > BACKOFF_MIN_S and time.monotonic() - healthy_since >= BACKOFF_RESET_S:
                backoff = BACKOFF_MIN_S
            self.stats.captured()
            self.slot.put(self._prepare(frame))
            # lead time = read + preprocess, smoothed, plus a little slack for the thread hand-over
            took = time.monotonic() - started
            self._lead_s = 0.8 * self._lead_s + 0.2 * (took + LEAD_SLACK_S) if self._lead_s else took + LEAD_SLACK_S
        if opened:
            self._close_source()

    def _prepare(self, frame: Frame) -> Prepared:
        frame_id = self._next_id
        self._next_id += 1
        started = time.perf_counter()
        try:
            tensor = self.classifier.preprocess(frame.image)
            # The preprocessor reuses its buffers: hand the inference thread its own copy.
            if tensor.base is not None or not tensor.flags.owndata:
                tensor = tensor.copy()
        except FrameError as exc:
            if not self._warned_invalid:
                log.warning("dropping a frame that cannot be used (%s); further ones are only counted", exc)
                self._warned_invalid = True
            tensor = None
        return Prepared(frame, frame_id, tensor, (time.perf_counter() - started) * 1e3)

    def _failed(self, exc: BaseException, failures: int, backoff: float) -> tuple[bool, int, float]:
        failures += 1
        self.stats.source_errors += 1
        self._close_source()
        if self.max_retries and failures > self.max_retries:
            self.fatal = SourceError(f"source failed {failures} times in a row, more than source.max_retries="
                                     f"{self.max_retries} ({_one_line(exc)})", where="source",
                                     fix="check the camera or stream, or raise source.max_retries (0 = forever)")
            self.exhausted.set()
            return False, -1, backoff
        log.warning("source failed (%s); reopening in %.0f s", _one_line(exc), backoff)
        self.stop.wait(backoff)
        return False, failures, min(backoff * 2, BACKOFF_MAX_S)

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception as exc:  # closing a broken camera must not kill the thread
            log.debug("closing the source failed: %s", exc)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class FrameLoop:
    """Runs capture and classification until stopped, exhausted or bounded by frames/duration."""

    def __init__(self, classifier: Classifier, source: FrameSource, sinks: list[Sink], *,
                 stop: Optional[threading.Event] = None, max_fps: float = 0.0, max_frames: int = 0,
                 duration_s: float = 0.0, timeout_s: float = 5.0, max_retries: int = 0,
                 on_frame: Optional[Callable[[FrameResult], None]] = None,
                 should_break: Optional[Callable[[], bool]] = None, source_opened: bool = False) -> None:
        self.classifier, self.source, self.sinks = classifier, source, sinks
        self.stop = stop or threading.Event()
        self.max_fps, self.max_frames, self.duration_s = max_fps, max_frames, duration_s
        self.on_frame = on_frame
        self.should_break = should_break
        self.stats = RollingStats()
        self.slot = LatestSlot()
        self._capture_stop = threading.Event()
        self.capture = CaptureThread(source, classifier, self.slot, self.stats, self._capture_stop,
                                     timeout_s, max_retries, opened=source_opened)
        self.last_result: Optional[FrameResult] = None

    def snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot(self.slot.replaced)

    def run(self) -> dict[str, Any]:
        """Blocks until done; returns the final statistics. Raises SourceError for a source that cannot start."""
        classifier = self.classifier
        interpreter = classifier.interpreter
        input_index = interpreter.get_input_details()[0]["index"]
        model_name = classifier.name
        period = 1.0 / self.max_fps if self.max_fps > 0 else 0.0
        next_due = time.monotonic()
        deadline = time.monotonic() + self.duration_s if self.duration_s > 0 else None
        busy_s = 0.0  # smoothed time from taking a frame to asking for the next one
        previous_switch = sys.getswitchinterval()
        sys.setswitchinterval(min(previous_switch, SWITCH_INTERVAL_S))
        self.slot.announce(time.monotonic())
        self.capture.start()
        try:
            while not self.stop.is_set():
                if self.max_frames and self.stats.frames_processed >= self.max_frames:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if self.should_break is not None and self.should_break():
                    break
                if period:
                    delay = next_due - time.monotonic()
                    if delay > 0 and self.stop.wait(delay):
                        break
                    next_due = max(next_due + period, time.monotonic())
                waited = time.perf_counter()
                item = self.slot.take(0.1)
                if item is None:
                    if self.capture.fatal is not None:
                        raise self.capture.fatal
                    if self.capture.exhausted.is_set():
                        break
                    continue
                taken = time.perf_counter()
                wait_ms = (taken - waited) * 1e3
                next_take = time.monotonic() + busy_s
                self.slot.announce(max(next_take, next_due) if period else next_take)
                if item.tensor is None:
                    self.stats.frames_invalid += 1
                    continue
                t1 = time.perf_counter()
                interpreter.set_tensor(input_index, item.tensor)
                interpreter.invoke()
                t2 = time.perf_counter()
                classes = top_classes(classifier.scores(), classifier.top_k, classifier.labels)
                t3 = time.perf_counter()
                inference_ms, post_ms = (t2 - t1) * 1e3, (t3 - t2) * 1e3
                age_ms = (time.monotonic() - item.frame.captured_mono) * 1e3
                stages = {"capture_wait": wait_ms, "preprocess": item.preprocess_ms, "inference": inference_ms,
                          "postprocess": post_ms, "total": item.preprocess_ms + inference_ms + post_ms,
                          "frame_age": age_ms}
                result = FrameResult(frame_id=item.frame_id, captured_wall=item.frame.captured_wall,
                                     captured_mono=item.frame.captured_mono, top_k=classes,
                                     latency_ms=stages, frame_age_ms=age_ms, model=model_name)
                self.stats.processed(stages)
                self.last_result = result
                self._deliver(result, item.frame)
                if self.on_frame is not None:
                    self.on_frame(result)
                took = time.perf_counter() - taken
                busy_s = 0.8 * busy_s + 0.2 * took if busy_s else took
        finally:
            sys.setswitchinterval(previous_switch)
            self._capture_stop.set()
            self.slot.wake()
            try:
                self.source.close()  # unblocks a read waiting on the camera
            except Exception as exc:
                log.debug("closing the source failed: %s", exc)
            join_s = CAPTURE_JOIN_STOP_S if self.stop.is_set() else CAPTURE_JOIN_S
            self.capture.join(timeout=join_s)
            if self.capture.is_alive():
                log.warning("capture thread did not stop within %.1f s; leaving it (daemon thread)", join_s)
        return self.snapshot()

    def _deliver(self, result: FrameResult, frame: Frame) -> None:
        for sink in self.sinks:
            try:
                handle_with_frame = getattr(sink, "handle_frame", None)
                if handle_with_frame is not None:
                    handle_with_frame(result, frame.image)
                else:
                    sink.handle(result)
            except Exception as exc:  # one failed publish never stops the loop
                self.stats.sink_errors += 1
                if self.stats.sink_errors <= 3 or self.stats.sink_errors % 1000 == 0:
                    log.error("sink %s failed (%d so far): %s", type(sink).__name__, self.stats.sink_errors,
                              _one_line(exc))


def close_sinks(sinks: list[Any], flush_timeout_s: Optional[float] = None) -> None:
    for sink in sinks:
        try:
            sink.close(flush_timeout_s=flush_timeout_s)
        except Exception as exc:
            log.error("closing sink %s failed: %s", type(sink).__name__, _one_line(exc))


def run_error(exc: BaseException) -> EdgedetError:
    return exc if isinstance(exc, EdgedetError) else SourceError(_one_line(exc))
