"""Several classifiers on one camera (``models:``): each on its own region of the one frame read, with its own
schedule, topics, seq and statistics; a reload that swaps one classifier's model leaves the others running."""

from __future__ import annotations

import json
import math
import shutil
import socket
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import yaml
from helpers import run_cli
from mosquitto import Collector, Mosquitto, available
from PIL import Image
from test_daemon_mqtt import DAEMON_ENV, MODEL, Daemon, finished

from edgedet.config import ClassifierConfig, build_config
from edgedet.errors import ConfigError
from edgedet.frames.base import Frame
from edgedet.frames.synthetic import SyntheticSource
from edgedet.lanes import Lane
from edgedet.loop import FrameLoop
from edgedet.model.classifier import Classifier
from edgedet.model.preprocess import Preprocessor
from edgedet.model.simulated import simulated_accelerator
from edgedet.pipeline import Pipeline
from edgedet.publish.uncertain import RAW_PIXELS

needs_broker = pytest.mark.skipif(available() is not None, reason=available() or "")
LEFT, RIGHT = [0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]


def two_halves(**extra: Any) -> dict[str, Any]:
    return {"source": {"type": "synthetic", "pattern": "halves", "fps": 0, "width": 160, "height": 120},
            "models": [{"name": "left", "path": str(MODEL), "preprocess": {"roi": LEFT}, **extra},
                       {"name": "right", "path": str(MODEL), "preprocess": {"roi": RIGHT}, **extra}]}


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(("data", "message"), [
    ({"model": {"top_k": 2}, "models": [{"name": "a"}]}, "set model: (one classifier) or models:"),
    ({"models": []}, "models: must list at least one classifier"),
    ({"models": [{"name": "a"}, {"name": "a"}]}, "the name 'a' is given twice"),
    ({"models": [{"name": "a b"}]}, "models[0].name: must be 1 to 64 characters"),
    ({"models": [{"name": "a"}, {"name": "b"}], "homeassistant": {"binary_sensors": {"pikachu": 0.5}}},
     "with several classifiers, set binary_sensors in each models: entry"),
    ({"models": [{"name": "a", "publish": {"debounce_frames": 3, "consensus": {"frames": 3, "of": 5}}}]},
     "models[0].publish: set debounce_frames or consensus, not both"),
    ({"models": [{"name": "a", "every_n_frames": 0}]}, "models[0].every_n_frames: must be greater than or equal"),
    ({"models": [{"name": "a", "publish": {"snapshot": True}}]}, "models[0].publish.snapshot: unknown key"),
])
def test_models_config_errors_are_one_line_naming_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(data, "config.yaml")
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_classifier_takes_its_own_publish_settings_over_the_section() -> None:
    config = build_config({"publish": {"mode": "on_change", "min_score": 0.3},
                           "models": [{"name": "a"}, {"name": "b", "publish": {"mode": "every_frame"}}]}, "x")
    a, b = config.classifiers()
    assert (config.publish_for(a).mode, config.publish_for(a).min_score) == ("on_change", 0.3)
    assert (config.publish_for(b).mode, config.publish_for(b).min_score) == ("every_frame", 0.3)
    single = build_config({"model": {"top_k": 2}}, "x").classifiers()
    assert [(c.name, c.top_k, c.every_n_frames) for c in single] == [("", 2, 1)]


def test_the_check_config_command_reports_a_models_error_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "door", "path": str(tmp_path / "missing.tflite")}]}))
    run = run_cli("check-config", str(path))
    assert run.code == 2 and "Traceback" not in run.err
    assert "models[0].path: file not found" in run.err, run.err


# ------------------------------------------------------------------------------- one read, several lanes
class CountingSource(SyntheticSource):
    """The synthetic source, counting every read: one camera read per frame whatever the classifiers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads = 0

    def read(self, timeout_s: float) -> Optional[Frame]:
        self.reads += 1
        return super().read(timeout_s)


def classifier(name: str, roi: list[float], **kwargs: Any) -> Classifier:
    cfg = ClassifierConfig(name=name, path=MODEL, top_k=1, preprocess={"roi": roi})  # type: ignore[arg-type]
    return Classifier.from_config(cfg, **kwargs)


def test_slow_fast_and_every_tenth_classifier_share_one_read_per_frame() -> None:
    slow_s = 0.004
    lanes = [Lane("slow", classifier("slow", LEFT, interpreter_factory=simulated_accelerator(slow_s, compute=True))),
             Lane("fast", classifier("fast", RIGHT)),
             Lane("tenth", classifier("tenth", LEFT), every_n_frames=10)]
    source = CountingSource(160, 120, 0, pattern="halves")
    seen: list[tuple[str, int, str]] = []
    frames = 53
    loop = FrameLoop(lanes[0].classifier, source, [], max_frames=frames, lanes=lanes,
                     on_frame=lambda r: seen.append((r.classifier, r.frame_id, r.top_k[0].label)))
    stats = loop.run()
    # One camera read per frame (the loop stops before reading a frame it would not classify).
    assert source.reads == stats.frames_captured == stats.frames_processed == frames
    by_lane = {name: [(f, label) for n, f, label in seen if n == name] for name in ("slow", "fast", "tenth")}
    assert [f for f, _ in by_lane["slow"]] == [f for f, _ in by_lane["fast"]] == list(range(frames))
    assert [f for f, _ in by_lane["tenth"]] == list(range(0, frames, 10))
    # Each on its own half: the creature is in the left half only.
    assert {label for _, label in by_lane["slow"]} == {label for _, label in by_lane["tenth"]} == {"pikachu"}
    assert {label for _, label in by_lane["fast"]} == {"no-pikachu"}
    per = stats.classifiers
    assert set(per) == {"slow", "fast", "tenth"}
    assert [per[n]["frames_processed"] for n in ("slow", "fast", "tenth")] == [frames, frames, math.ceil(frames / 10)]
    assert per["tenth"]["every_n_frames"] == 10 and per["fast"]["every_n_frames"] == 1
    for name in per:
        assert per[name]["fps_out"] > 0
        assert set(per[name]["latency_ms"]) == {"preprocess", "inference", "postprocess", "total"}
    # The slow one's invoke waits slow_s on top of the real model: its own latency shows it.
    assert per["slow"]["latency_ms"]["inference"]["p50"] >= slow_s * 1e3
    assert stats.as_dict()["classifiers"] == per


def test_interval_s_runs_a_classifier_at_most_that_often() -> None:
    now = [100.0]
    lane = Lane("x", classifier("x", LEFT), every_n_frames=2, interval_s=1.0)
    ran = []
    for frame in range(20):
        now[0] += 0.3
        if lane.due(frame, now[0]):
            lane.start(now[0])
            ran.append(frame)
    # every second frame (0.6 s apart), and at least 1 s since the last run
    assert ran == [0, 4, 8, 12, 16]


# ------------------------------------------------------------------------------------------ the daemon
@needs_broker
def test_two_classifiers_publish_their_own_half_with_their_own_seq(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Collector(broker, "#")
    config = {**two_halves(top_k=1), "homeassistant": {"enabled": True},
              "publish": {"stats_interval_s": 60}}
    config["models"][0]["binary_sensors"] = {"pikachu": 0.8}
    daemon = Daemon(tmp_path, broker.port, "two", fps=0, max_frames=40, config=config)
    try:
        stats = finished(daemon)
    finally:
        daemon.kill()
        sub.close()
        broker.stop()
    left, right = sub.json("two/left/detection"), sub.json("two/right/detection")
    assert [d["seq"] for d in left] == [d["seq"] for d in right] == list(range(1, 41))
    assert {(d["label"], d["classifier"]) for d in left} == {("pikachu", "left")}
    assert {(d["label"], d["classifier"]) for d in right} == {("no-pikachu", "right")}
    assert [d["frame_id"] for d in left] == [d["frame_id"] for d in right]  # the same frames, each its half
    assert sub.payloads("two/detection") == []  # no one-model topic beside them
    info = sub.json("two/info")[-1]
    assert [(c["name"], c["detection_topic"], c["roi"]) for c in info["classifiers"]] == [
        ("left", "edgedet/two/left/detection", LEFT), ("right", "edgedet/two/right/detection", RIGHT)]
    assert set(stats["classifiers"]) == {"left", "right"}
    assert stats["classifiers"]["left"]["frames_processed"] == 40
    final = sub.json("two/stats")[-1]
    assert final["classifiers"]["right"]["frames_processed"] == 40
    # Home Assistant: one set of entities per classifier, all on one device.
    configs = {t: json.loads(p) for t, p, _ in sub.received if t.startswith("homeassistant/") and p}
    labels = {t: c for t, c in configs.items() if t.endswith("_label/config")}
    assert set(labels) == {"homeassistant/sensor/edgedet_two/left_label/config",
                           "homeassistant/sensor/edgedet_two/right_label/config"}
    assert {c["state_topic"] for c in labels.values()} == {"edgedet/two/left/state", "edgedet/two/right/state"}
    assert len({json.dumps(c["device"], sort_keys=True) for c in configs.values()}) == 1
    assert "homeassistant/binary_sensor/edgedet_two/left_class_pikachu/config" in configs
    states = {t: json.loads(p) for t, p, _ in sub.received if t.endswith("/state")}
    assert states["edgedet/two/left/state"]["label"] == "pikachu"
    assert states["edgedet/two/right/state"]["label"] == "no-pikachu"


# ------------------------------------------------------------------------------------------ the reload
@needs_broker
def test_swapping_one_classifiers_model_leaves_the_other_running(tmp_path: Path) -> None:
    other = tmp_path / "other_model.tflite"
    shutil.copy(MODEL, other)
    shutil.copy(MODEL.with_suffix(".json"), other.with_suffix(".json"))
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Collector(broker, "edgedet/swap/+/detection")
    base = {**two_halves(top_k=1), "device_id": "swap", "publish": {"console": False},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port}}
    config = build_config(base, "test")
    swapped = json.loads(json.dumps(base))
    swapped["models"][1]["path"] = str(other)
    new = build_config(swapped, "test")
    pipeline = Pipeline.build(config, "swaprun0000a")
    kept = pipeline.lane("left"), pipeline.lane("left").classifier
    rebuilt: list[str] = []
    total, switch_at = 80, 40

    def between_frames() -> None:
        if pipeline.loop.stats.frames_processed == switch_at and not rebuilt:
            rebuilt.extend(pipeline.reload(new))

    try:
        stats = pipeline.run(max_frames=total, between_frames=between_frames)
    finally:
        pipeline.close(flush_timeout_s=5.0)
    assert rebuilt == ["models.right"]
    assert pipeline.lane("left") is kept[0] and pipeline.lane("left").classifier is kept[1]
    assert stats["classifiers"]["left"]["frames_processed"] == total  # every frame, before and after
    assert stats["classifiers"]["right"]["frames_processed"] == total
    left = [json.loads(p) for t, p, _ in sub.received if t == "edgedet/swap/left/detection"]
    right = [json.loads(p) for t, p, _ in sub.received if t == "edgedet/swap/right/detection"]
    sub.close()
    broker.stop()
    assert [d["seq"] for d in left] == [d["seq"] for d in right] == list(range(1, total + 1))
    assert {d["model"] for d in left} == {MODEL.stem}
    models = [d["model"] for d in right]
    assert models == [MODEL.stem] * switch_at + ["other_model"] * (total - switch_at)
    assert len({d["run_id"] for d in left + right}) == 1


# --------------------------------------------------------------------------------- collect, install
def test_collect_saves_the_named_classifiers_region(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(two_halves()))
    run = run_cli("collect", str(tmp_path / "data"), "--label", "x", "--count", "3", "--config", str(path))
    assert run.code == 2 and "pass --model NAME, one of left, right" in run.err and "Traceback" not in run.err
    run = run_cli("collect", str(tmp_path / "data"), "--label", "x", "--count", "3", "--full", "--model", "right",
                  "--config", str(path))
    assert run.code == 0, run.err
    views = sorted((tmp_path / "data" / "x").glob("*.png"))
    fulls = sorted((tmp_path / "data" / ".full" / "x").glob("*.png"))
    assert len(views) == len(fulls) == 3
    right = Preprocessor(96, 96, RAW_PIXELS, backend="auto", roi=tuple(RIGHT))  # type: ignore[arg-type]
    for view, full in zip(views, fulls):
        assert np.array_equal(np.asarray(Image.open(view)), right.view(np.asarray(Image.open(full))))


def test_install_as_replaces_one_classifiers_model_in_the_config(tmp_path: Path) -> None:
    candidate = tmp_path / "incoming" / "door_v2.tflite"
    candidate.parent.mkdir()
    shutil.copy(MODEL, candidate)
    shutil.copy(MODEL.with_suffix(".json"), candidate.with_suffix(".json"))
    path = tmp_path / "config.yaml"
    text = ("# two regions\nmodels:\n  - name: left\n    path: " + str(MODEL) +
            "\n    preprocess: {roi: [0, 0, 0.5, 1]}\n  - {name: right, path: " + str(MODEL) + "}\n")
    path.write_text(text)
    env = {"PYTHONPATH": DAEMON_ENV["PYTHONPATH"]}
    run = run_cli("models", "install", str(candidate), "--config", str(path), "--dir", str(tmp_path / "m"), env=env)
    assert run.code == 2 and "pass --as NAME, one of left, right" in run.err, run.err
    run = run_cli("models", "install", str(candidate), "--config", str(path), "--dir", str(tmp_path / "m"),
                  "--as", "nobody", env=env)
    assert run.code == 2 and "no classifier named 'nobody'" in run.err, run.err
    run = run_cli("models", "install", str(candidate), "--config", str(path), "--dir", str(tmp_path / "m"),
                  "--as", "right", env=env)
    assert run.code == 0, run.err
    edited = yaml.safe_load(path.read_text())
    assert edited["models"][0]["path"] == str(MODEL)
    assert edited["models"][1] == {"name": "right", "path": str(tmp_path / "m" / "door_v2.tflite")}
    assert path.read_text().startswith("# two regions\nmodels:\n  - name: left\n")
    assert (tmp_path / "m" / "door_v2.tflite").read_bytes() == MODEL.read_bytes()


def test_a_reload_that_drops_a_classifier_deletes_its_home_assistant_entities() -> None:
    from edgedet.publish.config import HomeAssistantConfig, MqttConfig, PublishConfig
    from edgedet.publish.mqtt import MqttPublisher
    from edgedet.publish.sink import ChannelSpec, MqttSink

    publisher = MqttPublisher(MqttConfig(enabled=True), "cam")  # never started: what it would send is kept
    labels = ["no-pikachu", "pikachu"]
    left = ChannelSpec("left", "m", labels, PublishConfig(), {"pikachu": 0.8})
    right = ChannelSpec("right", "m", labels, PublishConfig(), {})
    sink = MqttSink(publisher, PublishConfig(), ha_cfg=HomeAssistantConfig(enabled=True), channels=[left, right])
    right_topics = {t for t in publisher._retained if "/edgedet_cam/right_" in t}
    assert "homeassistant/sensor/edgedet_cam/right_label/config" in right_topics
    sink.channels["left"].seq = 7
    sink.set_channels([left._replace(binary_sensors={})])
    emptied = {t for t, (payload, _) in publisher._retained.items() if payload == b""}
    assert emptied == right_topics | {"homeassistant/binary_sensor/edgedet_cam/left_class_pikachu/config"}
    assert json.loads(publisher._retained["homeassistant/sensor/edgedet_cam/left_label/config"][0])["name"] == \
        "left Label"
    assert sink.seqs() == {"left": 7}  # the name kept its seq


def test_prometheus_metrics_name_each_classifier() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from edgedet.http.metrics import PipelineCollector, StageHistogram

    lanes = [Lane("door", classifier("door", LEFT)), Lane("drive", classifier("drive", RIGHT), every_n_frames=10)]
    loop = FrameLoop(lanes[0].classifier, CountingSource(160, 120, 0, pattern="halves"), [], max_frames=20,
                     lanes=lanes)
    loop.run()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(loop.snapshot, dict, lambda: {}, StageHistogram()))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    counts = {s.labels["classifier"]: s.value for s in families["edgedet_classifier_frames_processed"].samples
              if s.name.endswith("_total")}
    assert counts == {"door": 20, "drive": 2}
    assert {s.labels["classifier"] for s in families["edgedet_classifier_inference_ms_p50"].samples} == \
        {"door", "drive"}


def test_a_reload_refused_for_a_binary_sensor_leaves_every_classifier_running(tmp_path: Path) -> None:
    other = tmp_path / "other_model.tflite"
    shutil.copy(MODEL, other)
    shutil.copy(MODEL.with_suffix(".json"), other.with_suffix(".json"))  # its labels
    with socket.socket() as dead:  # MQTT on (the check needs it), to a port that refuses: nothing is sent
        dead.bind(("127.0.0.1", 0))
        base = {**two_halves(), "homeassistant": {"enabled": True},
                "mqtt": {"enabled": True, "host": "127.0.0.1", "port": dead.getsockname()[1]}}
        pipeline = Pipeline.build(build_config(base, "test"), "refusedrun01")
        try:
            running = [(lane, lane.classifier) for lane in pipeline.lanes]
            bad = json.loads(json.dumps(base))
            bad["models"][1].update(path=str(other), binary_sensors={"nope": 0.5})
            with pytest.raises(ConfigError, match=r"models\[1\]\.binary_sensors: 'nope' is not a label"):
                pipeline.reload(build_config(bad, "test"))
            assert [(lane, lane.classifier) for lane in pipeline.lanes] == running
            assert pipeline.reload(build_config(base, "test")) == []  # and the running config is still in force
        finally:
            pipeline.close(flush_timeout_s=0.0)


def test_an_unchanged_reload_of_an_edgetpu_model_that_fell_back_rebuilds_nothing(shared_models: Path) -> None:
    config = build_config({"source": {"type": "synthetic", "fps": 0, "width": 160, "height": 120},
                           "publish": {"console": False},
                           "model": {"path": str(shared_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
                                     "delegate": "edgetpu", "fallback": "cpu"}}, "test")
    pipeline = Pipeline.build(config, "fallbackrun1")
    try:
        if pipeline.classifier.delegate_info["active"] == "edgetpu":
            pytest.skip("an Edge TPU is present here: nothing fell back")
        assert pipeline.classifier.model_file.path.name == "mobilenet_v1_0.25_128_quant.tflite"  # the CPU twin
        assert pipeline.reload(config) == []
    finally:
        pipeline.close(flush_timeout_s=0.0)
