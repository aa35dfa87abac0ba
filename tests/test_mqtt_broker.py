"""MQTT publishing against a real mosquitto started by each test on a free loopback port."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from mosquitto import Collector, Mosquitto, available, make_tls_files
from paho.mqtt.enums import CallbackAPIVersion

from edgedet.loop import RollingStats
from edgedet.publish.config import HomeAssistantConfig, MqttConfig, PublishConfig, TlsConfig
from edgedet.publish.mqtt import MqttPublisher
from edgedet.publish.sink import MqttSink
from edgedet.results import Class, FrameResult

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "docs" / "schemas"
PROC = Path(__file__).resolve().parent / "mqtt_publisher_proc.py"


def validator(name: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{name}.json").read_text()),
                                           format_checker=jsonschema.FormatChecker())


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def frame(frame_id: int, label: str = "cat") -> FrameResult:
    return FrameResult(frame_id, time.time(), time.monotonic(), [Class(1, 0.9, label), Class(2, 0.05, "dog")],
                       {"preprocess": 0.5, "inference": 2.0, "postprocess": 0.1, "total": 2.6}, 3.0, "m")


def mqtt_cfg(broker_port: int, **overrides: Any) -> MqttConfig:
    base: dict[str, Any] = {"enabled": True, "host": "127.0.0.1", "port": broker_port,
                            "reconnect_min_s": 0.1, "reconnect_max_s": 0.5}
    base.update(overrides)
    return MqttConfig(**base)


def start_proc(broker: Mosquitto, device_id: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(PROC), "--port", str(broker.port), "--device-id", device_id,
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def error_lines(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "edgedet.mqtt" and r.levelno >= logging.ERROR and needle in r.getMessage()]


# ------------------------------------------------------------------------------------------------------
def test_real_payloads_validate_against_schemas(tmp_path: Path) -> None:
    with Mosquitto(tmp_path) as broker:
        collector = Collector(broker, "#")
        proc = start_proc(broker, "cam1", "--count", "20", "--interval", "0.002", "--homeassistant")
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        summary = json.loads(out.splitlines()[-1])
        assert summary["published"] == 20
        assert wait_until(lambda: b"offline" in collector.payloads("cam1/status"))
        collector.close()

    statuses = [p.decode() for p in collector.payloads("edgedet/cam1/status")]
    assert statuses == ["online", "offline"]
    for status in statuses:
        validator("status").validate(status)
    detections = collector.json("edgedet/cam1/detection")
    assert [d["seq"] for d in detections] == list(range(1, 21))
    for payload in detections:
        validator("detection").validate(payload)
    (info,) = collector.json("edgedet/cam1/info")
    validator("info").validate(info)
    assert info["device_id"] == "cam1" and info["run_id"] == summary["run_id"]
    (stats,) = collector.json("edgedet/cam1/stats")
    validator("stats").validate(stats)
    assert stats["frames_processed"] == 20 and stats["frames_captured"] == 20
    discovery = [(t, json.loads(p)) for t, p, _ in collector.received
                 if t.startswith("homeassistant/sensor/")]
    assert {t.split("/")[-2] for t, _ in discovery} == {"label", "score", "inference_ms", "fps"}
    for _, payload in discovery:
        validator("ha_discovery").validate(payload)


def test_discovery_resent_when_home_assistant_comes_online(tmp_path: Path) -> None:
    with Mosquitto(tmp_path) as broker:
        collector = Collector(broker, "homeassistant/sensor/#")
        publisher = MqttPublisher(mqtt_cfg(broker.port), "cam1")
        MqttSink(publisher, PublishConfig(), ha_cfg=HomeAssistantConfig(enabled=True))
        publisher.start()
        assert wait_until(lambda: len(collector.received) == 4)
        assert all(retain is False for *_, retain in collector.received)  # live delivery of retained
        birth = mqtt.Client(CallbackAPIVersion.VERSION2)
        birth.connect(broker.host, broker.port)
        birth.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        birth.disconnect()
        assert wait_until(lambda: len(collector.received) == 8)
        publisher.stop(1)
        collector.close()


def test_status_offline_on_kill9_and_on_sigterm(tmp_path: Path) -> None:
    with Mosquitto(tmp_path) as broker:
        collector = Collector(broker, "edgedet/+/status")
        killed = start_proc(broker, "killed", "--interval", "0.05")
        stopped = start_proc(broker, "stopped", "--interval", "0.05")
        try:
            for proc in (killed, stopped):
                assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
            assert wait_until(lambda: collector.payloads("killed/status") == [b"online"])
            assert wait_until(lambda: collector.payloads("stopped/status") == [b"online"])

            killed.send_signal(signal.SIGKILL)
            killed.wait(10)
            # The Will: the broker publishes it when the socket closes without DISCONNECT.
            assert wait_until(lambda: collector.payloads("killed/status") == [b"online", b"offline"])

            stopped.send_signal(signal.SIGTERM)
            _, err = stopped.communicate(timeout=20)
            assert stopped.returncode == 0, err
            assert wait_until(lambda: collector.payloads("stopped/status") == [b"online", b"offline"])
            # Retained: a late subscriber sees the last state too.
            late = Collector(broker, "edgedet/+/status")
            assert wait_until(lambda: sorted(late.payloads("/status")) == [b"offline", b"offline"])
            late.close()
        finally:
            for proc in (killed, stopped):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        collector.close()


def test_zero_loss_across_three_broker_restarts(tmp_path: Path) -> None:
    total = 3000
    broker = Mosquitto(tmp_path, persistence=True).start()
    collector = Collector(broker, "edgedet/cam1/detection", client_id="zero-loss-sub", persistent=True)
    publisher = MqttPublisher(mqtt_cfg(broker.port), "cam1")
    sink = MqttSink(publisher, PublishConfig(mode="every_frame"), model_name="m")
    publisher.start()
    assert wait_until(lambda: publisher.connected)
    # Stop the broker at these frames and start it again 150 frames later: frames keep coming meanwhile.
    stops = {600: 750, 1400: 1550, 2200: 2350}
    restarts_at = set(stops.values())
    try:
        for frame_id in range(total):
            if frame_id in stops:
                broker.stop()
            if frame_id in restarts_at:
                broker.start()
            sink.handle(frame(frame_id))
            time.sleep(0.0005)
        assert publisher.flush(30), publisher.stats()
        sink.on_stats(RollingStats().snapshot(frames_dropped=0))
        assert publisher.flush(10)
        assert wait_until(lambda: len({d["seq"] for d in collector.json("/detection")}) >= total, 30)
        seen = [d["seq"] for d in collector.json("/detection")]
        missing = sorted(set(range(1, total + 1)) - set(seen))
        assert missing == [], f"{len(missing)} missing, first {missing[:10]}"
        stats = publisher.stats()
        assert stats["reconnects"] == 3
        assert stats["dropped"] == 0
        assert sink.seq == total
    finally:
        publisher.stop(2)
        collector.close()
        broker.stop()


def test_outbox_overflow_drops_oldest_and_counts_exactly(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    broker = Mosquitto(tmp_path, persistence=True).start()
    # A persistent session made while the broker is up, so it queues what arrives while nobody listens.
    collector = Collector(broker, "edgedet/cam1/detection", client_id="overflow-sub", persistent=True)
    broker.stop()  # down for the whole publishing run
    publisher = MqttPublisher(mqtt_cfg(broker.port, outbox_max=100), "cam1")
    sink = MqttSink(publisher, PublishConfig(), model_name="m")
    publisher.start()
    try:
        for frame_id in range(1000):
            sink.handle(frame(frame_id))
        stats = publisher.stats()
        assert (stats["queued"], stats["dropped"], stats["connected"]) == (100, 900, False)
        assert wait_until(lambda: publisher.stats()["failed_attempts"] >= 3)
        refused = error_lines(caplog, "refused")
        assert len(refused) == 1, refused  # one line, not one per retry
        assert f"127.0.0.1:{broker.port}" in refused[0]

        broker.start()
        assert wait_until(lambda: publisher.connected)
        assert publisher.flush(10)
        assert wait_until(lambda: len(collector.payloads("/detection")) >= 100)
        assert publisher.stats()["dropped"] == 900
    finally:
        publisher.stop(2)
        collector.close()
        broker.stop()
    # Exactly the newest 100, in order: the oldest 900 were the ones dropped.
    assert [d["seq"] for d in collector.json("/detection")] == list(range(901, 1001))


def test_a_full_outbox_drops_the_oldest_waiting_message_not_the_one_being_sent(tmp_path: Path) -> None:
    # Right after a reconnect the sender takes the oldest message while the frame loop keeps appending: if the
    # outbox fills up again before the sender takes the next one, that next one is the oldest *waiting* message
    # and the one dropped (and counted); the message already taken is delivered.
    with Mosquitto(tmp_path) as broker:
        collector = Collector(broker, "edgedet/cam1/t")
        publisher = MqttPublisher(mqtt_cfg(broker.port, outbox_max=3), "cam1")
        publisher.start()
        taken, release = threading.Event(), threading.Event()

        def first() -> bytes:  # runs in the sender thread, after it took the message from the outbox
            taken.set()
            assert release.wait(10)
            return b"1"

        try:
            assert wait_until(lambda: publisher.connected)
            publisher.publish("edgedet/cam1/t", first)
            assert taken.wait(10)
            for n in range(2, 6):  # 2, 3, 4 fill the outbox; 5 drops 2
                publisher.publish("edgedet/cam1/t", str(n))
            assert publisher.stats()["dropped"] == 1
            release.set()
            assert publisher.flush(10)
            assert wait_until(lambda: len(collector.payloads("/t")) >= 4)
            assert publisher.stats()["dropped"] == 1
        finally:
            release.set()
            publisher.stop(2)
            collector.close()
    assert collector.payloads("/t") == [b"1", b"3", b"4", b"5"]


def test_an_acknowledgement_outside_the_outbox_is_not_taken_for_an_outbox_message_a_wrap_later(
        tmp_path: Path) -> None:
    # The retained ``online`` goes out beside the outbox (mid 1); its acknowledgement belongs to no outbox
    # message. When paho's message ids come round to 1 again, the outbox message sent under it must still wait
    # for its own acknowledgement: taken as acknowledged, a stop would not wait for it and the outbox file would
    # delete its row.
    with Mosquitto(tmp_path) as broker:
        publisher = MqttPublisher(mqtt_cfg(broker.port), "cam1")
        publisher.start()
        assert broker.proc is not None
        try:
            assert wait_until(lambda: publisher.connected)
            for n in range(2000):
                publisher.publish("edgedet/cam1/t", str(n))
            assert publisher.flush(20)  # the acknowledgement of ``online`` came before these
            publisher._client._last_mid = 0  # type: ignore[attr-defined]  # instead of 63,534 more messages
            broker.proc.send_signal(signal.SIGSTOP)  # no acknowledgement can come now
            try:
                publisher.publish("edgedet/cam1/t", "after the wrap")
                assert wait_until(lambda: publisher.stats()["sent"] == 2001)
                assert publisher.stats()["queued"] == 1
                assert not publisher.flush(0.3)
            finally:
                broker.proc.send_signal(signal.SIGCONT)
            assert publisher.flush(10)
            assert (publisher.stats()["acked"], publisher.stats()["queued"]) == (2001, 0)
        finally:
            publisher.stop(2)


def test_tls_with_generated_ca(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    tls = make_tls_files(tmp_path / "pki")
    with Mosquitto(tmp_path / "broker", tls=tls) as broker:
        collector = Collector(broker, "edgedet/+/detection", tls=tls)
        good = MqttPublisher(mqtt_cfg(broker.port, tls=TlsConfig(enabled=True, ca_file=tls.ca_file,
                                                                  cert_file=tls.client_cert,
                                                                  key_file=tls.client_key)), "good")
        MqttSink(good, PublishConfig()).handle(frame(1))
        good.start()
        assert wait_until(lambda: len(collector.payloads("good/detection")) == 1)
        good.stop(2)

        wrong_tls = TlsConfig(enabled=True, ca_file=tls.other_ca_file)
        wrong_ca = MqttPublisher(mqtt_cfg(broker.port, tls=wrong_tls), "wrongca")
        plain = MqttPublisher(mqtt_cfg(broker.port), "plain")
        for publisher in (wrong_ca, plain):
            MqttSink(publisher, PublishConfig()).handle(frame(1))
            publisher.start()
        assert wait_until(lambda: min(p.stats()["failed_attempts"] for p in (wrong_ca, plain)) >= 3)
        assert not wrong_ca.connected and not plain.connected
        untrusted = error_lines(caplog, "not trusted")
        assert len(untrusted) == 1 and "mqtt.tls.ca_file" in untrusted[0]
        closed = error_lines(caplog, "closed the connection before accepting it")
        assert len(closed) == 1 and "mqtt.tls.enabled" in closed[0]
        for publisher in (wrong_ca, plain):
            assert publisher.stats()["queued"] == 1  # kept, not lost, while the problem persists
            publisher.stop(0)
        assert collector.payloads("wrongca/detection") == collector.payloads("plain/detection") == []
        collector.close()


ACL = """user cam
topic readwrite edgedet/cam1/#
topic read homeassistant/status

user reader
topic read #
"""


def test_password_acl_and_their_failures(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    users = {"cam": "s3cret-cam", "reader": "s3cret-reader"}
    password_file = tmp_path / "cam.pw"
    password_file.write_text("s3cret-cam\n")
    with Mosquitto(tmp_path / "broker", users=users, acl=ACL) as broker:
        collector = Collector(broker, "edgedet/#", username="reader", password="s3cret-reader")
        # Right password (from a file), allowed topics.
        allowed = MqttPublisher(mqtt_cfg(broker.port, username="cam", password_file=password_file), "cam1")
        MqttSink(allowed, PublishConfig()).handle(frame(1))
        allowed.start()
        assert wait_until(lambda: len(collector.payloads("cam1/detection")) == 1)

        # Wrong password (from the environment variable).
        monkeypatch.setenv("EDGEDET_MQTT_PASSWORD", "not-the-password")
        wrong = MqttPublisher(mqtt_cfg(broker.port, username="cam"), "wrongpw")
        monkeypatch.delenv("EDGEDET_MQTT_PASSWORD")
        # ACL denial: cam may not write under cam2; MQTT 5 reports it in the PUBACK (reason 135),
        # MQTT 3.1.1 gets a normal PUBACK and the broker drops the message silently.
        denied_v5 = MqttPublisher(mqtt_cfg(broker.port, username="cam", password="s3cret-cam", protocol="5"),
                                  "cam2")
        denied_v311 = MqttPublisher(mqtt_cfg(broker.port, username="cam", password="s3cret-cam"), "cam3")
        for publisher in (wrong, denied_v5, denied_v311):
            sink = MqttSink(publisher, PublishConfig())
            for frame_id in range(3):
                sink.handle(frame(frame_id))
            publisher.start()
        assert wait_until(lambda: wrong.stats()["failed_attempts"] >= 3)
        assert wait_until(lambda: denied_v5.stats()["denied"] >= 3)
        # mosquitto 2.0 closes the connection after a denied publish (the retained "online" first), so the
        # MQTT 3.1.1 publisher cycles connect -> drop; its messages stay queued rather than being lost. The ACL
        # is suspected once three connections in a row dropped, each accepted at once (4 connects).
        assert wait_until(lambda: denied_v311.stats()["reconnects"] >= 3)

        auth = error_lines(caplog, "refused the login of user 'cam'")
        assert len(auth) == 1 and "mqtt.username" in auth[0] and "EDGEDET_MQTT_PASSWORD" in auth[0]
        acl = error_lines(caplog, "not authorized, reason 135")
        assert len(acl) == 1 and "edgedet/cam2/" in acl[0] and "ACL" in acl[0]
        drops = [r.getMessage() for r in caplog.records if "lost the connection" in r.getMessage()
                 and "edgedet/cam3/#" in r.getMessage()]
        assert len(drops) == 1 and "ACL" in drops[0]  # once, not once per reconnect
        assert denied_v311.stats()["queued"] >= 3 and denied_v311.stats()["dropped"] == 0
        for line in (r.getMessage() for r in caplog.records):
            assert "s3cret" not in line and "not-the-password" not in line
        assert not wrong.connected and wrong.stats()["queued"] == 3
        assert collector.payloads("cam2/detection") == collector.payloads("cam3/detection") == []
        for publisher in (allowed, wrong, denied_v5, denied_v311):
            publisher.stop(1)
        collector.close()


def test_twenty_publishers_one_subscriber_no_loss(tmp_path: Path) -> None:
    count = 100
    with Mosquitto(tmp_path) as broker:
        collector = Collector(broker, "edgedet/+/detection")
        procs = [start_proc(broker, f"box{i:02d}", "--count", str(count), "--interval", "0.002")
                 for i in range(20)]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert json.loads(out.splitlines()[-1])["published"] == count
        expected = set(range(1, count + 1))
        assert wait_until(lambda: len(collector.received) >= 20 * count, 10)
        for i in range(20):
            seqs = {d["seq"] for d in collector.json(f"box{i:02d}/detection")}
            assert seqs == expected, f"box{i:02d} missing {sorted(expected - seqs)[:10]}"
        collector.close()
