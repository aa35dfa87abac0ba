"""Faults against the real daemon process and bad inputs it must refuse in one line."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
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


def _replace_config(daemon: Daemon, change: dict[str, dict[str, Any]]) -> None:
    """Rewrite the daemon's config file atomically (a reload never reads half a file)."""
    config = yaml.safe_load(daemon.config_path.read_text())
    for section, values in change.items():
        config.setdefault(section, {}).update(values)
    scratch = daemon.config_path.with_suffix(".tmp")
    scratch.write_text(yaml.safe_dump(config))
    os.replace(scratch, daemon.config_path)


@pytest.mark.skipif(available() is not None, reason=available() or "")
def test_sighup_burst_one_reload_at_a_time_last_config_wins_nothing_lost(tmp_path: Path) -> None:
    """20 SIGHUPs in 2 s, the config rewritten before each (model.top_k 2, 1, 2, ... 1): reloads run one
    after another, the config of the last signal is the one in effect, and seq has no gap."""
    with Mosquitto(tmp_path / "broker", persistence=False) as broker:
        sub = Subscriber(broker, "edgedet/burst/detection")
        daemon = Daemon(tmp_path, broker.port, "burst", fps=50, config={"model": {"top_k": 1}})
        try:
            assert wait_until(lambda: len(sub.seqs()) >= 20, 60), daemon.stderr()[-3000:]
            for i in range(20):
                _replace_config(daemon, {"model": {"top_k": 2 if i % 2 == 0 else 1}})
                daemon.proc.send_signal(signal.SIGHUP)
                time.sleep(0.1)
            after_burst = daemon.frames_written()
            # Frames after the last signal's reload: wait for plenty, then stop.
            assert wait_until(lambda: daemon.frames_written() >= after_burst + 150, 60), daemon.stderr()[-3000:]
            daemon.proc.send_signal(signal.SIGTERM)
            stats = finished(daemon)
        finally:
            daemon.kill()
        assert wait_until(lambda: len(sub.seqs()) >= stats["frames_processed"], 30)
        detections = sorted(sub.json("/detection"), key=lambda d: d["seq"])
        sub.close()
    err = daemon.stderr()
    seqs = [d["seq"] for d in detections]
    assert seqs == list(range(1, stats["frames_processed"] + 1))  # nothing lost, nothing twice
    assert stats["mqtt"]["dropped"] == 0
    # One reload at a time: each "reloaded config from" is followed by its outcome before the next starts.
    events = re.findall(r"reloaded config from|config reloaded:|reload failed", err)
    assert events and events[0] == "reloaded config from", events
    assert all(a != b for a, b in zip(events, events[1:])), events
    assert 1 <= events.count("reloaded config from") <= 20
    assert "reload failed" not in err, err[-3000:]
    # The last config wins: top_k 1 from the last reload on (the one before it asked for 2).
    assert {len(d["top_k"]) for d in detections[-100:]} == {1}, [len(d["top_k"]) for d in detections[-100:]]
    assert {len(d["top_k"]) for d in detections} == {1, 2}


@pytest.mark.skipif(available() is not None, reason=available() or "")
def test_sigterm_while_the_outbox_is_written_leaves_it_intact(tmp_path: Path) -> None:
    """Broker down, a busy outbox (high fps, 10 ms sync): SIGTERM the moment its WAL file grows. The next start
    opens the file as it is (not set aside as corrupt) and delivers every message of the first run."""
    outbox = tmp_path / "outbox.db"
    config = {"mqtt": {"outbox_path": str(outbox), "outbox_sync_s": 0.01}, "publish": {"stats_interval_s": 60}}
    first = Daemon(tmp_path / "a", free_port(), "busy", fps=1000, config=config)  # nothing listens there
    wal = Path(f"{outbox}-wal")

    def wal_size() -> int:
        return wal.stat().st_size if wal.exists() else 0

    try:
        assert wait_until(lambda: first.frames_written() >= 300, 120, 0.01), first.stderr()[-3000:]
        before = wal_size()
        assert wait_until(lambda: wal_size() != before, 30, 0.0005), "the outbox WAL never grew"
        first.proc.send_signal(signal.SIGTERM)
        finished(first)
    finally:
        first.kill()
    queued = first.frames_written()
    assert "kept in" in first.stderr(), first.stderr()[-2000:]
    with contextlib.closing(sqlite3.connect(str(outbox))) as db:  # a plain reader sees a sound file
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (rows,) = db.execute("SELECT count(*) FROM outbox").fetchone()
    assert rows >= queued  # every detection, plus the status/info messages queued with them
    with Mosquitto(tmp_path / "broker", persistence=False) as broker:
        sub = Subscriber(broker, "edgedet/busy/detection")
        second = Daemon(tmp_path / "b", broker.port, "busy", fps=20, max_frames=20, config=config)
        try:
            finished(second)
        finally:
            second.kill()
        assert wait_until(lambda: len(sub.json("/detection")) >= queued + 20, 30)
        seen = sub.json("/detection")
        sub.close()
    err = second.stderr()
    assert "unreadable" not in err and "set it aside" not in err, err[-2000:]
    assert not [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert f"{rows} message(s) left by the last run" in err, err[-2000:]
    runs: dict[str, list[int]] = {}
    for d in seen:
        runs.setdefault(d["run_id"], []).append(d["seq"])
    assert sorted(sorted(s) for s in runs.values()) == sorted([list(range(1, queued + 1)), list(range(1, 21))])
