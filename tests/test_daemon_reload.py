"""SIGHUP reloads of the REAL daemon against a real mosquitto: a reload is not a new run.

``python -m edgedet run`` processes (bundled model, synthetic source) as in tests/test_daemon_mqtt.py, with a
real AF_UNIX socket as ``$NOTIFY_SOCKET`` where the systemd side matters. What is checked is what a consumer
sees: the retained ``status`` never flaps, ``run_id`` stays, ``seq`` continues 1..N without a gap or a
restart, and messages queued while the broker is down survive the reload (also onto another broker).
"""

from __future__ import annotations

import shutil
import signal
import socket
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from mosquitto import Mosquitto, available
from test_daemon_mqtt import DAEMON_ENV, MODEL, Daemon, Subscriber, finished, validator, wait_until
from test_service import NotifyListener

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")

STARTUP_S = 60.0  # model load + first frame on a busy shared machine: only a bound for waiting


@pytest.fixture
def notify() -> Iterator[NotifyListener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"edgedet-reload-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    yield NotifyListener(sock, "@" + name)
    sock.close()


def rewrite(daemon: Daemon, change: dict[str, Any]) -> None:
    """Change keys of the daemon's config file (nested dicts merge)."""
    config = yaml.safe_load(daemon.config_path.read_text())
    for section, values in change.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    daemon.config_path.write_text(yaml.safe_dump(config))


def log_time(line: str) -> float:
    """The wall-clock time of a plain-format log line (``2024-05-01 12:00:00,123 INFO ...``)."""
    stamp = " ".join(line.split()[:2])
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()


def contiguous(seqs: set[int]) -> list[int]:
    """The seqs missing from 1..max."""
    return sorted(set(range(1, max(seqs) + 1)) - seqs) if seqs else []


def sighup(daemon: Daemon, outcome: str, count: int = 1) -> str:
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: daemon.stderr().count(outcome) >= count, 30), daemon.stderr()[-3000:]
    return daemon.stderr()


def stop(daemon: Daemon) -> dict[str, Any]:
    daemon.proc.send_signal(signal.SIGTERM)
    return finished(daemon, 30)


def test_sighup_unchanged_config_is_invisible(tmp_path: Path, notify: NotifyListener) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker, "edgedet/same/#")
    env = {**DAEMON_ENV, "NOTIFY_SOCKET": notify.env_value, "WATCHDOG_USEC": "1000000"}
    daemon = Daemon(tmp_path, broker.port, "same", fps=50, env=env)
    try:
        assert notify.wait_for("READY=1", timeout=STARTUP_S)
        assert wait_until(lambda: len(sub.json("/stats")) >= 2, 30), daemon.stderr()[-2000:]
        before = sub.json("/stats")[-1]["mqtt"]["reconnects"]
        assert [p for p in sub.payloads("/status")] == [b"online"]

        daemon.proc.send_signal(signal.SIGHUP)
        assert notify.wait_for("RELOADING=1")
        assert notify.wait_for("READY=1")
        assert "config reloaded: unchanged" in daemon.stderr()
        seen = len(sub.seqs())
        notify.drain()
        assert notify.wait_for("WATCHDOG=1", timeout=10)  # still fed: frames keep flowing
        assert wait_until(lambda: len(sub.seqs()) >= seen + 50, 30)
        assert wait_until(lambda: len(sub.json("/stats")) >= 4, 30)
        stats = stop(daemon)
    finally:
        daemon.kill()
        sub.close()
        broker.stop()
    err = daemon.stderr()
    # Nothing on status but the first online and the final offline; the connection and the source stay.
    assert sub.payloads("/status") == [b"online", b"offline"], sub.payloads("/status")
    assert sub.json("/stats")[-1]["mqtt"]["reconnects"] == before == 0
    assert stats["mqtt"]["reconnects"] == 0
    assert err.count("source opened:") == 1, err[-3000:]
    assert stats["source_reopens"] == 0
    assert "MQTT: connected" in err and err.count("MQTT: connected") == 1
    seqs = sub.seqs()
    assert contiguous(seqs) == [] and len({d["run_id"] for d in sub.json("/detection")}) == 1


def test_sighup_new_model_swaps_it_and_seq_continues(tmp_path: Path) -> None:
    other = tmp_path / "other_model.tflite"
    shutil.copy(MODEL, other)
    shutil.copy(MODEL.with_suffix(".json"), other.with_suffix(".json"))
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker, "edgedet/swap/#")
    daemon = Daemon(tmp_path, broker.port, "swap", fps=50)
    try:
        assert wait_until(lambda: len(sub.seqs()) >= 20, STARTUP_S), daemon.stderr()[-2000:]
        first_info = [i for i in sub.json("/info")]
        assert first_info and first_info[-1]["model"]["name"] == MODEL.stem
        rewrite(daemon, {"model": {"path": str(other)}})
        err = sighup(daemon, "config reloaded: model rebuilt")
        assert wait_until(lambda: any(d["model"] == "other_model" for d in sub.json("/detection")), 30)
        # The retained info names the new model, for a subscriber that comes later too.
        late = Subscriber(broker, "edgedet/swap/info")
        assert wait_until(lambda: bool(late.json("/info")), 10)
        retained = late.json("/info")[-1]
        late.close()
        assert wait_until(lambda: len([d for d in sub.json("/detection") if d["model"] == "other_model"]) >= 20, 30)
        stats = stop(daemon)
    finally:
        daemon.kill()
        sub.close()
        broker.stop()
    assert retained["model"]["name"] == "other_model" and retained["run_id"] == first_info[-1]["run_id"]
    validator("info").validate(retained)
    assert sub.payloads("/status") == [b"online", b"offline"]  # online all along
    detections = sub.json("/detection")
    seqs = [d["seq"] for d in detections]
    assert seqs == list(range(1, len(seqs) + 1)), "seq restarted or has a gap"
    assert len({d["run_id"] for d in detections}) == 1
    models = [d["model"] for d in detections]
    switch = models.index("other_model")
    assert set(models[:switch]) == {MODEL.stem} and set(models[switch:]) == {"other_model"}
    # The first detection of the new model, by the daemon's own clocks: the reload log line to its capture.
    reload_line = next(line for line in err.splitlines() if "reloaded config from" in line)
    took = datetime.fromisoformat(detections[switch]["ts"].replace("Z", "+00:00")).timestamp() - log_time(reload_line)
    print(f"reload -> first detection of the new model: {took:.3f} s")
    assert took < 2.0
    assert stats["frames_processed"] >= len(seqs)


def test_sighup_while_the_broker_is_down_loses_nothing(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    sub = Subscriber(broker, "edgedet/down/#", client_id="reload-down-sub", persistent=True)
    daemon = Daemon(tmp_path, broker.port, "down", fps=50)
    try:
        assert wait_until(lambda: len(sub.seqs()) >= 20, STARTUP_S), daemon.stderr()[-2000:]
        broker.stop()
        down_at = daemon.frames_written()
        assert wait_until(lambda: daemon.frames_written() >= down_at + 80, 60)  # >= 30 queued, flushed to jsonl
        rewrite(daemon, {"model": {"top_k": 1}, "loop": {"max_fps": 40}})
        sighup(daemon, "config reloaded: model.top_k, loop rebuilt")
        broker.start()
        assert wait_until(lambda: len(sub.seqs()) >= down_at + 150, 60), daemon.stderr()[-2000:]
        stats = stop(daemon)
    finally:
        daemon.kill()
        sub.close()
        broker.stop()
    seqs = sub.seqs()
    print(f"broker down from frame {down_at}; {len(seqs)} seqs seen, max {max(seqs)}")
    assert contiguous(seqs) == []
    assert max(seqs) == stats["frames_processed"]  # every frame was a detection (every_frame mode)
    assert stats["mqtt"]["dropped"] == 0 and stats["mqtt"]["queued"] == 0
    assert {len(d["top_k"]) for d in sub.json("/detection")} == {1, 2}  # the bundled model has 2 classes


def test_sighup_to_another_broker_moves_the_queue_there(tmp_path: Path) -> None:
    first = Mosquitto(tmp_path / "first", persistence=True).start()
    second = Mosquitto(tmp_path / "second").start()
    # Persistent on the first broker: what it acknowledged before it stopped reaches us when it is back.
    sub_first = Subscriber(first, "edgedet/move/#", client_id="reload-move-first", persistent=True)
    sub_second = Subscriber(second, "edgedet/move/#")
    daemon = Daemon(tmp_path, first.port, "move", fps=50)
    try:
        assert wait_until(lambda: len(sub_first.seqs()) >= 20, STARTUP_S), daemon.stderr()[-2000:]
        first.stop()  # messages queue from now on
        down_at = daemon.frames_written()
        assert wait_until(lambda: daemon.frames_written() >= down_at + 80, 60)
        rewrite(daemon, {"mqtt": {"port": second.port}})
        err = sighup(daemon, "config reloaded: mqtt rebuilt")
        assert wait_until(lambda: len(sub_second.seqs()) >= 100, 30), daemon.stderr()[-2000:]
        stats = stop(daemon)
        first.start()
        assert wait_until(lambda: contiguous(sub_first.seqs() | sub_second.seqs()) == [], 15)
    finally:
        daemon.kill()
        sub_first.close()
        sub_second.close()
        first.stop()
        second.stop()
    moved_line = next(line for line in err.splitlines() if "queued message(s) moved to" in line)
    moved = int(moved_line.split("MQTT settings changed: ")[1].split()[0])
    print(moved_line)
    assert moved >= 30
    on_first, on_second = sub_first.seqs(), sub_second.seqs()
    assert contiguous(on_first | on_second) == [], "a seq was lost in the move"
    assert max(on_second) == stats["frames_processed"]
    # The queued ones arrived on the second broker: everything after what the first one acknowledged.
    assert set(range(max(on_first) + 1, max(on_second) + 1)) <= on_second
    assert sub_second.payloads("/status")[0] == b"online"
