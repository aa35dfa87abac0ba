"""Faults against the real daemon process and bad inputs it must refuse in one line."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_one_line_error, run_cli
from mosquitto import Mosquitto, available, free_port
from test_daemon_mqtt import DAEMON_ENV, MODEL, REPO, Daemon, Subscriber, finished, wait_until

from edgedet.publish.config import MqttConfig


def sighup_caught(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGHUP - 1)))


def test_sighup_while_starting_does_not_kill_the_daemon(tmp_path: Path) -> None:
    """SIGHUP's default action ends a process: it is caught from the first line of ``edgedet run``, before
    the imports and the model load, and the reload it asks for happens once the daemon runs."""
    daemon = Daemon(tmp_path, free_port(), "hup", fps=50, config={"mqtt": {"enabled": False}})
    pid = daemon.proc.pid
    try:
        assert wait_until(lambda: sighup_caught(pid) or daemon.proc.poll() is not None, 60, 0.002)
        daemon.proc.send_signal(signal.SIGHUP)  # while the daemon may still be importing or loading the model
        assert wait_until(lambda: daemon.frames_written() >= 20 or daemon.proc.poll() is not None, 60)
        assert daemon.proc.poll() is None, f"exit {daemon.proc.returncode}:\n{daemon.stderr()[-3000:]}"
        assert wait_until(lambda: "config reloaded" in daemon.stderr(), 30), daemon.stderr()[-3000:]
        daemon.proc.send_signal(signal.SIGTERM)
        finished(daemon)
    finally:
        daemon.kill()


IMPORT_PROBE = """
import signal, sys
seen = []
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.append(signal.getsignal(signal.SIGHUP))
        return None
sys.meta_path.insert(0, Probe())
from edgedet.cli import main
code = main(["--log-level", "error", "run", "--max-frames", "1", "--set", "publish.console=false"])
print("handler at numpy import:", seen[0] if seen else "numpy not imported")
sys.exit(code)
"""


def test_sighup_is_caught_before_the_slow_imports() -> None:
    """Deterministic: the handler SIGHUP has at the moment numpy (the first slow import) is imported."""
    run = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=REPO, env=DAEMON_ENV, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    line = run.stdout.strip().splitlines()[-1]
    assert line.startswith("handler at numpy import: <function _remember"), line


def test_model_path_that_is_not_utf8_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = os.fsdecode(bytes(tmp_path) + b"/m\xff.tflite")  # a lone surrogate, as Python hands such a name over
    Path(bad).write_bytes(MODEL.read_bytes())
    run = run_cli("run", "--max-frames", "1", "--set", f"model.path={bad}")
    line = assert_one_line_error(run, "model.path", "not valid UTF-8", "rename")
    assert "\\xff" in line


def test_password_file_readable_by_others_is_warned_about(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    config = MqttConfig(enabled=True, username="cam", password_file=secret)
    with caplog.at_level(logging.WARNING, logger="edgedet.config"):
        assert config.effective_password() == "s3cret"
    (line,) = [r.getMessage() for r in caplog.records]
    assert str(secret) in line and "group and others" in line and f"chmod 600 {secret}" in line
    caplog.clear()
    secret.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="edgedet.config"):
        config.effective_password()
    assert caplog.records == []


# The rights docs/mqtt.md gives edgedet (one device, Home Assistant on): nothing more.
EDGEDET_ACL = """user cam
topic write edgedet/cam1/#
topic write homeassistant/sensor/edgedet_cam1/#
topic read homeassistant/status

user reader
topic read #
topic write homeassistant/status
"""


@pytest.mark.skipif(available() is not None, reason=available() or "")
def test_the_documented_acl_is_all_the_daemon_needs(tmp_path: Path) -> None:
    assert EDGEDET_ACL.split("\n\n")[0] in (REPO / "docs" / "mqtt.md").read_text()  # the documented one
    secret = tmp_path / "pw"
    secret.write_text("cam-pw\n")
    secret.chmod(0o600)
    with Mosquitto(tmp_path / "broker", users={"cam": "cam-pw", "reader": "reader-pw"}, acl=EDGEDET_ACL) as broker:
        sub = Subscriber(broker, "#", username="reader", password="reader-pw")
        daemon = Daemon(tmp_path, broker.port, "cam1", fps=50, max_frames=100,
                        config={"homeassistant": {"enabled": True},
                                "mqtt": {"username": "cam", "password_file": str(secret)}})
        try:
            assert wait_until(lambda: len(sub.payloads("/config")) == 4, 60), daemon.stderr()[-3000:]
            sub.client.publish("homeassistant/status", "online", qos=1)
            assert wait_until(lambda: "Home Assistant is online again" in daemon.stderr(), 30), \
                daemon.stderr()[-3000:]
            finished(daemon)
        finally:
            daemon.kill()
        assert wait_until(lambda: len(sub.seqs("edgedet/cam1/detection")) == 100)
        sub.close()
    err = daemon.stderr()
    for bad in ("refused", "lost the connection", "not authorized", "ACL"):
        assert bad not in err, err[-3000:]
