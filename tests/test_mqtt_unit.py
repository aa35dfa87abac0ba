"""Pure parts of MQTT publishing: payloads vs schemas, the on_change policy, HA discovery fields, config."""

from __future__ import annotations

import io
import json
import logging
import socket
import ssl
import time
import tracemalloc
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from PIL import Image

from edgedet.config import EdgedetConfig, build_config, clean_device_id
from edgedet.errors import ConfigError
from edgedet.publish import homeassistant, messages
from edgedet.publish.config import PASSWORD_ENV, HomeAssistantConfig, MqttConfig
from edgedet.publish.mqtt import MqttPublisher
from edgedet.publish.policy import PublishPolicy
from edgedet.publish.problems import REPEAT_LOG_S, ProblemLog, describe_connect_error, describe_refused
from edgedet.publish.sink import QueuedDetection, encode_snapshot
from edgedet.results import Class, FrameResult, LoopStats
from edgedet.section import Invalid

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def schema(name: str) -> jsonschema.protocols.Validator:
    loaded = json.loads((SCHEMAS / f"{name}.json").read_text())
    return jsonschema.Draft202012Validator(loaded, format_checker=jsonschema.FormatChecker())


def result(frame_id: int = 7, label: str = "cat", score: float = 0.8) -> FrameResult:
    return FrameResult(frame_id, 1_700_000_000.25, 100.0, [Class(3, score, label), Class(4, 0.1, "dog")],
                       {"capture_wait": 1.0, "preprocess": 2.0, "inference": 3.0, "postprocess": 0.5,
                        "total": 6.5}, 7.25, "mobilenet")


def test_detection_payload_fields_and_schema() -> None:
    payload = messages.detection_payload(result(), "run1", 1, "mobilenet_v1")
    schema("detection").validate(payload)
    assert payload["ts"] == "2023-11-14T22:13:20.250Z"
    assert (payload["label"], payload["class_id"], payload["score"]) == ("cat", 3, 0.8)
    assert payload["top_k"] == [{"class_id": 3, "label": "cat", "score": 0.8},
                                {"class_id": 4, "label": "dog", "score": 0.1}]
    assert payload["latency_ms"] == {"preprocess": 2.0, "inference": 3.0, "postprocess": 0.5, "total": 6.5}
    assert (payload["seq"], payload["run_id"], payload["model"], payload["frame_age_ms"]) == (
        1, "run1", "mobilenet_v1", 7.25)


@pytest.mark.parametrize("top_k", [
    [Class(3, np.float32(0.78515625), "Egyptian cat"), Class(282, 1 / 3, "tiger cat"), Class(0, 0.0, "bg")],
    [Class(1, 1.0, "pikachu")],
    [],
])
def test_queued_detection_encodes_the_same_payload_as_the_frame_result(top_k: list[Class]) -> None:
    frame = FrameResult(2**40 + 5, time.time(), 3.0, top_k,
                        {"capture_wait": 0.4, "preprocess": 0.2123456, "inference": 9.87654321,
                         "postprocess": 0.05, "frame_age": 11.0}, 11.0625, "mobilenet")
    queued = QueuedDetection(frame, 42, "run1", "mobilenet_v2")
    payload = json.loads(queued())
    assert payload == messages.detection_payload(frame, "run1", 42, "mobilenet_v2")
    schema("detection").validate(payload)


def test_queued_detection_is_small() -> None:
    """The outbox keeps up to mqtt.outbox_max (10000) of these while the broker is down, on a Pi: each one
    must not keep its frame's FrameResult (with its dicts, lists and floats) alive."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        queued = [QueuedDetection(result(frame_id=seq, score=seq / 1000), seq, "run1", "m") for seq in range(1000)]
        per_message = (tracemalloc.get_traced_memory()[0] - before) / len(queued)
    finally:
        tracemalloc.stop()
    assert per_message < 400, per_message  # holding the FrameResult instead: ~1200 bytes


def test_detection_schema_rejects_a_missing_field() -> None:
    payload = messages.detection_payload(result(), "run1", 1, "m")
    del payload["seq"]
    with pytest.raises(jsonschema.ValidationError, match="seq"):
        schema("detection").validate(payload)


def test_info_payload_keeps_documented_keys_only() -> None:
    payload = messages.info_payload(
        device_id="cam1", run_id="r", started_wall=0.0,
        model={"name": "v1", "path": "/m.tflite", "sha256": "a" * 64, "input_shape": [1, 128, 128, 3],
               "input_dtype": "uint8", "label_count": 1001, "extra": "dropped"},
        runtime={"name": "ai-edge-litert", "version": "2.3", "threads": 4},
        delegate={"requested": "edgetpu", "active": "cpu", "device": None},
        source={"type": "synthetic", "resolution": [640, 480]})
    schema("info").validate(payload)
    assert "extra" not in payload["model"]
    assert payload["started"] == "1970-01-01T00:00:00.000Z"


def _loop_stats() -> LoopStats:
    """Real statistics from the frame loop's own RollingStats (three processed frames)."""
    from edgedet.loop import STAGES, RollingStats

    stats = RollingStats()
    for i in range(3):
        stats.captured()
        stats.processed({stage: 1.0 + i for stage in STAGES})
    return stats.snapshot(frames_dropped=2)


def test_stats_payload_adds_mqtt_memory_and_temperature(tmp_path: Path) -> None:
    (tmp_path / "thermal_zone0").mkdir()
    (tmp_path / "thermal_zone0" / "temp").write_text("51234\n")
    mqtt_stats = {"queued": 2, "dropped": 1, "reconnects": 3, "sent": 9}
    loop_stats = _loop_stats()
    payload = messages.stats_payload(loop_stats, mqtt_stats, device_id="cam1", run_id="r",
                                     wall=time.time(), thermal=tmp_path)
    schema("stats").validate(payload)
    assert payload["mqtt"] == {"queued": 2, "dropped": 1, "reconnects": 3}
    assert payload["cpu_temp_c"] == 51.2
    assert payload["rss_mb"] > 1
    assert payload["fps_out"] == loop_stats.fps_out and payload["frames_processed"] == 3
    without = messages.stats_payload(_loop_stats(), {}, device_id="c", run_id="r", wall=0.0,
                                     thermal=tmp_path / "absent")
    assert "cpu_temp_c" not in without


def test_status_schema() -> None:
    schema("status").validate("online")
    schema("status").validate("offline")
    with pytest.raises(jsonschema.ValidationError):
        schema("status").validate("up")


def test_topic_prefixes_lose_a_trailing_slash_in_the_config() -> None:
    cfg = MqttConfig(topic_prefix="site/edgedet/")
    assert cfg.topic_prefix == "site/edgedet"
    publisher = MqttPublisher(cfg, "cam1")  # builds the paho client only; nothing connects
    assert publisher.topic("detection") == "site/edgedet/cam1/detection"
    assert publisher.status_topic == "site/edgedet/cam1/status"
    ha = HomeAssistantConfig(prefix="ha/")
    assert homeassistant.status_topic(ha.prefix) == "ha/status"
    topics = [t for t, _ in homeassistant.discovery_configs(device_id="c", base_topic="x/c", ha_prefix=ha.prefix)]
    assert topics[0] == "ha/sensor/edgedet_c/label/config"


def test_device_id_is_cleaned_by_one_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    assert clean_device_id("pi.local/#+ x") == "pi_local____x"
    assert clean_device_id("cam-1_A") == "cam-1_A"
    assert clean_device_id("") == "edgedet"
    assert EdgedetConfig(device_id="pi.local/#").resolved_device_id() == "pi_local__"
    monkeypatch.setattr(socket, "gethostname", lambda: "garage.lan")
    assert EdgedetConfig().resolved_device_id() == "garage_lan"


# ---------------------------------------------------------------- policy
def run(policy: PublishPolicy, frames: list[tuple[str | None, float, float]]) -> list[tuple[str | None, str]]:
    out = []
    for label, score, now in frames:
        decision = policy.decide(label, score, now)
        if decision.publish:
            out.append((decision.label, decision.reason))
    return out


def test_every_frame_publishes_every_frame() -> None:
    assert len(run(PublishPolicy("every_frame"), [("a", 0.0, t) for t in range(5)])) == 5


def test_on_change_debounces_and_gates_on_score() -> None:
    policy = PublishPolicy("on_change", min_score=0.5, debounce_frames=3, republish_s=0)
    frames = [("cat", 0.9, 0), ("cat", 0.9, 1), ("cat", 0.9, 2),  # held 3 -> publish cat
              ("cat", 0.9, 3),                                   # no change
              ("dog", 0.9, 4), ("dog", 0.9, 5), ("cat", 0.9, 6),  # dog only 2 frames -> nothing
              ("dog", 0.9, 7), ("dog", 0.4, 8), ("dog", 0.9, 9),  # weak frame breaks the run
              ("dog", 0.9, 10), ("dog", 0.9, 11)]                # dog held 3 -> publish dog
    assert run(policy, frames) == [("cat", "change"), ("dog", "change")]


def test_on_change_republishes_current_state() -> None:
    policy = PublishPolicy("on_change", debounce_frames=1, republish_s=10)
    frames = [("cat", 0.9, 0), ("cat", 0.9, 5), ("cat", 0.9, 10), ("cat", 0.9, 15), ("cat", 0.9, 20.5)]
    assert run(policy, frames) == [("cat", "change"), ("cat", "republish"), ("cat", "republish")]


def test_policy_rejects_bad_mode() -> None:
    with pytest.raises(ValueError, match=r"publish\.mode"):
        PublishPolicy("sometimes")


# ---------------------------------------------------------------- Home Assistant
LABELS = ["no-pikachu", "pikachu"]


def discovery(**kwargs: object) -> dict[str, tuple[str, dict]]:
    args: dict = {"device_id": "cam1", "base_topic": "edgedet/cam1", "ha_prefix": "ha", "labels": LABELS,
                  "expire_after_s": 60, **kwargs}
    return {topic.split("/")[-2]: (topic, payload) for topic, payload in homeassistant.discovery_configs(**args)}


def test_discovery_configs_field_by_field() -> None:
    by_object = discovery(binary_sensors={"pikachu": 0.8}, snapshot=True)
    assert set(by_object) == {"label", "score", "inference_ms", "fps", "class_pikachu", "snapshot"}
    unique_ids = set()
    for object_id, (topic, payload) in by_object.items():
        schema("ha_discovery").validate(payload)
        component = {"class_pikachu": "binary_sensor", "snapshot": "image"}.get(object_id, "sensor")
        # <discovery_prefix>/<component>/<node_id>/<object_id>/config
        assert topic == f"ha/{component}/edgedet_cam1/{object_id}/config"
        # Device registry: needs unique_id and device.identifiers (a list).
        assert payload["unique_id"] == f"edgedet_cam1_{object_id}"
        unique_ids.add(payload["unique_id"])
        assert payload["device"]["identifiers"] == ["edgedet_cam1"]
        assert payload["device"]["name"] == "edgedet cam1"
        # Origin: name is required when origin is given.
        assert payload["origin"]["name"] == "edgedet"
        # Availability on our status topic with our literal payloads.
        assert payload["availability_topic"] == "edgedet/cam1/status"
        assert (payload["payload_available"], payload["payload_not_available"]) == ("online", "offline")
        # The entity id Home Assistant derives from device + entity name, sent for the releases that read it.
        assert payload["default_entity_id"].startswith(f"{component}.edgedet_cam1_")
        assert "object_id" not in payload  # deprecated in Home Assistant 2025.10
        if component == "image":
            assert (payload["image_topic"], payload["content_type"]) == ("edgedet/cam1/snapshot", "image/jpeg")
            assert "expire_after" not in payload and "state_topic" not in payload
        else:
            # Every other entity reads the retained state message and goes stale with it.
            assert payload["state_topic"] == "edgedet/cam1/state"
            assert payload["expire_after"] == 60
    assert len(unique_ids) == 6
    label = by_object["label"][1]
    assert (label["device_class"], label["options"]) == ("enum", LABELS)
    assert label["value_template"] == "{{ value_json.label }}"
    assert label["json_attributes_topic"] == "edgedet/cam1/state"
    assert by_object["label"][1]["default_entity_id"] == "sensor.edgedet_cam1_label"
    latency = by_object["inference_ms"][1]
    assert latency["value_template"] == "{{ value_json.latency_ms.inference }}"
    assert (latency["unit_of_measurement"], latency["device_class"]) == ("ms", "duration")
    assert latency["json_attributes_template"] == "{{ value_json.latency_ms | tojson }}"
    assert by_object["fps"][1]["unit_of_measurement"] == "fps"
    binary = by_object["class_pikachu"][1]
    assert binary["name"] == "pikachu" and binary["default_entity_id"] == "binary_sensor.edgedet_cam1_pikachu"
    assert binary["value_template"] == ("{{ 'ON' if value_json.label == \"pikachu\" and value_json.score >= 0.8 "
                                        "else 'OFF' }}")
    assert (binary["payload_on"], binary["payload_off"]) == ("ON", "OFF")


def test_discovery_label_sensor_enum_only_up_to_the_limit() -> None:
    """ImageNet's 1001 labels as enum options would travel with every state change to every open UI."""
    many = [f"class {i}" for i in range(1001)]
    plain = discovery(labels=many)["label"][1]
    assert "device_class" not in plain and "options" not in plain
    at_limit = discovery(labels=many[:100], enum_max_labels=100)["label"][1]
    assert at_limit["device_class"] == "enum" and len(at_limit["options"]) == 100
    assert "options" not in discovery(labels=[])["label"][1]  # labels unknown: a plain text sensor


def test_discovery_without_optional_entities() -> None:
    by_object = discovery(expire_after_s=0)
    assert set(by_object) == {"label", "score", "inference_ms", "fps"}  # no binary sensors, no snapshot
    assert all("expire_after" not in payload for _, payload in by_object.values())


def test_discovery_templates_read_real_state_fields() -> None:
    """Every ``value_json.<path>`` a template reads exists in the state message (the fps once known)."""
    import re

    state = homeassistant.state_payload(result(), run_id="r", fps=29.5)
    schema("state").validate(state)
    schema("state").validate(homeassistant.state_payload(result(), run_id="r", fps=None))
    for _, payload in discovery(binary_sensors={"pikachu": 0.8}).values():
        templates = [payload["value_template"], payload.get("json_attributes_template", "")]
        for path in re.findall(r"value_json((?:\.[a-z_]+)+)", " ".join(templates)):
            node = state
            for part in path.strip(".").split("."):
                node = node[part]
            assert node is not None, (payload["name"], path)


def test_binary_on_matches_the_template_rule() -> None:
    assert homeassistant.binary_on("pikachu", 0.8, "pikachu", 0.8)
    assert not homeassistant.binary_on("pikachu", 0.799999, "pikachu", 0.8)
    assert not homeassistant.binary_on("no-pikachu", 0.99, "pikachu", 0.8)
    # The template compares against the rounded score the state message carries.
    assert messages.round_score(0.79999999) == 0.8


def test_ha_config_checks() -> None:
    cfg = build_config({"homeassistant": {"enabled": True, "binary_sensors": {"pikachu": 0.8}}}, "t.yaml")
    assert cfg.homeassistant.binary_sensors == {"pikachu": 0.8}
    with pytest.raises(ConfigError, match="binary_sensors"):
        build_config({"homeassistant": {"binary_sensors": {"pikachu": 1.5}}}, "t.yaml")
    with pytest.raises(ConfigError, match=r"expire_after_s \(5\) must be > state_interval_s"):
        build_config({"homeassistant": {"expire_after_s": 5, "state_interval_s": 5}}, "t.yaml")


def test_ha_state_is_retained_sent_on_change_and_rate_limited() -> None:
    """The state message Home Assistant reads: what HA shows (label, binary sensors) at once but at most
    every MIN_CHANGE_INTERVAL_S, everything else every state_interval_s, and after HA's birth message."""
    from edgedet.publish.config import HomeAssistantConfig
    from edgedet.publish.hastate import MIN_CHANGE_INTERVAL_S, HaState
    from edgedet.publish.mqtt import MqttPublisher

    publisher = MqttPublisher(MqttConfig(), "cam1")  # never started: publish() only fills the outbox
    now = [100.0]
    state = HaState(publisher, HomeAssistantConfig(state_interval_s=5.0, binary_sensors={"pikachu": 0.8}),
                    run_id="r", clock=lambda: now[0])

    def frame(at: float, label: str, score: float) -> int:
        now[0] = 100.0 + at
        before = state.sent
        state.frame(result(frame_id=int(at * 100), label=label, score=score))
        return state.sent - before

    sent = [frame(0.0, "pikachu", 0.9),             # first frame
            frame(0.1, "pikachu", 0.95),            # score only: waits for the interval
            frame(0.2, "no-pikachu", 0.9),          # a change, but within MIN_CHANGE_INTERVAL_S
            frame(MIN_CHANGE_INTERVAL_S + 0.01, "no-pikachu", 0.9),  # the change, now
            frame(1.0, "pikachu", 0.85),            # binary sensor on
            frame(1.5, "pikachu", 0.7),             # same label, binary sensor off: a change too
            frame(2.0, "pikachu", 0.75),            # nothing Home Assistant shows changed
            frame(6.4, "pikachu", 0.6),             # 4.9 s since the last one
            frame(6.5, "pikachu", 0.6),             # the interval (the heartbeat for expire_after)
            frame(6.6, "pikachu", 0.6)]
    state.request_republish()                      # Home Assistant's birth message
    sent += [frame(6.7, "pikachu", 0.6), frame(6.8, "pikachu", 0.6)]
    assert sent == [1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 0]
    messages_sent = list(publisher._outbox)
    assert {(m.topic, m.qos, m.retain) for m in messages_sent} == {("edgedet/cam1/state", 1, True)}
    # Encoded by the sender thread: the outbox holds the function that builds the bytes.
    payloads = [json.loads(m.payload()) for m in messages_sent]  # type: ignore[operator]
    for payload in payloads:
        schema("state").validate(payload)
    assert [(p["label"], p["score"]) for p in payloads][:4] == [
        ("pikachu", 0.9), ("no-pikachu", 0.9), ("pikachu", 0.85), ("pikachu", 0.7)]
    assert "fps" not in payloads[-1]
    stats = _loop_stats()
    state.stats(stats)
    frame(20.0, "pikachu", 0.6)
    assert json.loads(publisher._outbox[-1].payload())["fps"] == stats.fps_out  # type: ignore[operator]


def test_binary_sensor_for_a_class_the_model_does_not_have_is_one_clear_error() -> None:
    from edgedet.publish.config import HomeAssistantConfig
    from edgedet.publish.hastate import check_binary_sensors

    cfg = HomeAssistantConfig(binary_sensors={"pikachoo": 0.5})
    with pytest.raises(ConfigError) as err:
        check_binary_sensors(cfg.binary_sensors, LABELS)
    assert str(err.value) == ("homeassistant.binary_sensors: 'pikachoo' is not a label of the model; "
                              "use one of 'no-pikachu', 'pikachu'")
    check_binary_sensors(HomeAssistantConfig(binary_sensors={"pikachu": 0.5}).binary_sensors, LABELS)
    with pytest.raises(ConfigError, match=r"^models\[1\]\.binary_sensors: 'door' is not a label"):
        check_binary_sensors({"door": 0.5}, LABELS, "models[1].binary_sensors")


# ---------------------------------------------------------------- config, password, errors, snapshot
def test_config_keeps_existing_keys_and_checks_backoff() -> None:
    cfg = build_config({"mqtt": {"outbox_max": 5, "inflight_max": 10, "tls": {"enabled": True}}}, "t.yaml")
    assert (cfg.mqtt.outbox_max, cfg.mqtt.inflight_max, cfg.mqtt.tls.enabled) == (5, 10, True)
    assert cfg.homeassistant.prefix == "homeassistant"
    with pytest.raises(ConfigError, match=r"reconnect_max_s .* must be >= reconnect_min_s"):
        build_config({"mqtt": {"reconnect_min_s": 10, "reconnect_max_s": 1}}, "t.yaml")


def test_password_precedence_file_then_environment_then_inline(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\nsecond line is not part of it\n")
    env = {PASSWORD_ENV: "from-env"}
    assert MqttConfig(password_file=secret).effective_password(environ=env) == "from-file"
    assert MqttConfig(password="inline").effective_password(environ=env) == "from-env"
    assert MqttConfig(password="inline").effective_password(environ={}) == "inline"
    assert MqttConfig().effective_password(environ={}) is None
    assert MqttConfig().effective_password(environ={PASSWORD_ENV: ""}) == ""  # set but empty still counts
    # The process environment is what it reads by default.
    monkeypatch.setenv(PASSWORD_ENV, "from-real-env")
    assert MqttConfig(password="inline").effective_password() == "from-real-env"
    assert MqttConfig(password_file=secret).effective_password() == "from-file"
    # What the publisher logs in with is that same password.
    publisher = MqttPublisher(MqttConfig(username="cam", password_file=secret), "cam1")
    assert publisher._client._password == b"from-file"


def test_password_and_password_file_together_is_an_error() -> None:
    with pytest.raises(Invalid, match="password and password_file are both set"):
        MqttConfig(password="a", password_file=Path("b"))
    with pytest.raises(ConfigError) as err:
        build_config({"mqtt": {"password": "a", "password_file": "b"}}, "t.yaml")
    assert str(err.value) == ("t.yaml: mqtt: password and password_file are both set; keep only one of them; "
                              "see config.yaml for every key")


def test_password_file_problems_name_the_key_and_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        MqttConfig(password_file=tmp_path / "missing").effective_password()
    assert str(err.value) == f"mqtt.password_file: file not found: {tmp_path / 'missing'}; check the path"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError) as err:
        MqttConfig(password_file=tmp_path / "empty").effective_password(where="c.yaml")
    assert str(err.value) == (f"c.yaml: mqtt.password_file: {tmp_path / 'empty'} is empty; "
                              "write the password on the file's first line")
    (tmp_path / "latin1").write_bytes(b"caf\xe9\n")
    with pytest.raises(ConfigError, match=r"cannot read .*latin1 \(UnicodeDecodeError\)"):
        MqttConfig(password_file=tmp_path / "latin1").effective_password()


def test_tls_client_certificate_needs_its_key() -> None:
    for given in ({"cert_file": "c.pem"}, {"key_file": "k.pem"}):
        with pytest.raises(ConfigError) as err:
            build_config({"mqtt": {"tls": {"enabled": True, **given}}}, "t.yaml")
        assert str(err.value) == ("t.yaml: mqtt.tls: cert_file and key_file must be set together (a client "
                                  "certificate) or neither; see config.yaml for every key")
    # Both or neither is fine, and a disabled TLS section is not checked.
    build_config({"mqtt": {"tls": {"enabled": True, "cert_file": "c.pem", "key_file": "k.pem"}}}, "t.yaml")
    build_config({"mqtt": {"tls": {"enabled": True}}}, "t.yaml")
    build_config({"mqtt": {"tls": {"enabled": False, "cert_file": "c.pem"}}}, "t.yaml")


def test_connect_errors_are_one_clear_line() -> None:
    cfg = MqttConfig(host="broker.example", port=8883)
    assert describe_connect_error(ConnectionRefusedError(111, "Connection refused"), cfg)[0] == "refused"
    kind, line = describe_connect_error(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER]"), cfg)
    assert kind == "tls" and "mqtt.tls" in line and "\n" not in line
    kind, line = describe_connect_error(OSError(113, "No route to host"), cfg)
    assert kind == "unreachable" and "broker.example:8883" in line


def test_refused_login_names_the_user_and_the_password_sources() -> None:
    cfg = MqttConfig(host="broker.example", username="cam")
    kind, line = describe_refused(ReasonCode(PacketTypes.CONNACK, identifier=135), cfg)
    assert kind == "auth"
    assert line == ("MQTT: broker.example:1883 refused the login of user 'cam' (Not authorized); check "
                    "mqtt.username and the password (mqtt.password_file or $EDGEDET_MQTT_PASSWORD)")
    kind, line = describe_refused(ReasonCode(PacketTypes.CONNACK, identifier=136), MqttConfig())
    assert (kind, line) == ("connack136", "MQTT: localhost:1883 refused the connection (Server unavailable)")


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_problem_log_repeats_a_problem_at_most_every_repeat_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgedet.test-problems")
    clock = ManualClock()
    problems = ProblemLog(logging.getLogger("edgedet.test-problems"), clock=clock)

    def lines() -> list[tuple[int, str]]:
        return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "edgedet.test-problems"]

    problems.report("refused", "MQTT: refused")
    assert lines() == [(logging.ERROR, "MQTT: refused; retrying with backoff")]
    for _ in range(3):
        clock.now += 1.0
        problems.report("refused", "MQTT: refused")
    problems.report("lost", "MQTT: lost", level=logging.WARNING)  # another kind is news at once
    assert lines()[1:] == [(logging.WARNING, "MQTT: lost; retrying with backoff")]
    clock.now = 1000.0 + REPEAT_LOG_S - 0.001
    problems.report("refused", "MQTT: refused")
    assert len(lines()) == 2
    clock.now = 1000.0 + REPEAT_LOG_S
    problems.report("refused", "MQTT: refused")
    assert lines()[2] == (logging.ERROR, "MQTT: refused (again, 4 more times); retrying")
    # A solved problem is forgotten: its next occurrence is logged at once.
    assert problems.clear(["refused", "dns"]) is True
    assert problems.clear(["refused", "dns"]) is False
    problems.report("refused", "MQTT: refused")
    assert lines()[3] == (logging.ERROR, "MQTT: refused; retrying with backoff")


def test_snapshot_is_size_capped() -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8)  # noise compresses badly
    jpeg = encode_snapshot(noisy, 20_000)
    assert jpeg is not None and len(jpeg) <= 20_000
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


def test_home_assistant_online_flood_resends_discovery_at_most_every_few_seconds(
        caplog: pytest.LogCaptureFixture) -> None:
    from edgedet.publish import sink as sink_module
    from edgedet.publish.config import PublishConfig
    from edgedet.publish.sink import MqttSink

    now = [0.0]
    publisher = MqttPublisher(MqttConfig(enabled=True), "cam1")
    made = MqttSink(publisher, PublishConfig(), ha_cfg=HomeAssistantConfig(enabled=True), clock=lambda: now[0])
    sent = []
    made._send_discovery = lambda: sent.append(now[0])  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="edgedet.mqtt"):
        for i in range(5000):  # 1000 a second for 5 s, then one more after the window
            now[0] = i / 1000
            made._on_ha_status("homeassistant/status", b"online")
        now[0] = 5.0 + sink_module.HA_RESEND_MIN_S
        made._on_ha_status("homeassistant/status", b"online")
        made._on_ha_status("homeassistant/status", b"offline")
    assert sent == [0.0, 5.0 + sink_module.HA_RESEND_MIN_S]  # 5001 "online": two re-sends
    assert len(caplog.records) == 3  # each re-send, and one line for the flood
    assert any("at most every" in r.getMessage() for r in caplog.records)
