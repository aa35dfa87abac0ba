"""The bounded frame loop: capture into a one-slot latest-frame buffer, classify the newest.

A source that has a frame whenever asked (synthetic, files read as fast as possible) is read just before the
model becomes free. A camera or a stream on its own clock is read continuously by a capture thread, so the
newest frame is always at hand; while the loop's work takes well under the camera's frame interval the loop
reads it itself instead, which gets the same frames without a thread hand-over per frame (``ReadChooser``).
A newer frame replaces an unread one (counted as dropped), so a slow model never builds a backlog and memory
stays flat. The inference side preprocesses the frame it takes, invokes
and post-processes: only frames that are classified are preprocessed, and with every core given to the
interpreter nothing else competes with ``invoke()`` (README, "The frame loop", has the measurements).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from edgedet.errors import SourceError, one_line
from edgedet.frames.base import Frame, FrameSource
from edgedet.lanes import Lane
from edgedet.model.classifier import Classifier, Inference, Invoked, Prepared
from edgedet.model.preprocess import FrameError
from edgedet.model.runtime import cpu_count
from edgedet.results import FrameResult, LoopStats, Sink
from edgedet.stagewatch import HangMonitor, StageClock

log = logging.getLogger(__name__)

STAGES = ("capture_wait", "preprocess", "inference", "postprocess", "total", "frame_age")
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
# A reopened source must deliver this long before its backoff starts again from 1 s, so a flapping camera
# (fails every few frames) backs off like one that never opens.
BACKOFF_RESET_S = 30.0
# Python hands the GIL to a waiting thread only every switch interval (5 ms by default): after invoke()
# returns, the inference thread would wait that long for the capture thread's Python code. 0.2 ms keeps the
# hand-over small next to a millisecond-scale invoke.
SWITCH_INTERVAL_S = 0.0002
# SIGTERM must exit within 2 s in total (sinks still get up to 0.8 s to flush): a capture thread stuck in a
# hung camera read is a daemon thread and is left behind after this long. A reload or a bounded run that
# ends on its own may wait longer, so the old pipeline releases the camera before the new one opens it.
CAPTURE_JOIN_STOP_S = 0.5
CAPTURE_JOIN_S = 2.0
# How often the thread that unblocks an inline camera read on SIGTERM looks whether the loop has ended.
STOPWATCH_POLL_S = 0.5


def auto_threads(cores: Optional[int] = None) -> int:
    """Inference threads for ``model.num_threads: auto``: every core. With frames read just in time the
    capture side needs so little that leaving it a core costs throughput (README, performance)."""
    return max(1, cores or cpu_count())


@dataclass
class Captured:
    """A frame as the capture thread read it, numbered by the loop (ids stay unique across reopens)."""

    frame: Frame
    frame_id: int


class LatestSlot:
    """A one-slot buffer: ``put`` replaces an unread item (counted as dropped), ``take`` waits for a new one.

    Two plain locks, not a Condition: ``_ready`` is released exactly when an item (or a wake-up) is waiting,
    so a hand-over is two C calls on each side, where Condition.wait runs a dozen lines of Python per frame.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()  # guards _item and the state of _ready
        self._ready = threading.Lock()
        self._ready.acquire()
        self._item: Optional[Captured] = None
        self.replaced = 0

    def put(self, item: Captured) -> None:
        with self._mutex:
            if self._item is not None:
                self.replaced += 1
            self._item = item
            self._signal()

    def take(self, timeout_s: float) -> Optional[Captured]:
        """The newest item, or None after ``timeout_s`` or a :meth:`wake`."""
        if not self._ready.acquire(timeout=timeout_s):
            return None
        with self._mutex:
            item, self._item = self._item, None
            return item

    def wake(self) -> None:
        """Ends a take() that is waiting (or the next one) with whatever is in the slot."""
        with self._mutex:
            self._signal()

    def _signal(self) -> None:  # under _mutex: only put() and wake() release, take() only acquires
        if self._ready.locked():
            self._ready.release()


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

    def _rate(self, stamps: list[float], now: float) -> float:
        return rate(stamps, now, self.fps_window_s)

    def snapshot(self, frames_dropped: int) -> LoopStats:
        """The statistics now. Only copying happens under the lock the frame loop takes at every frame; the
        percentiles and rates are computed after it is released, so a stats message never stalls the loop."""
        now = time.monotonic()
        with self._lock:
            samples = {stage: list(values) for stage, values in self.samples.items()}
            captured_at, processed_at = list(self._captured_at), list(self._processed_at)
            captured, processed, invalid = self.frames_captured, self.frames_processed, self.frames_invalid
            errors, reopens, sink_errors = self.source_errors, self.source_reopens, self.sink_errors
        return LoopStats(
            frames_captured=captured, frames_processed=processed, frames_dropped=frames_dropped,
            frames_invalid=invalid, fps_in=round(self._rate(captured_at, now), 2),
            fps_out=round(self._rate(processed_at, now), 2), uptime_s=round(now - self.started_mono, 3),
            source_errors=errors, source_reopens=reopens, sink_errors=sink_errors,
            latency_ms={stage: percentiles(values, (50, 90, 99)) for stage, values in samples.items()})


def rate(stamps: list[float], now: float, window_s: float) -> float:
    """Events per second over the last ``window_s`` of ``stamps`` (monotonic times, oldest first)."""
    recent = [t for t in stamps if now - t <= window_s]
    if len(recent) < 2:
        return 0.0
    span = max(now - recent[0], recent[-1] - recent[0])
    return (len(recent) - 1) / span if span > 0 else 0.0


def percentiles(values: list[float], qs: tuple[int, ...]) -> dict[str, Optional[float]]:
    """``{"p50": ..., ...}`` rounded to 3 decimals, by linear interpolation between the closest ranks (what
    ``np.percentile`` does by default) on one sort, so several percentiles cost one ``np.sort``."""
    if not values:
        return {f"p{q}": None for q in qs}
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    last = ordered.size - 1
    result: dict[str, Optional[float]] = {}
    for q in qs:
        position = q / 100.0 * last
        low = int(position)
        high = min(low + 1, last)
        value = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
        result[f"p{q}"] = round(float(value), 3)
    return result


class FrameReader:
    """Reads the next frame, opening the source and reopening it with backoff when it fails."""

    def __init__(self, source: FrameSource, stats: RollingStats, stop: threading.Event, timeout_s: float,
                 max_retries: int = 0, opened: bool = False) -> None:
        self.source, self.stats, self.stop = source, stats, stop
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.fatal: Optional[BaseException] = None  # a SourceError for the user: the run ends with it
        self._opened, self._delivered = opened, False
        self._failures, self._backoff = 0, BACKOFF_MIN_S
        self._healthy_since = time.monotonic()
        self._next_id = 0
        self.clock = StageClock("capture")  # the loop's own clock when the source is read inline

    def next_frame(self) -> Optional[Captured]:
        """The next frame, or None when the source is exhausted, the loop stops, or ``fatal`` is set."""
        while not self.stop.is_set():
            try:
                if not self._opened:
                    self.source.open()
                    self._opened = True
                    self._healthy_since = time.monotonic()
                    if self._delivered or self._failures:
                        self.stats.source_reopens += 1
                        log.info("source reopened after %d failure(s)", self._failures)
                self.clock.enter("capture")
                try:
                    frame = self.source.read(self.timeout_s)
                finally:
                    self.clock.idle()
                if frame is None:
                    return None
            except SourceError as exc:
                if self.stop.is_set():  # the stopping loop closed the source under the read: not a failure
                    return None
                if not self._delivered and self._failures == 0:  # bad config or missing device at start
                    self.fatal = exc
                    return None
                if not self._failed(exc):
                    return None
                continue
            except Exception as exc:  # a camera that stopped, a dropped stream, a timeout: close and reopen
                if self.stop.is_set():
                    return None
                if not self._failed(exc):
                    return None
                continue
            self._delivered, self._failures = True, 0
            if self._backoff > BACKOFF_MIN_S and time.monotonic() - self._healthy_since >= BACKOFF_RESET_S:
                self._backoff = BACKOFF_MIN_S
            self.stats.captured()
            captured = Captured(frame, self._next_id)
            self._next_id += 1
            return captured
        return None

    def _failed(self, exc: BaseException) -> bool:
        """Count, close, wait out the backoff; False when source.max_retries is exceeded (``fatal`` set)."""
        self._failures += 1
        self.stats.source_errors += 1
        self.close()
        if self.max_retries and self._failures > self.max_retries:
            self.fatal = SourceError(f"source failed {self._failures} times in a row, more than "
                                     f"source.max_retries={self.max_retries} ({one_line(exc)})", where="source",
                                     fix="check the camera or stream, or raise source.max_retries (0 = forever)")
            return False
        log.warning("source failed (%s); reopening in %.0f s", one_line(exc), self._backoff)
        self.stop.wait(self._backoff)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        return True

    def close(self) -> None:
        self._opened = False
        try:
            self.source.close()
        except Exception as exc:  # closing a broken camera must not kill the loop
            log.debug("closing the source failed: %s", exc)


class CaptureThread(threading.Thread):
    """For cameras and streams: reads continuously into the slot, so the newest frame is always at hand.

    :meth:`give_back` ends it after the read in progress (its frame still goes to the slot) with the source left
    open, so the loop can read it inline from then on; ``handed_back`` is set once the reader is free."""

    def __init__(self, reader: FrameReader, slot: LatestSlot) -> None:
        super().__init__(name="edgedet-capture", daemon=True)
        self.reader, self.slot = reader, slot
        self.exhausted = threading.Event()
        self.handed_back = threading.Event()
        self._give_back = threading.Event()

    def give_back(self) -> None:
        self._give_back.set()

    def run(self) -> None:
        given_back = False
        try:
            while not (given_back := self._give_back.is_set()) and (item := self.reader.next_frame()) is not None:
                self.slot.put(item)
        finally:
            (self.handed_back if given_back else self.exhausted).set()
            self.slot.wake()
            if not given_back:
                self.reader.close()


class ReadChooser:
    """For a source on its own clock (a camera, a stream, paced files): whether the loop reads it inline, on the
    thread that classifies, or through the capture thread.

    The capture thread costs a thread wake-up and a hand-over per frame (README, performance). While the loop's
    work between two reads is well under the source's frame interval, a read issued right after that work
    returns the next frame as soon as it is captured, so reading ahead gains nothing; once the work approaches
    the interval, a blocking read would delay or skip frames, and the capture thread takes over again. Decided
    once per ``WINDOW`` frames, on the upper quartile of the work, with a gap between the two bounds so the
    mode does not flap. The interval is what the capture thread saw (it reads every frame): read inline, a
    source skips frames the loop was too late for, and their intervals would look longer than the camera's.
    """

    WINDOW = 30
    INLINE_BELOW = 0.5  # the work's upper quartile, as a fraction of the frame interval
    THREAD_ABOVE = 0.75

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.inline = False
        self.interval_s: Optional[float] = None
        self._work: list[float] = []
        self._intervals: list[float] = []
        self._last: Optional[tuple[int, float]] = None  # (frame id, captured_mono) of the frame taken before

    def taken(self, frame_id: int, captured_mono: float) -> None:
        """A frame the loop took; ids are the reader's, so a gap is the frames the slot replaced."""
        last, self._last = self._last, (frame_id, captured_mono)
        if self.inline or last is None or frame_id <= last[0]:
            return
        self._intervals.append((captured_mono - last[1]) / (frame_id - last[0]))

    def worked(self, seconds: float) -> Optional[bool]:
        """The loop's work from taking a frame to asking for the next; the new mode (True: inline) when it
        changes, else None."""
        self._work.append(seconds)
        if len(self._work) < self.window:
            return None
        work = sorted(self._work)[len(self._work) * 3 // 4]
        if self._intervals:
            intervals = sorted(self._intervals)
            self.interval_s = intervals[len(intervals) // 2]
        self._work.clear()
        self._intervals.clear()
        if self.interval_s is None or self.interval_s <= 0:
            return None
        wanted = work < self.INLINE_BELOW * self.interval_s if not self.inline \
            else work <= self.THREAD_ABOVE * self.interval_s
        if wanted == self.inline:
            return None
        self.inline = wanted
        return wanted


Pending = tuple[Captured, Prepared, float, Classifier]  # a frame, where it is prepared, capture wait ms, for whom


Unfinished = tuple[Captured, Invoked, float, Classifier, Lane]  # an invoked frame, not yet ranked and delivered


class Preparer(threading.Thread):
    """The overlapped loop's second thread: on request, first ranks and delivers the frame invoked before
    (to the statistics, the sinks and ``on_frame``, in order), then, at the time it is asked for, takes the next
    frame and preprocesses it into the input tensor of the classifier's idle interpreter; one request at a time,
    so frames stay in order. One thread for both, woken once per frame: only the hand-over and the invoke stay
    between two invokes."""

    # When to start on the next frame, as a delay after the invoke starts: a late frame stalls the invoke
    # (the loop waits for it, then for its own wake-up), an early one ages while it waits. The first estimate is
    # the shortest recent invoke minus the upper quartile of recent preparations, minus a margin; from then on
    # each frame moves it: later by LATER_S after a frame that was ready in time, earlier by EARLIER_S after one
    # the loop had to wait for. It settles where LATER_S / (LATER_S + EARLIER_S) of the frames are late (5 %),
    # whatever this machine's wake-ups, sleeps and preparations cost; the README has the measured trade.
    MARGIN_S = 0.0003
    LATER_S = 5e-6
    EARLIER_S = 95e-6
    HISTORY = 16

    def __init__(self, loop: FrameLoop) -> None:
        super().__init__(name="edgedet-prepare", daemon=True)
        self.loop = loop
        self._requests: queue.SimpleQueue[Optional[tuple[Classifier, float, Optional[Unfinished]]]] = \
            queue.SimpleQueue()
        self._results: queue.SimpleQueue[Optional[Pending]] = queue.SimpleQueue()
        self._invokes: deque[float] = deque(maxlen=self.HISTORY)
        self._prepares: deque[float] = deque(maxlen=self.HISTORY)
        self._lead_s: Optional[float] = None
        self._late = False  # whether the loop had to wait for the frame it took last
        self._error: Optional[BaseException] = None
        self.clock = StageClock("prepare")

    def lead_s(self) -> float:
        """How long after an invoke starts to begin on the next frame (0 until invokes and preparations are
        known); moved by one step at each call, after the first estimate (see ``LATER_S``). Never more than the
        shortest recent invoke: a frame started after the invoke ends is late by its whole preparation."""
        if not self._invokes or not self._prepares:
            return 0.0
        shortest = min(self._invokes)
        if self._lead_s is None:
            prepares = sorted(self._prepares)
            self._lead_s = shortest - prepares[len(prepares) * 3 // 4] - self.MARGIN_S
        elif self._late:
            self._lead_s -= self.EARLIER_S
        else:
            self._lead_s += self.LATER_S
        self._lead_s = min(max(0.0, self._lead_s), shortest)
        return self._lead_s

    def request(self, classifier: Classifier, started: float, unfinished: Optional[Unfinished] = None) -> None:
        """The next frame, for ``classifier``: wanted when the invoke that started at ``started``
        (time.perf_counter) ends; 0: at once."""
        self._requests.put((classifier, started, unfinished))

    def result(self) -> Optional[Pending]:
        """The frame requested last (None: the source is exhausted or failed, or the loop stops); the frame
        handed over with the request has been delivered by then."""
        self._late = self._results.empty()
        pending = self._results.get()
        if self._error is not None:
            raise self._error
        return pending

    def invoked(self, seconds: float) -> None:
        self._invokes.append(seconds)

    def prepare(self, classifier: Classifier, started: float) -> Optional[Pending]:
        self.request(classifier, started)
        pending = self.result()
        self._late = False  # a frame asked for at once is always waited for: that says nothing of the lead
        return pending

    def reprepare(self, pending: Pending, classifier: Classifier) -> Optional[Pending]:
        """A frame prepared for the classifier a reload replaced, prepared again for the new one."""
        item, _, wait_ms, _ = pending
        try:
            return item, classifier.prepare(item.frame.image), wait_ms, classifier
        except FrameError as exc:
            self.loop._invalid(exc)
            return self.prepare(classifier, 0.0)

    def run(self) -> None:
        try:
            while (request := self._requests.get()) is not None:
                classifier, started, unfinished = request
                if unfinished is not None:
                    self.loop._finish_invoked(unfinished, self.clock)
                self._results.put(self._next(classifier, started + self.lead_s() if started else 0.0))
        except BaseException as exc:  # handed to the loop's thread, which raises it
            self._error = exc
            self._results.put(None)

    def _next(self, classifier: Classifier, due: float) -> Optional[Pending]:
        loop = self.loop
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        while True:
            started = time.perf_counter()
            item = loop._next_item()
            while item is None and not loop.inline and not loop.stop.is_set() and loop.capture is not None \
                    and not loop.capture.exhausted.is_set():
                item = loop._next_item()
            if item is None:
                return None
            taken = time.perf_counter()
            self.clock.enter("preprocess")
            try:
                prepared = classifier.prepare(item.frame.image)
            except FrameError as exc:
                loop._invalid(exc)
                continue
            finally:
                self.clock.idle()
            self._prepares.append(time.perf_counter() - started)
            return item, prepared, (taken - started) * 1e3, classifier

    def close(self) -> None:
        self._requests.put(None)
        self.join(timeout=CAPTURE_JOIN_S)


class _Bounds:
    """When a run ends (``max_frames``, ``duration_s``) and when the next frame is due under ``max_fps`` (read at
    every frame: a reload may change it)."""

    def __init__(self, loop: FrameLoop) -> None:
        self.loop = loop
        self.next_due = time.monotonic()
        self.deadline = time.monotonic() + loop.duration_s if loop.duration_s > 0 else None

    def reached(self, frames: int) -> bool:
        if self.loop.max_frames and frames >= self.loop.max_frames:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    def throttle(self) -> bool:
        """Wait for the next frame's turn; True when the loop was stopped meanwhile."""
        max_fps = self.loop.max_fps
        if max_fps > 0:
            delay = self.next_due - time.monotonic()
            if delay > 0 and self.loop.stop.wait(delay):
                return True
            self.next_due = max(self.next_due + 1.0 / max_fps, time.monotonic())
        return False


class FrameLoop:
    """Runs capture and classification until stopped, exhausted or bounded by frames/duration.

    ``between_frames`` runs on the loop's thread before each frame: a reload done there may swap the classifier
    (``classifier``), the sinks (``sinks``) or the source (``replace_source``) between two frames, and the
    statistics go on counting. ``between_frames_due``, when given, says whether it has anything to do now:
    the overlapped loop then waits for the frames in flight only when it does."""

    def __init__(self, classifier: Classifier, source: FrameSource, sinks: list[Sink], *,
                 stop: Optional[threading.Event] = None, max_fps: float = 0.0, max_frames: int = 0,
                 duration_s: float = 0.0, timeout_s: float = 5.0, max_retries: int = 0,
                 on_frame: Optional[Callable[[FrameResult], None]] = None,
                 between_frames: Optional[Callable[[], None]] = None, source_opened: bool = False,
                 overlap: Optional[bool] = None, invoke_timeout_s: float = 0.0,
                 lanes: Optional[list[Lane]] = None,
                 between_frames_due: Optional[Callable[[], bool]] = None,
                 read_chooser: Callable[[], ReadChooser] = ReadChooser) -> None:
        # Every classifier that runs on the frames (``models:``); one unnamed lane for the one ``model:``.
        self.lanes = lanes or [Lane("", classifier)]
        self.sinks = sinks
        self._frames_read = 0
        self.stop = stop or threading.Event()
        self.max_fps, self.max_frames, self.duration_s = max_fps, max_frames, duration_s
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.on_frame = on_frame
        self.between_frames = between_frames
        self.between_frames_due = between_frames_due
        self.overlap = overlap  # None: when the classifier's invoke leaves the CPU free (see run)
        self.stats = RollingStats()
        self.slot = LatestSlot()
        self._running = False
        # A stage busy longer than this ends the process (edgedet.stagewatch; 0 = off). The clocks are where
        # the loop's thread, the capture thread and the overlapped loop's Preparer are.
        self.invoke_timeout_s = invoke_timeout_s
        self.clock = StageClock("loop")
        self._preparer_clock: Optional[StageClock] = None
        self._chooser_factory = read_chooser  # one per source with its own clock
        self._attach(source, source_opened)

    def _attach(self, source: FrameSource, opened: bool) -> None:
        self.source = source
        self._capture_stop = threading.Event()
        # A source with a frame whenever asked is read inline, just before each inference: the freshest frame,
        # no thread hand-over. A camera or a stream has its own clock: it starts with the capture thread, and
        # is read inline while the loop's work leaves most of each frame interval idle (ReadChooser).
        self.inline = source.on_demand
        self._chooser = None if source.on_demand else self._chooser_factory()
        self._taken_at: Optional[float] = None
        self.reader = FrameReader(source, self.stats, self._capture_stop, self.timeout_s, self.max_retries,
                                  opened=opened)
        self.capture: Optional[CaptureThread] = None
        self._read_here(self.inline)

    def _read_here(self, inline: bool) -> None:
        """Read inline from now on, or start a capture thread (the reader is not in use by another thread)."""
        if self._running:
            log.debug("frame loop: %s", "the loop reads the source itself, it keeps up" if inline
                      else "the capture thread reads the source, the loop's work nears its frame interval")
        self.inline = inline
        # inline, a backoff wait must end on SIGTERM; the capture thread's ends when the loop ends
        self.reader.stop = self.stop if inline else self._capture_stop
        self.reader.clock = self.clock if inline else StageClock("capture")
        self.capture = None if inline else CaptureThread(self.reader, self.slot)
        if self._running and self.capture is not None:
            self.capture.start()

    def replace_source(self, source: FrameSource, opened: bool = True) -> None:
        """Between two frames (on the loop's thread): release the current source, continue with ``source``."""
        self._detach(CAPTURE_JOIN_S)
        self._attach(source, opened)

    def _detach(self, join_s: float) -> None:
        self._capture_stop.set()
        self.slot.wake()
        self.reader.close()  # also unblocks a read waiting on the camera
        if self.capture is not None and self.capture.is_alive():
            self.capture.join(timeout=join_s)
            if self.capture.is_alive():
                log.warning("capture thread did not stop within %.1f s; leaving it (daemon thread)", join_s)
        self.slot.take(0)  # a frame of the old source is not classified after the switch

    @property
    def classifier(self) -> Classifier:
        """The first lane's classifier (the only one unless ``models:`` names several)."""
        return self.lanes[0].classifier

    @classifier.setter
    def classifier(self, classifier: Classifier) -> None:
        self.lanes[0].classifier = classifier

    def snapshot(self) -> LoopStats:
        stats = self.stats.snapshot(self.slot.replaced)
        if any(lane.name for lane in self.lanes):
            now = time.monotonic()
            lanes = {lane.name: lane.snapshot(now, self.stats.fps_window_s) for lane in self.lanes}
            stats = dataclasses.replace(stats, classifiers=lanes)
        return stats

    def run(self) -> LoopStats:
        """Blocks until done; returns the final statistics. Raises SourceError for a source that cannot start.

        With a classifier whose invoke() leaves the CPU free (the Edge TPU) the next frame is captured and
        preprocessed during the current invoke (:meth:`_run_overlapped`); on the CPU the interpreter has every
        core and the frames go one after the other (``overlap`` forces either)."""
        monitor = HangMonitor(self._watched, lambda: self.invoke_timeout_s, lambda: self.timeout_s)
        monitor.start()
        try:
            single = len(self.lanes) == 1 and self.lanes[0].every_frame
            if single and (self.overlap if self.overlap is not None else self.classifier.leaves_cpu_free) \
                    and self.classifier.double_buffered():
                return self._run_overlapped()
            return self._run_serial()
        finally:
            monitor.stop()
            self.clock.idle()

    def _watched(self) -> list[StageClock]:
        clocks = [self.clock]
        if not self.inline:
            clocks.append(self.reader.clock)
        for extra in (self._preparer_clock,):
            if extra is not None:
                clocks.append(extra)
        return clocks

    @contextlib.contextmanager
    def _running_loop(self) -> Iterator[_Bounds]:
        """The frame loop's set-up and tear-down, shared by the serial and the overlapped loop."""
        previous_switch = sys.getswitchinterval()
        sys.setswitchinterval(min(previous_switch, SWITCH_INTERVAL_S))
        self._running = True
        if self.capture is not None:
            self.capture.start()
        ended = threading.Event()
        threading.Thread(target=self._unblock_on_stop, args=(ended,), name="edgedet-stopwatch", daemon=True).start()
        try:
            yield _Bounds(self)
        finally:
            ended.set()
            self._running = False
            sys.setswitchinterval(previous_switch)
            self._detach(CAPTURE_JOIN_STOP_S if self.stop.is_set() else CAPTURE_JOIN_S)

    def _unblock_on_stop(self, ended: threading.Event) -> None:
        """A camera read inline may wait up to source.timeout_s on a stalled device: when the loop is stopped,
        the source is closed under that read (``FrameSource.close`` may be called from another thread), so
        SIGTERM ends the run in time whoever reads."""
        while not self.stop.wait(STOPWATCH_POLL_S):
            if ended.is_set():
                return
        if not ended.is_set() and self.inline and self._chooser is not None:
            self.reader.close()

    def _run_serial(self) -> LoopStats:
        with self._running_loop() as bounds:
            while not self.stop.is_set():
                if bounds.reached(self.stats.frames_processed):
                    break
                if self.between_frames is not None:
                    self.between_frames()
                if bounds.throttle():
                    break
                waited = time.perf_counter()
                item = self._next_item()
                if item is None:
                    if self.reader.fatal is not None:
                        raise self.reader.fatal
                    if self.inline or (self.capture is not None and self.capture.exhausted.is_set()):
                        break
                    continue
                taken = time.perf_counter()
                # The lanes are read per frame: a reload may swap them (or a classifier) between two frames.
                self._run_lanes(self.lanes, item, (taken - waited) * 1e3)
        return self.snapshot()

    def _invalid(self, exc: FrameError) -> None:
        self.stats.frames_invalid += 1
        if self.stats.frames_invalid == 1:
            log.warning("dropping a frame that cannot be used (%s); further ones are only counted", exc)

    def _run_lanes(self, lanes: list[Lane], item: Captured, capture_wait_ms: float) -> None:
        """Every lane that is due classifies its own region of the frame, one after the other; the loop's
        statistics count the frame once, with the lanes' stage times added up (one lane: its own)."""
        frame_number, self._frames_read = self._frames_read, self._frames_read + 1
        now = time.monotonic()
        single = len(lanes) == 1
        total: Optional[dict[str, float]] = None
        for lane in lanes:
            if not lane.due(frame_number, now):
                continue
            lane.start(now)
            classifier = lane.classifier
            classifier.stage_clock = self.clock
            self.clock.enter("preprocess")
            try:
                inference = classifier.infer(item.frame.image)
            except FrameError as exc:  # the frame itself is unusable: for every lane
                self._invalid(exc)
                return
            finally:
                self.clock.idle()
            stages = self._finish(item, inference, capture_wait_ms, classifier.name, lane, count=single)
            if single:
                return
            if total is None:
                total = dict(stages)
            else:
                for stage in ("preprocess", "inference", "postprocess", "total"):
                    total[stage] += stages[stage]
                total["frame_age"] = stages["frame_age"]
            capture_wait_ms = 0.0  # the frame was waited for once
        if total is not None:
            self.stats.processed(total)

    def _finish(self, item: Captured, inference: Inference, capture_wait_ms: float, model: str, lane: Lane,
                count: bool = True, clock: Optional[StageClock] = None) -> dict[str, float]:
        clock = clock or self.clock
        age_ms = (time.monotonic() - item.frame.captured_mono) * 1e3
        stages = inference.latency_ms
        stages["total"] = stages["preprocess"] + stages["inference"] + stages["postprocess"]
        stages["capture_wait"] = capture_wait_ms
        stages["frame_age"] = age_ms
        result = FrameResult(item.frame_id, item.frame.captured_wall, item.frame.captured_mono, inference.top_k,
                             stages, age_ms, model, lane.name)
        if count:
            self.stats.processed(stages)
        if lane.name:
            lane.ran(time.monotonic(), stages)
        self._deliver(result, item.frame, clock)
        if self.on_frame is not None:
            clock.enter("on_frame")
            self.on_frame(result)
        clock.idle()
        return stages

    def _run_overlapped(self) -> LoopStats:
        """Invoke frame N on this thread while a Preparer thread ranks and delivers frame N-1, then captures
        and preprocesses frame N+1, in lockstep: every frame taken is classified once, in order, and the two
        never touch the same interpreter at the same time: the classifier's two interpreters take turns, and the
        Preparer fills and reads the one not invoking (:meth:`Classifier.prepare`, :meth:`Classifier.rank`)."""
        with self._running_loop() as bounds:
            self._overlapped(bounds)
        return self.snapshot()

    def _finish_invoked(self, unfinished: Unfinished, clock: StageClock) -> None:
        item, invoked, capture_wait_ms, classifier, lane = unfinished
        clock.enter("postprocess")
        try:
            self._finish(item, classifier.rank(invoked), capture_wait_ms, classifier.name, lane, clock=clock)
        finally:
            clock.idle()

    def _overlapped(self, bounds: _Bounds) -> None:
        preparer = Preparer(self)
        self._preparer_clock = preparer.clock
        preparer.start()
        invoked_frames = 0  # the Preparer may not have counted the last one yet
        # The frame invoked last: handed to the Preparer with the next request, or finished here where the loop
        # must have every frame delivered (a reload, the end).
        unfinished: Optional[Unfinished] = None

        def finish_here() -> None:
            nonlocal unfinished
            if unfinished is not None:
                done, unfinished = unfinished, None
                self._finish_invoked(done, self.clock)

        try:
            pending = preparer.prepare(self.classifier, 0.0)
            while pending is not None and not self.stop.is_set():
                if bounds.reached(invoked_frames):
                    break
                item, prepared, capture_wait_ms, classifier = pending
                if bounds.throttle():
                    break
                lanes = self.lanes
                if len(lanes) != 1 or not lanes[0].every_frame or not classifier.double_buffered():
                    # A reload added classifiers (or brought one with a single interpreter): their frames go in
                    # series (the Preparer stays idle, since it shares the first classifier's interpreters).
                    finish_here()
                    self._run_lanes(lanes, item, capture_wait_ms)
                    invoked_frames += 1
                    if self.between_frames is not None:
                        self.between_frames()
                    pending = preparer.prepare(self.classifier, 0.0)
                    continue

                def hand_over(classifier: Classifier = classifier) -> None:
                    # with this frame in the input tensor: the Preparer delivers the one before during this
                    # invoke, and the next frame is wanted when it ends, so it is no older than it must be
                    nonlocal unfinished
                    preparer.request(classifier, time.perf_counter(), unfinished)
                    unfinished = None

                classifier.stage_clock = self.clock
                try:
                    invoked = classifier.invoke_staged(prepared, hand_over)
                finally:
                    self.clock.idle()
                invoked_frames += 1
                preparer.invoked(invoked.inference_ms / 1e3)
                unfinished = (item, invoked, capture_wait_ms, classifier, self.lanes[0])
                pending = preparer.result()
                if self.between_frames is not None and (self.between_frames_due is None
                                                        or self.between_frames_due()):
                    finish_here()  # the frames in flight reach the sinks they were classified for
                    source = self.source
                    self.between_frames()  # the Preparer is idle here: a reload may swap anything
                    if self.source is not source:
                        pending = preparer.prepare(self.classifier, 0.0)
                    elif pending is not None and self.classifier is not pending[3]:
                        pending = preparer.reprepare(pending, self.classifier)
            if pending is None and self.reader.fatal is not None:
                raise self.reader.fatal
            finish_here()
        finally:
            try:
                finish_here()
            finally:
                self._preparer_clock = None
                preparer.close()

    def _next_item(self) -> Optional[Captured]:
        """The next frame to classify (None: none yet, or none any more); on one thread at a time (the loop's,
        or the overlapped loop's Preparer)."""
        chooser = self._chooser
        item = self._choose_reader(chooser) if chooser is not None else None
        if item is None:
            if self.inline:
                if self.stop.is_set():
                    return None
                item = self.reader.next_frame()
            else:
                item = self.slot.take(0.1)
        if item is not None and chooser is not None:
            chooser.taken(item.frame_id, item.frame.captured_mono)
            self._taken_at = time.perf_counter()
        return item

    def _choose_reader(self, chooser: ReadChooser) -> Optional[Captured]:
        """Follows ``chooser.inline``: hands the source from the capture thread to inline reads or back. Returns
        the frame the capture thread read last before it let go of the source, if it is still in the slot."""
        if self._taken_at is not None:
            chooser.worked(time.perf_counter() - self._taken_at)
            self._taken_at = None
        leftover = None
        capture = self.capture
        if capture is not None and capture.handed_back.is_set():
            capture.join()
            self._read_here(True)
            leftover = self.slot.take(0)
        if chooser.inline and self.capture is not None:
            self.capture.give_back()  # the slot is read until the thread has let go of the reader
        elif not chooser.inline and self.inline:
            self._read_here(False)
        return leftover

    def _deliver(self, result: FrameResult, frame: Frame, clock: StageClock) -> None:
        for sink in self.sinks:
            clock.enter(f"sink {type(sink).__name__}")
            try:
                sink.handle(result, frame.image)
            except Exception as exc:  # one failed publish never stops the loop
                self.stats.sink_errors += 1
                if self.stats.sink_errors <= 3 or self.stats.sink_errors % 1000 == 0:
                    log.error("sink %s failed (%d so far): %s", type(sink).__name__, self.stats.sink_errors,
                              one_line(exc))
