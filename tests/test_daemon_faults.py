"""Faults against the real daemon process: signals while it starts."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from mosquitto import free_port
from test_daemon_mqtt import Daemon, finished, wait_until


def test_sighup_while_starting_does_not_kill_the_daemon(tmp_path: Path) -> None:
    """SIGHUP's default action ends a process: it is caught from the first line of ``edgedet run``, before
    the imports and the model load, and the reload it asks for happens once the daemon runs."""
    daemon = Daemon(tmp_path, free_port(), "hup", fps=50, config={"mqtt": {"enabled": False}})
    try:
        time.sleep(0.3)  # well before the model is loaded and the loop runs (start-up takes seconds)
        daemon.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: daemon.frames_written() >= 20 or daemon.proc.poll() is not None, 60)
        assert daemon.proc.poll() is None, f"exit {daemon.proc.returncode}:\n{daemon.stderr()[-3000:]}"
        assert wait_until(lambda: "config reloaded" in daemon.stderr(), 30), daemon.stderr()[-3000:]
        daemon.proc.send_signal(signal.SIGTERM)
        finished(daemon)
    finally:
        daemon.kill()
