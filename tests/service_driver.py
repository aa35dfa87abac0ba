"""A tiny daemon driving edgedet.service for the signal tests: a real process receiving real signals.

argv: CONFIG_PATH. It reports on stdout, one line per event, and on $NOTIFY_SOCKET like the real loop:
``ready``, ``reload ok <top_k>`` / ``reload failed``, ``stalled`` / ``flowing``, ``stopped <signal>``.
SIGUSR1 toggles a stalled source: no frame is processed, as when the camera stops delivering.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from edgedet.config import load_config
from edgedet.service import Notifier, ServiceSignals, Watchdog, try_reload


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    path = sys.argv[1]
    config, _ = load_config(path)
    notifier = Notifier()
    watchdog = Watchdog.from_environment(notifier)
    stall_toggled = threading.Event()
    signal.signal(signal.SIGUSR1, lambda signum, frame: stall_toggled.set())
    stalled = False
    with ServiceSignals() as signals:
        notifier.ready(status="driver ready")
        print("ready", config.model.top_k, flush=True)
        while not signals.wait(0.01):  # one "frame" per 10 ms
            if stall_toggled.is_set():
                stall_toggled.clear()
                stalled = not stalled
                print("stalled" if stalled else "flowing", flush=True)
            if not stalled:
                watchdog.frame_processed(latency_ms=1.0)
            if signals.take_reload():
                notifier.reloading()
                new = try_reload(path)
                if new is None:
                    print("reload failed", config.model.top_k, flush=True)
                else:
                    config = new
                    print("reload ok", config.model.top_k, flush=True)
                notifier.ready()
        notifier.stopping()
        print("stopped", signals.last_signal, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
