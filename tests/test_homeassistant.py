"""edgedet against a REAL Home Assistant Core (tests/hass.py) and a real mosquitto: the real daemon
(``python -m edgedet run``, bundled model) publishes discovery and state, and what is checked is what Home
Assistant itself says: its states, its recorder's history, its device registry, its automations.

One Home Assistant per module (it takes seconds to start); each test uses its own device id.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any, Callable

import hass
import pytest
from hass import HomeAssistant, wait_for
from mosquitto import Collector, Mosquitto
from mosquitto import available as mosquitto_available
from PIL import Image
from test_daemon_mqtt import LABELS, MODEL, Daemon, terminate

from edgedet import __version__

pytestmark = [
    pytest.mark.skipif(mosquitto_available() is not None, reason=mosquitto_available() or ""),
    pytest.mark.skipif(hass.available() is not None, reason=hass.available() or ""),
]

MODEL_NAME = "pikachu_mobilenet_v2_0.35_96_int8"
THRESHOLD = 0.8
NOT_A_STATE = ("unknown", "unavailable")
# The device whose binary sensor the automation in Home Assistant's configuration watches.
SCENES = "ha_scenes"
COUNTER = "counter.pikachu_seen"
EXTRA_CONFIG = {
    "automation": [{
        "alias": "pikachu seen",
        "trigger": [{"platform": "state", "entity_id": f"binary_sensor.edgedet_{SCENES}_pikachu", "to": "on"}],
        "action": [{"service": "counter.increment", "target": {"entity_id": COUNTER}}],
    }],
    "counter": {"pikachu_seen": {"initial": 0, "step": 1, "restore": False}},
}


def ha_config(**homeassistant: Any) -> dict[str, Any]:
    """A daemon config with Home Assistant discovery, a binary sensor for pikachu and snapshots."""
    return {"homeassistant": {"enabled": True, "state_interval_s": 0.5, "expire_after_s": 30,
                              "binary_sensors": {"pikachu": THRESHOLD}, **homeassistant},
            "publish": {"snapshot": True, "stats_interval_s": 0.5}}


def entity_ids(device_id: str) -> dict[str, str]:
    base = f"edgedet_{device_id}"
    return {"label": f"sensor.{base}_label", "score": f"sensor.{base}_score",
            "latency": f"sensor.{base}_inference_latency", "fps": f"sensor.{base}_frames_per_second",
            "pikachu": f"binary_sensor.{base}_pikachu", "snapshot": f"image.{base}_snapshot"}


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[HomeAssistant]:
    started = time.monotonic()
    folder = tmp_path_factory.mktemp("homeassistant")
    broker = Mosquitto(folder / "broker").start()
    instance = HomeAssistant(folder / "ha", broker, extra_config=EXTRA_CONFIG)
    try:
        instance.start()
        first_start_s = time.monotonic() - started
        yield instance
    finally:
        instance.close()
        broker.stop()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # printed in CI's log, not swallowed by output capture
            reporter.write_line(f"Home Assistant {'.'.join(map(str, hass.ha_version()))} tests: "
                                f"{time.monotonic() - started:.1f} s (first start {first_start_s:.1f} s)")


def frames(daemon: Daemon) -> list[tuple[float, str, float]]:
    """``(capture time, top label, score)`` of every frame the daemon classified (its JSON-lines sink)."""
    rows = [json.loads(line) for line in daemon.jsonl.read_text().splitlines()]
    return [(datetime.fromisoformat(r["ts"]).timestamp(), r["label"], r["score"]) for r in rows]


def assert_follows(history: list[tuple[str, float]], seen: list[tuple[float, str, float]],
                   shown: Callable[[str, float], str], lag_s: float = 1.0) -> None:
    """Every state Home Assistant recorded is what a frame classified shortly before said: the synthetic
    scenes change every second, so a state from an older scene (or an invented one) finds no such frame."""
    first_frame = seen[0][0]
    for state, changed in history:
        if state in NOT_A_STATE or changed < first_frame:
            continue
        matching = [f for f in seen if changed - lag_s <= f[0] <= changed and shown(f[1], f[2]) == state]
        assert matching, f"{state!r} at {changed:.3f}: no frame classified in the {lag_s} s before says so"


def binary(label: str, score: float) -> str:
    return "on" if label == "pikachu" and score >= THRESHOLD else "off"


def still_scene(folder: Path) -> Path:
    """A folder with one drawn pikachu scene: an ``images`` source whose label never changes, so Home
    Assistant can only learn the state from the retained state message, not from a change."""
    import numpy as np

    from edgedet.frames.scenes import make_image

    folder.mkdir(parents=True, exist_ok=True)
    make_image(np.random.default_rng(3), 160, True).save(folder / "scene.png")
    return folder


def real_state(ha: HomeAssistant, entity_id: str) -> str | None:
    value = ha.value(entity_id)
    return value if value is not None and value not in NOT_A_STATE else None


def test_device_and_entities_as_home_assistant_shows_them(ha: HomeAssistant, tmp_path: Path) -> None:
    ids = entity_ids("ha_entities")
    daemon = Daemon(tmp_path, ha.broker.port, "ha_entities", fps=20, config=ha_config())
    started = time.time()
    try:
        for entity_id in ids.values():
            wait_for(lambda e=entity_id: real_state(ha, e), 60, f"{entity_id}\n{daemon.stderr()[-2000:]}")
        # The numbers follow the detections: both scenes seen, fps from the stats (0.5 s apart).
        wait_for(lambda: {s for s, _ in ha.history(ids["label"], started)} >= set(LABELS), 30,
                 "both labels on the label sensor")
        wait_for(lambda: float(ha.value(ids["fps"]) or 0) > 0, 30, "the fps")
        states = ha.states()
        jpeg = ha.image(ids["snapshot"])
    finally:
        code, _ = terminate(daemon, 10)
        daemon.kill()
    assert code == 0, daemon.stderr()[-3000:]

    device = ha.device(ids["label"])
    assert device["name"] == "edgedet ha_entities"
    assert (device["manufacturer"], device["model"], device["sw_version"]) == ("edgedet", MODEL_NAME,
                                                                               __version__)
    assert device["identifiers"] == [["mqtt", "edgedet_ha_entities"]]
    assert device["entities"] == sorted(ids.values())

    label = states[ids["label"]]
    assert label["state"] in LABELS
    assert label["attributes"]["friendly_name"] == "edgedet ha_entities Label"
    assert label["attributes"]["device_class"] == "enum"
    if hass.ha_version() >= (2024, 9):  # MQTT sensors read options since 2024.9; 2024.3 drops the key
        assert label["attributes"]["options"] == LABELS
    else:
        assert "options" not in label["attributes"]
    top_k = label["attributes"]["top_k"]
    assert [c["label"] for c in top_k] == [label["state"], *[x for x in LABELS if x != label["state"]]]
    assert label["attributes"]["class_id"] == LABELS.index(label["state"])

    score = states[ids["score"]]
    assert 0.0 <= float(score["state"]) <= 1.0
    assert score["attributes"]["state_class"] == "measurement"
    assert score["attributes"]["friendly_name"] == "edgedet ha_entities Score"

    latency = states[ids["latency"]]
    assert float(latency["state"]) > 0
    assert (latency["attributes"]["unit_of_measurement"], latency["attributes"]["device_class"]) == (
        "ms", "duration")
    assert set(latency["attributes"]) >= {"preprocess", "inference", "postprocess", "total"}
    assert latency["attributes"]["friendly_name"] == "edgedet ha_entities Inference latency"

    assert states[ids["fps"]]["attributes"]["unit_of_measurement"] == "fps"
    assert states[ids["pikachu"]]["state"] in ("on", "off")
    assert states[ids["pikachu"]]["attributes"]["friendly_name"] == "edgedet ha_entities pikachu"
    with Image.open(BytesIO(jpeg)) as image:
        assert (image.format, image.size) == ("JPEG", (160, 120))

    seen = frames(daemon)
    assert_follows(ha.history(ids["label"], started), seen, lambda label, score: label)
    assert_follows(ha.history(ids["pikachu"], started), seen, binary)
    refused = [line for line in ha.errors() if "mqtt" in line.lower() or "edgedet" in line]
    assert refused == [], refused
    # A clean stop: every entity of the device becomes unavailable.
    wait_for(lambda: all(ha.value(e) == "unavailable" for e in ids.values()), 30, "unavailable after SIGTERM")


def test_binary_sensor_drives_an_automation_through_the_scenes(ha: HomeAssistant, tmp_path: Path) -> None:
    """An automation triggered by the binary sensor turning on (a counter in Home Assistant's own
    configuration) follows the synthetic scenes: on for pikachu scenes, off for the others."""
    entity_id = entity_ids(SCENES)["pikachu"]
    counter_before = int(ha.value(COUNTER) or 0)
    daemon = Daemon(tmp_path, ha.broker.port, SCENES, fps=20, config=ha_config())
    started = time.time()
    try:
        # Three pikachu scenes (the scenes alternate every second).
        wait_for(lambda: int(ha.value(COUNTER) or 0) - counter_before >= 3, 60,
                 f"three automation runs\n{daemon.stderr()[-2000:]}")
    finally:
        code, _ = terminate(daemon, 10)
        daemon.kill()
    assert code == 0, daemon.stderr()[-3000:]
    wait_for(lambda: ha.value(entity_id) == "unavailable", 30, "unavailable after SIGTERM")
    history = ha.history(entity_id, started)
    shown = [state for state, _ in history if state not in NOT_A_STATE]
    assert shown.count("on") >= 3 and shown.count("off") >= 2, history
    assert_follows(history, frames(daemon), binary)
    # The automation ran once per change to on, as Home Assistant recorded them.
    assert int(ha.value(COUNTER) or 0) - counter_before == shown.count("on"), history


def assert_state_at_once(ha: HomeAssistant, ids: dict[str, str], expected: dict[str, str]) -> float:
    """After Home Assistant's (re)start: every entity shows the current state, never ``unknown``, within
    2 s of Home Assistant's birth message (by Home Assistant's own timestamps). Returns that delay."""
    for key, value in expected.items():
        wait_for(lambda e=ids[key], v=value: ha.value(e) == v, 30, f"{ids[key]} = {value}\n{ha.log_tail()}")
    delays = []
    for key, value in expected.items():
        # The recorder commits at once, but asynchronously: wait for the state to be in the history too.
        history = wait_for(lambda e=ids[key], v=value: (h := ha.history(e, ha.started_wall))
                           and any(state == v for state, _ in h) and h, 30, f"{ids[key]} in the history")
        assert "unknown" not in [state for state, _ in history], (key, history)
        first_real = min(changed for state, changed in history if state == value)
        delays.append(max(0.0, first_real - ha.birth_wall))
    delay = max(delays)
    assert delay <= 2.0, f"the state took {delay:.2f} s after Home Assistant's birth message"
    return delay


def test_home_assistant_started_after_edgedet_and_restarted_shows_the_state_at_once(
        ha: HomeAssistant, tmp_path: Path) -> None:
    ids = entity_ids("ha_late")
    # A 30 s heartbeat and a still scene: within the test only the retained state can tell Home Assistant.
    config = ha_config(state_interval_s=30, expire_after_s=120)
    config["source"] = {"type": "images", "path": str(still_scene(tmp_path / "scene")), "fps": 10}
    config["publish"]["snapshot"] = False
    ha.stop()
    daemon = Daemon(tmp_path, ha.broker.port, "ha_late", config=config)
    try:
        state_topic = Collector(ha.broker, "edgedet/ha_late/state")
        wait_for(lambda: state_topic.payloads("/state"), 60, f"the state message\n{daemon.stderr()[-2000:]}")
        state = json.loads(state_topic.payloads("/state")[0])
        state_topic.close()
        expected = {"label": state["label"], "pikachu": binary(state["label"], state["score"]),
                    "score": str(state["score"])}
        ha.start()
        after_start = assert_state_at_once(ha, ids, expected)
        ha.restart()
        after_restart = assert_state_at_once(ha, ids, expected)
        print(f"state shown {after_start:.2f} s after the birth message (started after edgedet), "
              f"{after_restart:.2f} s (restarted)")
    finally:
        if ha.proc is None or ha.proc.poll() is not None:
            ha.start()  # for the tests after this one
        code, _ = terminate(daemon, 10)
        daemon.kill()
    assert code == 0, daemon.stderr()[-3000:]


def test_unavailable_on_sigterm_and_kill9_and_available_again_on_restart(ha: HomeAssistant,
                                                                         tmp_path: Path) -> None:
    ids = entity_ids("ha_avail")
    label = ids["label"]

    def start() -> Daemon:
        daemon = Daemon(tmp_path, ha.broker.port, "ha_avail", fps=20, config=ha_config())
        wait_for(lambda: real_state(ha, label), 60, f"available\n{daemon.stderr()[-2000:]}")
        return daemon

    daemon = start()
    code, _ = terminate(daemon, 10)
    daemon.kill()
    assert code == 0, daemon.stderr()[-3000:]
    wait_for(lambda: all(ha.value(e) == "unavailable" for e in ids.values()), 30, "unavailable after SIGTERM")

    daemon = start()  # available again
    try:
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(10)
        # The Will: the broker publishes offline when the connection dies without a DISCONNECT.
        wait_for(lambda: all(ha.value(e) == "unavailable" for e in ids.values()), 30, "unavailable after kill -9")
    finally:
        daemon.kill()
    daemon = start()
    code, _ = terminate(daemon, 10)
    daemon.kill()
    assert code == 0


def test_reload_with_an_unchanged_config_changes_nothing_in_home_assistant(ha: HomeAssistant,
                                                                          tmp_path: Path) -> None:
    """SIGHUP with the same file: Home Assistant sees no change at all (no unavailable, no new state)."""
    ids = entity_ids("ha_reload")
    config = ha_config(state_interval_s=30, expire_after_s=120)
    config["source"] = {"type": "images", "path": str(still_scene(tmp_path / "scene")), "fps": 10}
    config["publish"]["snapshot"] = False
    daemon = Daemon(tmp_path, ha.broker.port, "ha_reload", config=config)
    try:
        label = wait_for(lambda: real_state(ha, ids["label"]), 60, f"available\n{daemon.stderr()[-2000:]}")
        status = Collector(ha.broker, "edgedet/ha_reload/status")
        wait_for(lambda: status.payloads("/status"), 10, "the retained status")
        before = len(status.payloads("/status"))
        sent = time.time()
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded" in daemon.stderr(), 60, f"the reload\n{daemon.stderr()[-2000:]}")
        frames_after_reload = daemon.frames_written()
        wait_for(lambda: daemon.frames_written() >= frames_after_reload + 10, 30, "frames after the reload")
        after_reload = status.payloads("/status")[before:]
        status.close()
        # Read while the daemon still runs: its stop makes every entity unavailable, as it should.
        histories = {entity_id: ha.history(entity_id, sent) for entity_id in ids.values()
                     if not entity_id.startswith("image.")}  # no snapshots in this test
    finally:
        code, _ = terminate(daemon, 10)
        daemon.kill()
    assert code == 0, daemon.stderr()[-3000:]
    assert after_reload == [], f"the reload published {after_reload} on …/status"
    for entity_id, history in histories.items():
        # One entry: the state that held at `sent` (Home Assistant stamps it with the query's start time, as a
        # float that may round a microsecond either way); a change after the reload would be a second entry.
        assert len(history) == 1 and history[0][1] <= sent + 1e-3, (entity_id, history)
    assert histories[ids["label"]][0][0] == label


def test_two_classifiers_are_two_label_entities_of_one_device(ha: HomeAssistant, tmp_path: Path) -> None:
    """models: with two classifiers, each on one half of the synthetic frame (the creature on the left)."""
    config = {"source": {"pattern": "halves"},
              "models": [{"name": "left", "path": str(MODEL), "preprocess": {"roi": [0, 0, 0.5, 1]},
                          "binary_sensors": {"pikachu": THRESHOLD}},
                         {"name": "right", "path": str(MODEL), "preprocess": {"roi": [0.5, 0, 1, 1]}}],
              "homeassistant": {"enabled": True, "state_interval_s": 0.5, "expire_after_s": 30},
              "publish": {"stats_interval_s": 0.5}}
    daemon = Daemon(tmp_path, ha.broker.port, "ha_two", fps=20, config=config)
    left, right = "sensor.edgedet_ha_two_left_label", "sensor.edgedet_ha_two_right_label"
    try:
        wait_for(lambda: real_state(ha, left) == "pikachu", 60, f"{left}\n{daemon.stderr()[-2000:]}")
        wait_for(lambda: real_state(ha, right) == "no-pikachu", 60, right)
        wait_for(lambda: real_state(ha, "binary_sensor.edgedet_ha_two_left_pikachu") == "on", 60,
                 "the left classifier's binary sensor")
        wait_for(lambda: float(real_state(ha, "sensor.edgedet_ha_two_right_frames_per_second") or 0) > 0, 30,
                 "the right classifier's fps")
        device = ha.device(left)
    finally:
        code, _ = terminate(daemon, 10)
        daemon.kill()
    assert code == 0, daemon.stderr()[-3000:]
    assert ha.device(right)["id"] == device["id"] and device["name"] == "edgedet ha_two"
    assert {left, right, "binary_sensor.edgedet_ha_two_left_pikachu"} <= set(device["entities"])
    assert not any(e.startswith("sensor.edgedet_ha_two_label") for e in device["entities"])  # no one-model set
    assert ha.errors() == []
