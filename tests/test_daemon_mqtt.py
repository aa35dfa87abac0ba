"""MQTT with the REAL daemon: ``python -m edgedet run`` processes (bundled model, synthetic
source) publishing to a real mosquitto that each test starts on a free loopback port (tests/mosquitto.py).

The publisher-level tests (tests/test_mqtt_broker.py) feed synthetic results to ``MqttSink``; these drive
the whole pipeline (config file -> Classifier -> frame loop -> MqttSink -> paho -> broker) as a service
would run it, including its signal handling and its exit path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest
import yaml
from mosquitto import Collector, Mosquitto, available

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "docs" / "schemas"
MODEL = REPO / "models" / "pikachu_mobilenet_v2_0.35_96_int8.tflite"
LABELS = ["no-pikachu", "pikachu"]
# The daemon gets the worktree's package, whatever is installed in the interpreter's site-packages.
DAEMON_ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
DAEMON_ENV.pop("EDGEDET_MQTT_PASSWORD", None)
DAEMON_ENV.pop("EDGEDET_CONFIG", None)


def validator(name: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{name}.json").read_text()),
                                           format_checker=jsonschema.FormatChecker())


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Subscriber(Collector):
    """A recording subscriber (QoS 1); ``persistent`` keeps its session in the broker (clean_session False)
    so messages published while it is disconnected wait for it."""

    def seqs(self, suffix: str = "/detection") -> set[int]:
        return {d["seq"] for d in self.json(suffix)}


class Daemon:
    """One ``python -m edgedet run`` process with its own config file, JSON-lines output and stats file."""

    def __init__(self, folder: Path, broker_port: int, device_id: str, *, fps: float = 100.0,
                 max_frames: int | None = None, config: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.folder = folder / device_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.jsonl = self.folder / "frames.jsonl"
        self.stats_file = self.folder / "stats.json"
        self.stderr_path = self.folder / "stderr.log"
        base: dict[str, Any] = {
            "device_id": device_id,
            "model": {"path": str(MODEL)},
            "source": {"type": "synthetic", "fps": fps, "width": 160, "height": 120},
            "publish": {"console": False, "jsonl_path": str(self.jsonl), "stats_interval_s": 0.5},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker_port, "keepalive_s": 5,
                     "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
            "logging": {"format": "plain"},
        }
        if "models" in (config or {}):
            del base["model"]  # several classifiers: models: replaces model:
        self.config_path = self.folder / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(merge(base, config or {})))
        args = [sys.executable, "-m", "edgedet", "run", "--config", str(self.config_path),
                "--stats-file", str(self.stats_file)]
        if max_frames is not None:
            args += ["--max-frames", str(max_frames)]
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env or DAEMON_ENV, stdout=subprocess.DEVNULL,
                                     stderr=self._stderr)

    def frames_written(self) -> int:
        """Frames the daemon has classified so far, from its JSON-lines sink (flushed every second)."""
        try:
            with self.jsonl.open("rb") as f:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
        except FileNotFoundError:
            return 0

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout_s)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        return json.loads(self.stats_file.read_text())

    def rss_kb(self) -> int:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def finished(daemon: Daemon, timeout_s: float = 60.0) -> dict[str, Any]:
    """Wait for a bounded run; it must exit 0 without a traceback. Returns its --stats-file."""
    code = daemon.wait(timeout_s)
    err = daemon.stderr()
    assert code == 0, f"{daemon.device_id} exited {code}:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    return daemon.stats()


# ------------------------------------------------------------------------------------------------------
def test_daemon_subprocess_runs_this_worktree() -> None:
    out = subprocess.run([sys.executable, "-c", "import edgedet; print(edgedet.__file__)"], cwd=REPO,
                         env=DAEMON_ENV, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out).resolve() == REPO / "edgedet" / "__init__.py"


def test_daemon_payloads_validate_against_schemas(tmp_path: Path) -> None:
    frames = 150
    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker, "#")
        daemon = Daemon(tmp_path, broker.port, "cam1", fps=100, max_frames=frames,
                        config={"homeassistant": {"enabled": True}, "publish": {"stats_interval_s": 0.3}})
        try:
            stats_file = finished(daemon)
        finally:
            daemon.kill()
        assert wait_until(lambda: b"offline" in sub.payloads("edgedet/cam1/status"))
        assert wait_until(lambda: len(sub.seqs()) >= frames)
        late = Subscriber(broker, "#")  # retained state as a subscriber arriving now sees it
        assert wait_until(lambda: len(late.payloads("/config")) == 4 and late.payloads("/info") != []
                          and len(late.payloads("/state")) == 1)
        late.close()
        sub.close()

    assert stats_file["frames_processed"] == frames
    statuses = [p.decode() for p in sub.payloads("edgedet/cam1/status")]
    assert statuses == ["online", "offline"]
    for status in statuses:
        validator("status").validate(status)

    detections = sub.json("edgedet/cam1/detection")
    assert [d["seq"] for d in detections] == list(range(1, frames + 1))
    assert len({d["run_id"] for d in detections}) == 1
    for payload in detections:
        validator("detection").validate(payload)
        assert payload["label"] in LABELS and payload["model"] == MODEL.stem
        assert payload["latency_ms"]["inference"] > 0

    (info,) = sub.json("edgedet/cam1/info")
    validator("info").validate(info)
    assert info["device_id"] == "cam1" and info["run_id"] == detections[0]["run_id"]
    assert info["runtime"]["name"] and info["runtime"]["version"]
    assert (info["runtime"]["name"], info["runtime"]["version"]) == (stats_file["runtime"]["name"],
                                                                     stats_file["runtime"]["version"])
    assert info["runtime"]["threads"] >= 1
    assert info["model"]["sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert info["model"]["name"] == MODEL.stem and Path(info["model"]["path"]).resolve() == MODEL
    assert info["model"]["input_shape"] == [1, 96, 96, 3] and info["model"]["label_count"] == len(LABELS)
    assert info["delegate"]["active"] == "cpu"
    assert info["source"] == {"type": "synthetic", "resolution": [160, 120]}

    stats = sub.json("edgedet/cam1/stats")
    assert stats, "no stats message in a 1.5 s run with publish.stats_interval_s 0.3"
    for payload in stats:
        validator("stats").validate(payload)
        assert payload["run_id"] == info["run_id"] and payload["mqtt"]["dropped"] == 0
    assert stats[-1]["frames_processed"] > 0 and stats[-1]["rss_mb"] > 0

    discovery = {t: json.loads(p) for t, p, _ in sub.received if t.startswith("homeassistant/")}
    node = "edgedet_cam1"
    assert set(discovery) == {f"homeassistant/sensor/{node}/{o}/config"
                              for o in ("label", "score", "inference_ms", "fps")}
    for topic, payload in discovery.items():
        validator("ha_discovery").validate(payload)
        # Home Assistant's documented requirements: a unique_id and a device with identifiers (device
        # registry), origin.name, availability on our status topic.
        assert payload["unique_id"] == f"{node}_{topic.split('/')[-2]}"
        assert payload["device"]["identifiers"] == [node]
        assert payload["origin"]["name"] == "edgedet"
        assert payload["availability_topic"] == "edgedet/cam1/status"
        assert payload["state_topic"] == "edgedet/cam1/state"
    assert len({p["unique_id"] for p in discovery.values()}) == 4
    # The retained, rate-limited state message the Home Assistant entities read.
    states = sub.json("edgedet/cam1/state")
    assert states, "no state message"
    for payload in states:
        validator("state").validate(payload)
        assert payload["run_id"] == info["run_id"] and payload["label"] in LABELS


def test_snapshot_jpeg_on_label_change(tmp_path: Path) -> None:
    """publish.snapshot: the frame loop hands each frame to the sink, which sends a JPEG on a label change."""
    from io import BytesIO

    from PIL import Image

    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker, "edgedet/snap/#")
        daemon = Daemon(tmp_path, broker.port, "snap", fps=60, max_frames=120,
                        config={"publish": {"snapshot": True, "snapshot_max_bytes": 50000}})
        try:
            finished(daemon)
        finally:
            daemon.kill()
        # the synthetic scenes alternate pikachu / no-pikachu every second: at least two label changes
        assert wait_until(lambda: len(sub.payloads("/snapshot")) >= 2), daemon.stderr()[-3000:]
        snapshots = sub.payloads("/snapshot")
        sub.close()
    for jpeg in snapshots:
        assert len(jpeg) <= 50000
        with Image.open(BytesIO(jpeg)) as image:
            assert image.format == "JPEG" and image.size == (160, 120)


def test_status_offline_on_kill9_will_and_on_sigterm(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker, "edgedet/+/#")
        killed = Daemon(tmp_path, broker.port, "killed", fps=50)
        stopped = Daemon(tmp_path, broker.port, "stopped", fps=50)
        try:
            for name in ("killed", "stopped"):
                assert wait_until(lambda name=name: len(sub.payloads(f"{name}/detection")) >= 5, 60), \
                    (killed.stderr() + stopped.stderr())[-3000:]
                assert sub.payloads(f"{name}/status") == [b"online"]

            killed.proc.send_signal(signal.SIGKILL)
            killed.proc.wait(10)
            # The Will, published by the broker when the socket closes without a DISCONNECT.
            assert wait_until(lambda: sub.payloads("killed/status") == [b"online", b"offline"], 15)

            sent = time.monotonic()
            stopped.proc.send_signal(signal.SIGTERM)
            code = stopped.proc.wait(2.0)  # functional requirement: a service stop within 2 s
            exit_s = time.monotonic() - sent
            assert code == 0, stopped.stderr()[-3000:]
            assert "Traceback" not in stopped.stderr()
            # The explicit offline of a clean stop (a clean DISCONNECT suppresses the Will).
            assert wait_until(lambda: sub.payloads("stopped/status") == [b"online", b"offline"])
            print(f"SIGTERM -> exit in {exit_s:.2f} s")
            frames_on_stop = stopped.stats()["frames_processed"]
            assert frames_on_stop > 0
            assert wait_until(lambda: len(sub.seqs("stopped/detection")) == frames_on_stop, 5)
            assert sub.seqs("stopped/detection") == set(range(1, frames_on_stop + 1))
        finally:
            killed.kill()
            stopped.kill()
            sub.close()


def test_sigterm_exits_within_2s_when_the_broker_hangs(tmp_path: Path) -> None:
    """A broker that stops answering while the TCP connection stays up (hung process, network blackhole):
    the flush and the explicit offline cannot complete, and the service stop must still take < 2 s."""
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker, "edgedet/hung/detection")
    daemon = Daemon(tmp_path, broker.port, "hung", fps=100)
    assert broker.proc is not None
    try:
        assert wait_until(lambda: len(sub.payloads("hung/detection")) >= 5, 60), daemon.stderr()[-3000:]
        broker.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)  # frames published meanwhile wait unacknowledged
        code, exit_s = terminate(daemon)
        print(f"SIGTERM with a hung broker -> exit in {exit_s:.2f} s")
        assert code == 0, f"no exit within 2 s (exited after {exit_s:.2f} s):\n{daemon.stderr()[-3000:]}"
    finally:
        broker.proc.send_signal(signal.SIGCONT)
        daemon.kill()
        sub.close()
        broker.stop()


def terminate(daemon: Daemon, within_s: float = 2.0) -> tuple[int | None, float]:
    """SIGTERM; the exit code if the daemon exited within ``within_s`` (else None), and when it exited."""
    sent = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = daemon.proc.wait(within_s)
    except subprocess.TimeoutExpired:
        code = None
        daemon.proc.wait(30)
    return code, time.monotonic() - sent


def test_sigterm_exits_within_2s_when_the_broker_is_down(tmp_path: Path) -> None:
    """Broker unreachable, default backoff (1 s doubling to 60 s): paho's network thread sleeps between
    attempts, and stopping it must still fit the 2 s of a service stop."""
    broker = Mosquitto(tmp_path / "broker")  # a reserved free port, never started: nothing listens
    daemon = Daemon(tmp_path, broker.port, "down", fps=100,
                    config={"mqtt": {"reconnect_min_s": 1.0, "reconnect_max_s": 60.0}})
    try:
        assert wait_until(lambda: "refused" in daemon.stderr(), 60), daemon.stderr()[-3000:]
        time.sleep(2.5)  # into the backoff: attempts at ~0, 1, 3 s
        code, exit_s = terminate(daemon)
        print(f"SIGTERM with the broker down -> exit in {exit_s:.2f} s")
        assert code == 0, f"no exit 0 within 2 s (exit after {exit_s:.2f} s):\n{daemon.stderr()[-3000:]}"
        assert daemon.stats()["frames_processed"] > 0
    finally:
        daemon.kill()


def test_zero_loss_across_three_broker_restarts(tmp_path: Path) -> None:
    frames = 3000
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    sub = Subscriber(broker, "edgedet/cam1/#", client_id="zero-loss-sub", persistent=True)
    daemon = Daemon(tmp_path, broker.port, "cam1", fps=300, max_frames=frames)
    outages: list[tuple[int, int]] = []
    try:
        # Stop the broker at these frame counts (as the daemon's JSON-lines sink reports them) and start it
        # again ~150 frames later (at least the 1 s the sink takes to flush): frames keep coming meanwhile.
        for stop_at in (600, 1400, 2200):
            assert wait_until(lambda stop_at=stop_at: daemon.frames_written() >= stop_at, 120, 0.05), \
                daemon.stderr()[-3000:]
            down_at = daemon.frames_written()
            broker.stop()
            assert wait_until(lambda down_at=down_at: daemon.frames_written() >= down_at + 150, 60, 0.05)
            broker.start()
            outages.append((down_at, daemon.frames_written()))
        stats_file = finished(daemon, 120)
        total = stats_file["frames_processed"]
        assert total == frames
        assert wait_until(lambda: len(sub.seqs()) >= total, 30)
    finally:
        daemon.kill()
        sub.close()
        broker.stop()
    seen = sub.seqs()
    missing = sorted(set(range(1, total + 1)) - seen)
    duplicates = len(sub.payloads("/detection")) - len(seen)
    print(f"outages at frames {outages}; {total} seqs, {len(missing)} missing, {duplicates} duplicates")
    assert missing == [], f"{len(missing)} missing, first {missing[:10]}"
    assert max(seen) == total
    stats = sub.json("/stats")
    assert stats, "no stats message"
    last = max(stats, key=lambda s: s["frames_processed"])
    assert last["mqtt"]["reconnects"] == 3, [s["mqtt"] for s in stats]
    assert last["mqtt"]["dropped"] == 0
    assert stats_file["mqtt"]["reconnects"] == 3 and stats_file["mqtt"]["dropped"] == 0
    for payload in stats:
        validator("stats").validate(payload)


def test_broker_down_outbox_drop_count_exact_and_memory_bounded(tmp_path: Path) -> None:
    outbox_max = 200
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    # The session exists before the outage, so the broker keeps what arrives while this client reconnects.
    sub = Subscriber(broker, "edgedet/cam1/#", client_id="overflow-sub", persistent=True)
    broker.stop()  # down from the daemon's start
    # No stats message may be queued while the broker is down (it would take an outbox place): the first
    # one is due 8 s after the loop starts, the broker is back after ~1500 frames at 300 fps (~5-6 s).
    daemon = Daemon(tmp_path, broker.port, "cam1", fps=300, max_frames=3000,
                    config={"mqtt": {"outbox_max": outbox_max}, "publish": {"stats_interval_s": 8.0}})
    try:
        assert wait_until(lambda: daemon.frames_written() >= 400, 120, 0.05), daemon.stderr()[-3000:]
        rss_early_kb = daemon.rss_kb()
        assert wait_until(lambda: daemon.frames_written() >= 1500, 60, 0.05)
        rss_late_kb = daemon.rss_kb()
        frames_before_restart = daemon.frames_written()
        broker.start()
        stats_file = finished(daemon, 120)
        total = stats_file["frames_processed"]
        assert wait_until(lambda: max(sub.seqs(), default=0) >= total and sub.json("/stats"), 30)
    finally:
        daemon.kill()
        sub.close()
        broker.stop()
    stats = sub.json("/stats")
    assert min(s["frames_processed"] for s in stats) > frames_before_restart, \
        "timing precondition: a stats message was queued while the broker was down (machine too slow)"
    seen = sub.seqs()
    assert seen <= set(range(1, total + 1))
    missing = set(range(1, total + 1)) - seen
    first, dropped = min(seen), len(missing)
    # Oldest dropped first: everything older than the first message delivered was dropped, and everything after
    # the last drop was delivered. Between the two there may be a few drops more: right after the reconnect the
    # sender takes the oldest message while the loop keeps appending, and if the outbox is full again before it
    # takes the next one, that next one is the oldest waiting message and the one dropped (test_mqtt_broker.py,
    # test_a_full_outbox_drops_the_oldest_waiting_message_not_the_one_being_sent).
    assert set(range(1, first)) <= missing
    assert set(range(max(missing) + 1, total + 1)) <= seen
    print(f"{total} frames, broker back after >= {frames_before_restart}; dropped {dropped} "
          f"({dropped - (first - 1)} after the first delivered); "
          f"RSS {rss_early_kb} kB at 400 frames -> {rss_late_kb} kB at 1500 frames (outbox full)")
    assert first - 1 >= frames_before_restart - outbox_max > 0
    # The exact count: every stats message (all sent once the backlog had drained) and the --stats-file written
    # at exit report as dropped exactly the messages that never arrived.
    for payload in stats:
        validator("stats").validate(payload)
        assert payload["mqtt"]["dropped"] == dropped
        assert payload["mqtt"]["reconnects"] == 0  # the first connection is not a reconnect
    assert stats_file["mqtt"]["dropped"] == dropped  # the --stats-file written at exit says the same
    # Bounded memory: 1100 frames into a full outbox add no per-frame state (a leak of a few hundred bytes
    # per message would show as ~0.5 MB; allocator noise stays well below this bound).
    assert rss_late_kb - rss_early_kb < 4096, (rss_early_kb, rss_late_kb)


def test_twenty_daemons_one_broker_no_loss(tmp_path: Path) -> None:
    count, boxes = 50, 20
    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker, "edgedet/+/detection")
        started = time.monotonic()
        daemons = [Daemon(tmp_path, broker.port, f"box{i:02d}", fps=50, max_frames=count) for i in range(boxes)]
        try:
            stats = [finished(d, 180) for d in daemons]
        finally:
            for d in daemons:
                d.kill()
        elapsed = time.monotonic() - started
        assert wait_until(lambda: len(sub.received) >= boxes * count, 10)
        sub.close()
    print(f"{boxes} daemons x {count} frames in {elapsed:.1f} s")
    expected = set(range(1, count + 1))
    for i, stat in enumerate(stats):
        assert stat["frames_processed"] == count
        seqs = sub.seqs(f"box{i:02d}/detection")
        assert seqs == expected, f"box{i:02d} missing {sorted(expected - seqs)[:10]}"


def test_wrong_password_one_clear_line_and_the_loop_keeps_running(tmp_path: Path) -> None:
    password = "not-the-password"
    broker = Mosquitto(tmp_path / "broker", users={"cam": "s3cret-cam"}).start()
    try:
        env = {**DAEMON_ENV, "EDGEDET_MQTT_PASSWORD": password}
        daemon = Daemon(tmp_path, broker.port, "cam1", fps=100, max_frames=300,
                        config={"mqtt": {"username": "cam"}}, env=env)
        try:
            stats = finished(daemon)
        finally:
            daemon.kill()
    finally:
        broker.stop()
    err = daemon.stderr()
    assert stats["frames_processed"] == 300
    refused = [line for line in err.splitlines() if "refused the login" in line]
    assert len(refused) == 1, err[-3000:]  # one line, not one per retry (3 s of retries at 0.1-0.5 s)
    assert "user 'cam'" in refused[0] and "mqtt.username" in refused[0] and "EDGEDET_MQTT_PASSWORD" in refused[0]
    assert password not in err and "s3cret" not in err
    # Kept, not lost, while the login is refused: the 300 detections plus the stats messages of the run.
    kept = re.search(r"MQTT: stopping with (\d+) message\(s\) not delivered", err)
    assert kept is not None and int(kept.group(1)) >= 300, err[-3000:]
