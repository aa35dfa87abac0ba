"""Detects a stage of the frame loop that never returns (a hung USB Coral, a camera read stuck in the driver).

The loop's threads note where they are in a :class:`StageClock` (one attribute write per stage: a tuple, which
is atomic under the GIL). A :class:`HangMonitor` thread looks at the clocks once a second; a stage busy for
longer than ``model.invoke_timeout_s`` is logged in one line and the process ends with :data:`EXIT_HUNG`, so
systemd (``Restart=on-failure``) or any other supervisor starts it again. A hung C call cannot be interrupted
and a clean shutdown would wait for it, hence ``os._exit``; nothing is published on the way out (an MQTT
flush could block too). Under systemd the watchdog, fed only per processed frame, catches the same hang.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Callable, Optional

log = logging.getLogger("edgedet.stagewatch")

EXIT_HUNG = 3  # a stage did not return within model.invoke_timeout_s (docs/systemd.md)


class StageClock:
    """Where one thread of the loop is: ``at`` is ``(stage, entered_at)`` (time.monotonic), or None when idle
    (waiting for a frame, backing off, reloading: waits that end on their own)."""

    __slots__ = ("at", "thread")

    def __init__(self, thread: str) -> None:
        self.thread = thread
        self.at: Optional[tuple[str, float]] = None

    def enter(self, stage: str) -> None:
        self.at = (stage, time.monotonic())

    def idle(self) -> None:
        self.at = None


class HangMonitor(threading.Thread):
    """Watches the clocks ``clocks()`` returns; they and ``timeout_s()`` (0 = off) are read at every check,
    as a reload may change them.
    ``capture_grace_s()`` is added for the capture stage, whose read has its own timeout (source.timeout_s)."""

    def __init__(self, clocks: Callable[[], list[StageClock]], timeout_s: Callable[[], float],
                 capture_grace_s: Callable[[], float] = lambda: 0.0, *,
                 on_hang: Optional[Callable[[int], None]] = None) -> None:
        super().__init__(name="edgedet-hangwatch", daemon=True)
        self.clocks, self.timeout_s, self.capture_grace_s = clocks, timeout_s, capture_grace_s
        self.on_hang = on_hang or _exit
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self._period()):
            hung = self.check(time.monotonic())
            if hung is not None:
                self.on_hang(EXIT_HUNG)
                return

    def _period(self) -> float:
        timeout = self.timeout_s()
        return min(1.0, timeout / 4) if timeout > 0 else 1.0

    def check(self, now: float) -> Optional[str]:
        """The stage found hung (already logged), or None."""
        timeout = self.timeout_s()
        if timeout <= 0:
            return None
        for clock in self.clocks():
            at = clock.at
            if at is None:
                continue
            stage, entered = at
            limit = timeout + (self.capture_grace_s() if stage == "capture" else 0.0)
            if now - entered > limit:
                log.critical("stage %s hung: no return for %.1f s (limit model.invoke_timeout_s=%g%s, thread %s); "
                             "exiting with code %d so the supervisor restarts edgedet", stage, now - entered,
                             timeout, " + source.timeout_s" if stage == "capture" else "", clock.thread,
                             EXIT_HUNG)
                return stage
        return None

    def stop(self) -> None:
        self.done.set()


def _exit(code: int) -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # a broken stderr must not keep a hung process alive
            handler.flush()
    os._exit(code)
