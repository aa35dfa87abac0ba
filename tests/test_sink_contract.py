"""The ``Sink`` contract (edgedet/results.py): every sink has the whole protocol, and ``handle`` does nothing that
waits or encodes on the inference thread. MQTT payloads and snapshot JPEGs are built by the sender thread;
a real mosquitto receives them."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from mosquitto import Collector, Mosquitto, available, free_port
from PIL import Image

from edgedet.publish import messages, sink
from edgedet.publish.config import MqttConfig, PublishConfig
from edgedet.publish.console import ConsoleSink
from edgedet.publish.jsonl import JsonlSink
from edgedet.publish.mqtt import MqttPublisher
from edgedet.publish.sink import MqttSink
from edgedet.results import Class, FrameResult, LoopStats, Sink


def result(frame_id: int, label: str) -> FrameResult:
    return FrameResult(frame_id, time.time(), time.monotonic(), [Class(1, 0.9, label), Class(0, 0.1, "other")],
                       {"preprocess": 0.5, "inference": 2.0, "postprocess": 0.1, "total": 2.6}, 3.0, "m")


def image(value: int) -> np.ndarray:
    return np.full((480, 640, 3), value, np.uint8)


def mqtt_sink(port: int, **publish: object) -> MqttSink:
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port=port, reconnect_min_s=0.1, reconnect_max_s=0.5)
    return MqttSink(MqttPublisher(cfg, "contract"), PublishConfig(**publish), model_name="m")  # type: ignore[arg-type]


def test_every_sink_has_the_whole_protocol(tmp_path: Path) -> None:
    protocol = {name for name in vars(Sink) if not name.startswith("_")}
    assert protocol == {"handle", "on_stats", "counters", "close"}
    for made in (ConsoleSink(), JsonlSink(tmp_path / "f.jsonl"), mqtt_sink(free_port())):
        for name in protocol:
            assert callable(getattr(type(made), name, None)), f"{type(made).__name__} lacks {name}"
        assert isinstance(made.counters(), dict)


class ThreadSpy:
    """Records the thread each wrapped function runs on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def wrap(self, name: str, function):  # type: ignore[no-untyped-def]
        def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls.append((name, threading.get_ident()))
            return function(*args, **kwargs)

        return spy

    def on(self, ident: int) -> list[str]:
        return [name for name, thread in self.calls if thread == ident]


def test_mqtt_handle_neither_encodes_nor_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broker unreachable, snapshots on, a label change at every frame: handle only decides and appends."""
    spy = ThreadSpy()
    monkeypatch.setattr(sink, "encode_snapshot", spy.wrap("encode_snapshot", sink.encode_snapshot))
    monkeypatch.setattr(sink, "_dumps", spy.wrap("_dumps", sink._dumps))
    monkeypatch.setattr(messages, "detection_payload", spy.wrap("detection_payload", messages.detection_payload))
    made = mqtt_sink(free_port(), snapshot=True)
    client = made.publisher._client
    monkeypatch.setattr(client, "publish", spy.wrap("paho publish", client.publish))
    made.publisher.start()  # connecting in the background to a port nobody listens on
    try:
        for i in range(200):
            made.handle(result(i, "cat" if i % 2 else "dog"), image(i % 256))
        assert spy.on(threading.get_ident()) == []
        stats = made.publisher.stats()
        # 200 detections, and ONE pending snapshot however often the label changed: it holds the newest frame.
        assert stats["queued"] == 201 and stats["connected"] is False
        snapshots = [m for m in made.publisher._outbox if m.topic.endswith("/snapshot")]
        assert len(snapshots) == 1
        assert int(snapshots[0].payload._frame[0, 0, 0]) == 199  # type: ignore[union-attr]
    finally:
        made.close(flush_timeout_s=0.0)


def arrived(collector: Collector, snapshots: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(collector.payloads("/snapshot")) < snapshots:
        time.sleep(0.02)


@pytest.mark.skipif(available() is not None, reason=available() or "")
def test_mqtt_payloads_and_snapshots_are_built_by_the_sender_and_arrive(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    spy = ThreadSpy()
    monkeypatch.setattr(sink, "encode_snapshot", spy.wrap("encode_snapshot", sink.encode_snapshot))
    broker = Mosquitto(tmp_path / "broker").start()
    collector = Collector(broker, "edgedet/contract/#")
    made = mqtt_sink(broker.port, snapshot=True)
    made.publisher.start()
    try:
        made.handle(result(1, "cat"), image(10))
        made.handle(result(2, "cat"), image(20))  # same label: no new snapshot
        arrived(collector, 1)
        made.handle(result(3, "dog"), image(200))
        arrived(collector, 2)
    finally:
        made.close(flush_timeout_s=2.0)
        collector.close()
        broker.stop()
    assert [d["seq"] for d in collector.json("/detection")] == [1, 2, 3]
    jpegs = collector.payloads("/snapshot")
    assert len(jpegs) == 2
    means = [float(np.asarray(Image.open(io.BytesIO(j))).mean()) for j in jpegs]
    assert abs(means[0] - 10) < 3 and abs(means[1] - 200) < 3  # each label change's own frame
    assert spy.calls and spy.on(threading.get_ident()) == []  # encoded, but never on the caller's thread


def test_message_dataclasses_are_exactly_their_schemas() -> None:
    """The JSON of InfoMessage and StatsMessage has exactly the schema's properties, and every required one."""
    import json

    schemas = Path(__file__).resolve().parents[1] / "docs" / "schemas"
    info = json.loads((schemas / "info.json").read_text())
    assert {f.name for f in fields(messages.InfoMessage)} == set(info["properties"])
    for section in (messages.ModelSection, messages.RuntimeSection, messages.DelegateSection,
                    messages.SourceSection):
        name = section.__name__.removesuffix("Section").lower()
        assert {f.name for f in fields(section)} == set(info["properties"][name]["properties"]), name
    stats = json.loads((schemas / "stats.json").read_text())
    flat = ({f.name for f in fields(messages.StatsMessage)} - {"loop"}) | {f.name for f in fields(LoopStats)}
    assert flat == set(stats["properties"])
    assert {f.name for f in fields(messages.MqttCounters)} == set(stats["properties"]["mqtt"]["properties"])
    assert set(stats["required"]) <= flat and set(info["required"]) <= set(info["properties"])
