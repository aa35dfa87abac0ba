"""The one small interface every frame source implements, and the pacing they share."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np


@dataclass
class Frame:
    frame_id: int
    image: np.ndarray  # HxWx3 uint8 RGB
    captured_wall: float  # time.time() when the frame was captured
    captured_mono: float  # time.monotonic() when the frame was captured


class FrameSource(ABC):
    """A source of RGB frames.

    ``read`` blocks until the next fresh frame (paced by the source's fps) and returns ``None`` once the
    source is exhausted. Problems the user must fix raise ``edgedet.errors.SourceError``; transient ones
    (a camera that stopped delivering, a stream that dropped) raise ordinary exceptions, including
    ``TimeoutError`` when no frame came within ``timeout_s``, so the loop can close and reopen the source.
    ``close`` may be called from another thread to unblock a waiting ``read`` (which then returns None).
    """

    def __init__(self) -> None:
        self._closed = threading.Event()
        self._next_frame_id = 0

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self, timeout_s: float) -> Frame | None: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None:
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _make_frame(self, image: np.ndarray, captured_wall: float | None = None,
                    captured_mono: float | None = None) -> Frame:
        frame = Frame(
            frame_id=self._next_frame_id,
            image=image,
            captured_wall=time.time() if captured_wall is None else captured_wall,
            captured_mono=time.monotonic() if captured_mono is None else captured_mono,
        )
        self._next_frame_id += 1
        return frame

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class FramePacer:
    """Releases frames at ``fps`` on a drift-free schedule (0 = no pacing).

    A consumer that falls behind by more than one period restarts the schedule instead of receiving a
    burst of back-to-back frames to "catch up": a burst would only be dropped by the latest-frame buffer.
    """

    def __init__(self, fps: float, stop: threading.Event) -> None:
        self.period_s = 1.0 / fps if fps > 0 else 0.0
        self._stop = stop
        self._next_due: float | None = None

    def wait(self, timeout_s: float) -> bool:
        """Sleep until the next frame is due. False if the source was closed while waiting.

        Raises TimeoutError when the next frame is due later than ``timeout_s`` from now.
        """
        if self.period_s == 0.0:
            return not self._stop.is_set()
        now = time.monotonic()
        if self._next_due is None or now - self._next_due > self.period_s:
            self._next_due = now
        delay = self._next_due - now
        if delay > timeout_s:
            if self._stop.wait(timeout_s):
                return False
            raise TimeoutError(f"next frame is due in {delay:.3f} s, later than the {timeout_s} s timeout")
        if delay > 0 and self._stop.wait(delay):
            return False
        self._next_due += self.period_s
        return not self._stop.is_set()

    def reset(self) -> None:
        self._next_due = None
