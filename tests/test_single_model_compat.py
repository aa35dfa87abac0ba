"""Golden file: an old single-``model:`` config keeps its MQTT topics and payloads exactly.

The REAL daemon (``python -m edgedet run``, bundled model, deterministic synthetic scenes) publishes to a real
mosquitto; a subscriber on ``#`` records every message with its retain flag as published (MQTT 5
retain-as-published), and one more subscriber, after the daemon exited, records what stays retained. The
messages are normalised (``normalise``: run ids, times, latencies, host-dependent numbers become their type
name; everything else stays exact) and compared with tests/data/single_model_mqtt.json.

What is compared:

* ``detection``: per topic, the ordered list of payloads (seq, frame ids, labels, class ids, scores).
* ``messages``: the set of (topic, retain, payload) of status, info, the Home Assistant discovery configs and
  the snapshot (only "a JPEG" is recorded of it): how often these are sent may depend on timing, what is sent
  does not.
* ``state``: when a state message goes out depends on the clock (rate-limited); the first one (frame 0) is
  compared exactly, every later one by its keys and against the detection of the same frame.
* ``stats``: sent on a timer; the last one (the end of the run) is compared with its counters exact, the keys
  of every one.
* ``retained``: the set of (topic, payload) a subscriber arriving after the run gets, minus the timing-dependent
  state and stats payloads.

Regenerate the golden file with::

    PYTHONPATH=$PWD /work/main/.venv/bin/python tests/test_single_model_compat.py --record

Regenerating is right ONLY when a change of the MQTT messages is intended (and documented in docs/mqtt.md and
docs/schemas/); a refactoring that must not change them (several classifiers per camera, for example) must
leave this test passing against the committed file.
"""

from __future__ import annotations

import difflib
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from mosquitto import Collector, Mosquitto, available
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions
from test_daemon_mqtt import MODEL, REPO, Daemon, finished, wait_until

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")

GOLDEN = Path(__file__).resolve().parent / "data" / "single_model_mqtt.json"
DEVICE_ID = "compat1"
FRAMES = 24  # three cycles of the synthetic source's 8 scenes
SENTINEL = "compat-test/sentinel"
# The old single-model form of every section that shapes the messages.
CONFIG: dict[str, Any] = {
    "model": {"path": str(MODEL)},
    # fps 0: read inline before every inference, so every frame is classified (no frame is dropped) and
    # frame n is always the same scene (they alternate with and without the creature).
    "source": {"type": "synthetic", "pattern": "scenes", "fps": 0, "width": 160, "height": 120},
    "loop": {"max_frames": FRAMES},
    "publish": {"mode": "every_frame", "snapshot": True, "stats_interval_s": 0.2},
    "homeassistant": {"enabled": True, "binary_sensors": {"pikachu": 0.6}},
}

# Values that differ between runs or hosts: replaced by their type name, wherever the key is.
VARYING = {"run_id", "ts", "started", "frame_age_ms", "uptime_s", "fps", "fps_in", "fps_out", "rss_mb",
           "sw_version", "edgedet_version", "queued"}
VARYING_IN = {"latency_ms"}  # every value below these keys
HOST_ONLY = {"cpu_temp_c"}  # present only where the board has a thermal zone
STATE_FPS = "number, once the loop has one"


def _type_names(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _type_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_type_names(v) for v in value]
    return type(value).__name__


def _normalise_json(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in HOST_ONLY:
                continue
            if k in VARYING_IN:
                out[k] = _type_names(v)
            elif k in VARYING:
                out[k] = type(v).__name__
            else:
                out[k] = _normalise_json(v, k)
        return out
    if isinstance(value, list):
        return [_normalise_json(v, key) for v in value]
    if isinstance(value, float):
        return round(value, 4)
    return value


def normalise(topic: str, payload: bytes) -> Any:
    """A payload with what legitimately varies between runs replaced by its type name."""
    if payload.startswith(b"\xff\xd8"):
        return "<jpeg>"
    try:
        data = json.loads(payload)
    except ValueError:
        return {"text": payload.decode("utf-8", errors="replace")}
    if not isinstance(data, dict):
        return {"text": payload.decode("utf-8", errors="replace")}
    if topic.endswith("/info"):
        # host-dependent: the runtime's version and thread count, where the checkout is
        data["runtime"]["version"] = type(data["runtime"]["version"]).__name__
        data["runtime"]["threads"] = type(data["runtime"]["threads"]).__name__
        path = Path(data["model"]["path"]).resolve()
        data["model"]["path"] = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else "str"
    return _normalise_json(data)


def keys_of(value: Any) -> Any:
    """The set and nesting of keys, recursively (lists: the keys of their dict items)."""
    if isinstance(value, dict):
        return {k: keys_of(v) for k, v in sorted(value.items()) if k not in HOST_ONLY}
    if isinstance(value, list):
        items = [keys_of(v) for v in value if isinstance(v, (dict, list))]
        return [items[0]] if items else []
    return None


class Recorder:
    """Subscribes to ``#`` with MQTT 5 retain-as-published, so a live message keeps the retain flag it was
    published with. ``sync()`` publishes a sentinel and waits for it: everything the broker had before is in."""

    def __init__(self, broker: Mosquitto) -> None:
        self.received: list[tuple[str, bool, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._sentinels: set[bytes] = set()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rec-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            "#", options=SubscribeOptions(qos=1, retainAsPublished=True))
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "recorder did not subscribe"

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            if message.topic == SENTINEL:
                self._sentinels.add(message.payload)
            else:
                self.received.append((message.topic, bool(message.retain), message.payload))

    def sync(self) -> None:
        token = uuid.uuid4().hex.encode()
        self.client.publish(SENTINEL, token, qos=1)
        assert wait_until(lambda: token in self._sentinels, 10), "the sentinel did not come back"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_after(broker: Mosquitto) -> list[tuple[str, bytes]]:
    """What a subscriber arriving now gets (mosquitto sends the retained messages before later ones)."""
    late = Collector(broker, "#")
    token = uuid.uuid4().hex.encode()
    late.client.publish(SENTINEL, token, qos=1)
    try:
        assert wait_until(lambda: token in late.payloads(SENTINEL), 10), "the sentinel did not come back"
        return [(t, p) for t, p, retain in late.received if retain]
    finally:
        late.close()


def record(workdir: Path) -> dict[str, Any]:
    """Run the daemon once and return the normalised messages (the golden file's content)."""
    with Mosquitto(workdir / "broker", persistence=False) as broker:
        recorder = Recorder(broker)
        daemon = Daemon(workdir, broker.port, DEVICE_ID, config=CONFIG)
        try:
            finished(daemon)
        finally:
            daemon.kill()
        recorder.sync()
        recorder.close()
        retained = retained_after(broker)
    return summarise(recorder.received, retained)


def summarise(received: list[tuple[str, bool, bytes]], retained: list[tuple[str, bytes]]) -> dict[str, Any]:
    base = f"edgedet/{DEVICE_ID}"
    detection: dict[str, list[Any]] = {}
    messages: set[str] = set()
    states: list[dict[str, Any]] = []
    stats: list[dict[str, Any]] = []
    flags: dict[str, set[bool]] = {}
    raw_detection: dict[Any, dict[str, Any]] = {}
    for topic, retain, payload in received:
        flags.setdefault(topic, set()).add(retain)
        if topic.endswith("/detection"):
            detection.setdefault(topic, []).append(normalise(topic, payload))
            data = json.loads(payload)
            raw_detection[data.get("frame_id")] = data
        elif topic == f"{base}/state":
            states.append(json.loads(payload))
        elif topic == f"{base}/stats":
            stats.append(json.loads(payload))
        else:
            messages.add(json.dumps([topic, retain, normalise(topic, payload)], sort_keys=True))
    # State: derived from the detection of the same frame (its message goes out when the clock says so). The
    # loop's fps joins it once a stats message has been computed: whether that happened before a given state
    # message is timing, that it is a number is not.
    same = ("run_id", "frame_id", "ts", "label", "class_id", "score", "top_k")
    consistent = all(
        {k: state.get(k) for k in same} == {k: raw_detection.get(state.get("frame_id"), {}).get(k) for k in same}
        and isinstance(state.get("fps", 0.0), (int, float)) for state in states)
    first_state = (normalise(f"{base}/state", json.dumps(states[0]).encode()) | {"fps": STATE_FPS}
                   if states else None)
    state_keys = {json.dumps(keys_of(s | {"fps": STATE_FPS}), sort_keys=True) for s in states}
    stats_keys = {json.dumps(keys_of(s), sort_keys=True) for s in stats}
    timed = (f"{base}/state", f"{base}/stats")
    return {
        "config": CONFIG | {"model": {"path": str(MODEL.relative_to(REPO))}},
        "topics": {topic: sorted(values) for topic, values in sorted(flags.items())},
        "detection": detection,
        "messages": [json.loads(m) for m in sorted(messages)],
        "state": {"first": first_state, "keys": [json.loads(k) for k in sorted(state_keys)],
                  "each_is_its_frames_detection": consistent},
        "stats": {"last": normalise(f"{base}/stats", json.dumps(stats[-1]).encode()) if stats else None,
                  "keys": [json.loads(k) for k in sorted(stats_keys)]},
        "retained": sorted([[t, "<timed>" if t in timed else normalise(t, p)] for t, p in retained],
                           key=lambda item: json.dumps(item, sort_keys=True)),
    }


def dumps(summary: dict[str, Any]) -> str:
    """Sorted, indented JSON; one line per detection message, so that a diff shows whole messages."""
    parts = []
    for key in sorted(summary):
        if key == "detection":
            topics = [f"  {json.dumps(topic)}: [\n" + ",\n".join(
                f"   {json.dumps(payload, sort_keys=True, ensure_ascii=False)}" for payload in payloads) + "\n  ]"
                for topic, payloads in sorted(summary[key].items())]
            value = "{\n" + ",\n".join(topics) + "\n }"
        else:
            value = json.dumps(summary[key], indent=1, sort_keys=True, ensure_ascii=False).replace("\n", "\n ")
        parts.append(f" {json.dumps(key)}: {value}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def test_single_model_config_publishes_the_golden_messages(tmp_path: Path) -> None:
    assert GOLDEN.is_file(), f"{GOLDEN} missing: record it with python {__file__} --record"
    expected = GOLDEN.read_text()
    actual = dumps(record(tmp_path))
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True), actual.splitlines(keepends=True),
                                            fromfile=str(GOLDEN.relative_to(REPO)), tofile="this run", n=2))
        pytest.fail("the MQTT messages of a single-model config changed (regenerate the golden file ONLY "
                    f"for an intended change: python tests/test_single_model_compat.py --record):\n{diff}")


def main(argv: list[str]) -> int:
    import tempfile

    if argv != ["--record"]:
        print(f"usage: python {sys.argv[0]} --record   (rewrites {GOLDEN.relative_to(REPO)})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        started = time.monotonic()
        text = dumps(record(Path(folder)))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(text)
    print(f"wrote {GOLDEN} ({len(text.splitlines())} lines, {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
