"""Running under systemd: the sd_notify protocol, the watchdog cadence, and stop/reload signals.

The notify protocol is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``); see sd_notify(3).
It is a dozen lines with the standard library, so no systemd binding is needed on the Pi.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from edgedet import early_signals
from edgedet.config import EdgedetConfig, load_config
from edgedet.errors import EdgedetError

log = logging.getLogger(__name__)

NOTIFY_ENV = "NOTIFY_SOCKET"


def notify_address(value: str) -> str | None:
    """``$NOTIFY_SOCKET`` -> an AF_UNIX address (abstract names start with NUL), or None if unsupported."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd >= 254 may also hand out vsock:CID:PORT (for VMs); a Pi service never gets one.
    return None


class Notifier:
    """Sends sd_notify messages; does nothing when not started by systemd (no ``$NOTIFY_SOCKET``)."""

    def __init__(self, address: str | None = None) -> None:
        raw = address if address is not None else os.environ.get(NOTIFY_ENV, "")
        self._address = notify_address(raw) if raw else None
        if raw and self._address is None:
            log.warning("ignoring unsupported %s=%r (expected a path or @abstract name)", NOTIFY_ENV, raw)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=VALUE``) as one datagram. Returns whether it was sent.

        A failure is logged once and never raised: losing the supervisor must not stop detection.
        """
        if self._address is None:
            return False
        payload = "\n".join(fields).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                if not self._warned:
                    log.warning("cannot notify systemd via %s: %s", NOTIFY_ENV, exc)
                    self._warned = True
                return False
        log.debug("sd_notify: %s", " ".join(fields))
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send(*fields)

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def reloading(self) -> bool:
        """Tell systemd a SIGHUP reload started; send ``ready()`` when it is done."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self, status: str | None = None) -> bool:
        fields = ["STOPPING=1"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send(*fields)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE field in the datagram.
    return " ".join(text.split())


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """The watchdog period in seconds from ``$WATCHDOG_USEC``, or None when no watchdog applies to us.

    ``$WATCHDOG_PID``, when set, must be this process (a child inheriting the environment must not ping).
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw_usec)
        return None
    return usec / 1_000_000 if usec > 0 else None


class Watchdog:
    """Pinged by the frame loop after each processed frame; keeps systemd's watchdog fed only then.

    ``WATCHDOG=1`` goes out at most every ``interval/2`` and only if frames were processed since the
    previous ping, so a stalled camera or a hung Edge TPU starves the watchdog and systemd restarts us.
    Each ping also carries ``STATUS=`` with the frame rate and mean latency since the previous one.
    Without a watchdog (``interval`` None) only the status goes out, every ``status_every_s``.
    """

    def __init__(self, notifier: Notifier, interval_s: float | None, *, status_every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self.interval_s = interval_s
        self.period_s = interval_s / 2 if interval_s else status_every_s
        self._clock = clock
        self._last_ping: float | None = None
        self._window_start = clock()
        self._frames = 0
        self._latency_sum_ms = 0.0
        self._latency_count = 0
        self.pings = 0

    @classmethod
    def from_environment(cls, notifier: Notifier, **kwargs: Any) -> Watchdog:
        return cls(notifier, watchdog_interval(), **kwargs)

    def frame_processed(self, latency_ms: float | None = None) -> bool:
        """Record one processed frame; returns True when a ping was sent now."""
        self._frames += 1
        if latency_ms is not None:
            self._latency_sum_ms += latency_ms
            self._latency_count += 1
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.period_s:
            return False
        elapsed = now - self._window_start
        fps = self._frames / elapsed if elapsed > 0 else 0.0
        fields = []
        if self.interval_s:
            fields.append("WATCHDOG=1")
        status = f"{fps:.1f} fps"
        if self._latency_count:
            status += f", {self._latency_sum_ms / self._latency_count:.1f} ms per frame"
        fields.append(f"STATUS={status}")
        self.notifier.send(*fields)
        self._last_ping = now
        self._window_start = now
        self._frames = 0
        self._latency_sum_ms = 0.0
        self._latency_count = 0
        self.pings += 1
        return True


class ServiceSignals:
    """SIGTERM/SIGINT set ``stop``; SIGHUP sets ``reload``. The frame loop polls (or waits on) them.

    Handlers only set events, because a handler runs between two bytecodes of the loop and must not do
    work there. Use as a context manager (main thread only) to restore the previous handlers.
    """

    STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
    RELOAD_SIGNALS = (signal.SIGHUP,)

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.last_signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> ServiceSignals:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers can only be installed from the main thread")
        for signum in (*self.STOP_SIGNALS, *self.RELOAD_SIGNALS):
            self._previous[signum] = signal.signal(signum, self._handle)
        for early in early_signals.take():  # caught while starting (cmd_run): replayed now
            self._handle(early, None)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.last_signal = signum
        if signum in self.RELOAD_SIGNALS:
            self.reload.set()
        else:
            self.stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on stop. Returns whether stop is set."""
        return self.stop.wait(timeout)

    def take_reload(self) -> bool:
        """True once per SIGHUP (or burst of them): clears the flag so the loop reloads one time."""
        if self.reload.is_set():
            self.reload.clear()
            return True
        return False

    def __enter__(self) -> ServiceSignals:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()


def try_reload(path: str | Path | None, overrides: list[str] | None = None) -> EdgedetConfig | None:
    """Load the config again for SIGHUP. An invalid one is logged and None returned: keep the old one."""
    try:
        config, found = load_config(path, overrides)
    except EdgedetError as exc:
        log.error("reload failed, keeping the running config: %s", exc)
        return None
    log.info("reloaded config from %s", found or "defaults")
    return config
