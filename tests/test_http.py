"""The HTTP endpoint (edgedet/http): config rules, the token, GET/HEAD only, the JSON messages against their
schemas, /metrics through prometheus_client's own parser, the images the page shows, reloads, and the Sink
contract (the frame loop only hands over references)."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml
from helpers import assert_one_line_error, run_cli
from http_daemon import MODEL, HttpDaemon, get
from mosquitto import free_port
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from edgedet.config import build_config, load_config
from edgedet.errors import ConfigError
from edgedet.http import server
from edgedet.http.config import HttpConfig, is_loopback
from edgedet.http.metrics import BUCKETS_S, StageHistogram
from edgedet.http.page import RoiRect, render_page
from edgedet.http.server import input_image, roi_rects
from edgedet.loop import STAGES
from edgedet.pipeline import Pipeline
from edgedet.results import Class, FrameResult
from edgedet.section import field_types

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "docs" / "schemas"


def validator(name: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{name}.json").read_text()),
                                           format_checker=jsonschema.FormatChecker())


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                                ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                                ("::", False), ("192.168.1.20", False), ("pi.local", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_bind_off_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"http": {"enabled": True, "bind": "0.0.0.0"}}, "c.yaml")
    assert str(err.value) == ("c.yaml: http: http.bind 0.0.0.0 is reachable from other machines: set http.token "
                              "(a long random string) or bind 127.0.0.1; see config.yaml for every key")
    assert build_config({"http": {"enabled": True, "bind": "0.0.0.0", "token": "s3cret"}}, "c.yaml").http.token
    assert build_config({"http": {"enabled": False, "bind": "0.0.0.0"}}, "c.yaml").http.bind == "0.0.0.0"
    assert HttpConfig().enabled is False and HttpConfig().bind == "127.0.0.1"


def test_run_refuses_a_public_bind_without_token_with_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(MODEL)}, "source": {"type": "synthetic"},
                                      "http": {"enabled": True, "bind": "0.0.0.0"}}))
    assert_one_line_error(run_cli("run", "--config", str(config), "--max-frames", "1"), str(config), "http.bind",
                          "http.token")


def test_check_config_masks_the_token(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"http": {"enabled": True, "bind": "0.0.0.0", "token": "s3cret-value"}}))
    done = run_cli("check-config", str(config))
    assert done.code == 0, done.err
    assert "s3cret-value" not in done.out and yaml.safe_load(done.out.split("\n", 1)[1])["http"]["token"] == "*" * 8


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"model": {"path": str(MODEL)}, "source": {"type": "synthetic"},
                                          "http": {"enabled": True, "port": taken.getsockname()[1]}}))
        assert_one_line_error(run_cli("--log-level", "warning", "run", "--config", str(config), "--max-frames", "1"),
                              "http.port",
                              "cannot listen on 127.0.0.1")


# ------------------------------------------------------------------------------------------------ daemon
def test_real_daemon_token_methods_and_payloads(tmp_path: Path) -> None:
    token = "t0k3n-for-the-test"
    with HttpDaemon(tmp_path, token=token, config={"http": {"bind": "0.0.0.0"}}) as daemon:
        # Without the token, or with a wrong one: 401 on every path.
        for path in ("/", "/metrics", "/api/stats", "/frame.jpg"):
            status, headers, _ = daemon.get(path, token=None)
            assert status == 401 and headers["www-authenticate"].startswith("Bearer"), path
        assert daemon.get("/api/info", token="wrong")[0] == 401
        assert daemon.get("/api/info?token=wrong", token=None)[0] == 401
        assert daemon.get("/api/info")[0] == 200  # Authorization: Bearer
        status, _, page = daemon.get(f"/?token={token}", token=None)  # the browser's way
        assert status == 200 and b"frame.jpg?frame=" in page and f"token={token}".encode() in page
        # Nothing changes state: GET and HEAD only.
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            status, headers, _ = daemon.get("/api/stats", method=method)
            assert status == 405 and headers["allow"] == "GET, HEAD", method
        status, headers, body = daemon.get("/frame.jpg", method="HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        assert daemon.get("/nothing-here")[0] == 404

        stats = json.loads(daemon.get("/api/stats")[2])
        validator("stats").validate(stats)
        info = json.loads(daemon.get("/api/info")[2])
        validator("info").validate(info)
        assert stats["device_id"] == info["device_id"] == "web" and stats["run_id"] == info["run_id"]
        assert info["model"]["name"] == MODEL.stem and info["source"] == {"type": "synthetic",
                                                                          "resolution": [320, 240]}

        status, headers, text = daemon.get("/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(text.decode())}
        processed = families["edgedet_frames_processed"]
        assert processed.type == "counter" and processed.samples[0].name == "edgedet_frames_processed_total"
        assert processed.samples[0].value >= stats["frames_processed"] > 0
        for name in ("edgedet_frames_dropped", "edgedet_frames_invalid", "edgedet_source_reopens",
                     "edgedet_mqtt_dropped_messages", "edgedet_mqtt_reconnects"):
            assert families[name].type == "counter", name
        assert families["edgedet_mqtt_queued_messages"].type == "gauge"
        (info_sample,) = families["edgedet_info"].samples  # an info metric is a gauge of 1 in this format
        assert info_sample.name == "edgedet_info" and info_sample.value == 1
        assert {k: info_sample.labels[k] for k in ("model", "runtime", "runtime_version", "delegate", "version")} \
            == {"model": MODEL.stem, "runtime": info["runtime"]["name"], "runtime_version": info["runtime"]["version"],
                "delegate": "cpu", "version": info["edgedet_version"]}
        histogram = families["edgedet_stage_latency_seconds"]
        assert histogram.type == "histogram"
        counts = {s.labels["stage"]: s.value for s in histogram.samples if s.name.endswith("_count")}
        assert set(counts) == set(STAGES) and min(counts.values()) > 0
        assert "process_resident_memory_bytes" in families
    assert "Traceback" not in daemon.stderr()


# ------------------------------------------------------------------------------------------------ in process
def config_for(port: int, **http: Any) -> Any:
    return build_config({"device_id": "inproc", "model": {"path": str(MODEL)},
                         "source": {"type": "synthetic", "fps": 0, "width": 320, "height": 240},
                         "publish": {"console": False}, "http": {"enabled": True, "port": port, **http}}, "test")


def refused(port: int) -> bool:
    try:
        get(port, "/api/info")
    except ConnectionRefusedError:
        return True
    return False


def test_images_are_the_frame_and_the_model_input_encoded_once_per_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    for name in ("encode_jpeg", "encode_input_png"):
        original = getattr(server, name)
        monkeypatch.setattr(server, name, lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a))
    port = free_port()
    pipeline = Pipeline.build(config_for(port), "run-inproc")
    try:
        pipeline.run(max_frames=5)
        sink = pipeline.http
        assert sink is not None and sink._latest is not None
        result, frame = sink._latest
        status, headers, jpeg = get(port, "/frame.jpg")
        assert status == 200 and headers["content-type"] == "image/jpeg"
        assert int(headers["x-frame-id"]) == result.frame_id
        decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float64)
        assert decoded.shape == (240, 320, 3)
        assert np.abs(decoded - np.asarray(frame, dtype=np.float64)).mean() < 8  # JPEG, quality 80
        assert get(port, "/frame.jpg")[2] == jpeg and calls.count("encode_jpeg") == 1  # cached per frame

        status, headers, png = get(port, "/input.png")
        assert status == 200 and headers["content-type"] == "image/png"
        shown = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        assert shown.shape == (288, 288, 3)  # 96x96, scaled up 3x (nearest)
        classifier = pipeline.classifier
        quant = classifier.quantization
        model_input = input_image(classifier.preprocess(frame), quant.gain, quant.offset, quant.raw)
        assert np.array_equal(shown[::3, ::3], model_input)  # exactly the tensor the model was given
        assert get(port, "/input.png")[2] == png and calls.count("encode_input_png") == 1
    finally:
        pipeline.close()
    assert refused(port)


def test_reload_rebuilds_the_endpoint_only_when_http_changes() -> None:
    first, second = free_port(), free_port()
    pipeline = Pipeline.build(config_for(first), "run-reload")
    try:
        pipeline.run(max_frames=2)
        sink = pipeline.http
        assert pipeline.reload(config_for(first).replace(device_id="other")) == []
        assert pipeline.http is sink
        assert pipeline.reload(config_for(second)) == ["http"]
        assert pipeline.http is not sink and pipeline.http in pipeline.loop.sinks and sink not in pipeline.loop.sinks
        assert refused(first) and get(second, "/api/info")[0] == 200
        off = config_for(second).replace(http=HttpConfig())
        assert pipeline.reload(off) == ["http"] and pipeline.http is None
        assert refused(second)
    finally:
        pipeline.close()


def test_handle_only_keeps_references(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Sink contract: at every frame no image is encoded, no page rendered, no frame copied."""
    on: list[tuple[str, int]] = []
    for name in ("encode_jpeg", "encode_input_png", "render_page"):
        original = getattr(server, name)
        monkeypatch.setattr(server, name, lambda *a, _o=original, _n=name, **k: on.append(
            (_n, threading.get_ident())) or _o(*a, **k))
    port = free_port()
    pipeline = Pipeline.build(config_for(port), "run-contract")
    sink = pipeline.http
    assert sink is not None
    try:
        frames = [np.full((240, 320, 3), i, np.uint8) for i in range(200)]
        for i, frame in enumerate(frames):
            sink.handle(FrameResult(i, time.time(), time.monotonic(), [Class(1, 0.9, "pikachu")],
                                    {"preprocess": 0.2, "inference": 1.0, "postprocess": 0.1, "total": 1.3}), frame)
        assert on == []
        assert sink._latest is not None and sink._latest[1] is frames[-1]  # the reference, not a copy
        assert get(port, "/")[0] == 200 and get(port, "/frame.jpg")[0] == 200
        assert {name for name, _ in on} == {"render_page", "encode_jpeg"}
        assert threading.get_ident() not in {thread for _, thread in on}
    finally:
        pipeline.close()


def test_a_client_polling_back_to_back_is_held_to_five_pages_and_images_a_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A request sooner than 1 / MAX_ENCODES_PER_S after the last page (or image) made waits for its turn, so
    renders, encodings and requests stay five a second however a client polls (clock and sleep injected)."""
    renders: list[str] = []
    original = server.render_page
    monkeypatch.setattr(server, "render_page", lambda **k: renders.append(k["token_query"]) or original(**k))
    port = free_port()
    pipeline = Pipeline.build(config_for(port), "run-page-rate")
    sink = pipeline.http
    assert sink is not None
    now, slept = [100.0], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    sink.clock, sink.sleep = (lambda: now[0]), sleep
    interval = 1.0 / server.MAX_ENCODES_PER_S
    try:
        sink.page("")
        assert renders == [""] and slept == []  # nothing made yet: no wait
        for _ in range(10):
            sink.page("")
        assert len(renders) == 11 and slept == pytest.approx([interval] * 10)  # each waited for its turn
        now[0] += 0.05
        sink.page("token=x")  # another token: its own page, after the rest of the interval
        assert renders[-1] == "token=x" and slept[-1] == pytest.approx(interval - 0.05)
        now[0] += 1.0
        sink.page("")  # at the page's own pace (once a second): never held
        assert len(slept) == 11 and len(renders) == 13
        # Images: a new frame sooner than the interval after the last encoding waits too.
        for i in range(3):
            sink.handle(FrameResult(i, time.time(), time.monotonic(), [Class(1, 0.9, "pikachu")],
                                    {"preprocess": 0.2, "inference": 1.0, "postprocess": 0.1, "total": 1.3}),
                        np.full((240, 320, 3), 10 * i, np.uint8))
            made = sink.frame_jpeg()
            assert made is not None and made.frame_id == i
        assert slept[11:] == pytest.approx([interval, interval])
        again = sink.frame_jpeg(2)  # the same frame again: the cached image, at once
        assert again is made and len(slept) == 13
    finally:
        pipeline.close()


def test_every_handled_frame_is_counted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """handle only queues; the HTTP thread (or the frame loop, past FOLD_AT) counts: exactly one count per frame."""
    monkeypatch.setattr(server, "FOLD_AT", 50)
    port = free_port()
    pipeline = Pipeline.build(config_for(port), "run-counted")
    sink = pipeline.http
    assert sink is not None
    try:
        latency = {"preprocess": 0.2, "inference": 1.0, "postprocess": 0.1, "total": 1.3, "capture_wait": 0.0,
                   "frame_age": 1.5}
        for i in range(1000):
            sink.handle(FrameResult(i, 1000.0 + i / 100, 0.0, [], dict(latency)), None)
            assert len(sink._queue) <= 51
        text = get(port, "/metrics")[2].decode()
        (family,) = [f for f in text_string_to_metric_families(text) if f.name == "edgedet_stage_latency_seconds"]
        counts = {s.labels["stage"]: s.value for s in family.samples if s.name.endswith("_count")}
        assert counts == dict.fromkeys(STAGES, 1000)
        assert [second for second, _ in sink.history.points()] == list(range(1000, 1009))  # 1009: still open
    finally:
        pipeline.close()


# ------------------------------------------------------------------------------------------------ parts
def test_stage_histogram_is_cumulative_in_seconds() -> None:
    histogram = StageHistogram(("inference",))
    for value in (0.3, 0.7, 4.0, 4.0, 12_000.0):
        histogram.observe({"inference": value, "not-a-stage": 1.0})
    family = histogram.family()
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets["0.0005"] == 1 and buckets["0.001"] == 2 and buckets["0.005"] == 4 and buckets["5.0"] == 4
    assert buckets["+Inf"] == 5 and len(buckets) == len(BUCKETS_S) + 1
    (total,) = [s.value for s in family.samples if s.name.endswith("_sum")]
    assert total == pytest.approx(12.009)


def test_roi_rects_are_the_boxes_the_preprocessors_cut() -> None:
    # model.preprocess.roi is [x1, y1, x2, y2] in fractions; the page shows x, y, width, height of the pixel
    # box the model's preprocessing cuts (roi_box's rounding), per classifier, and nothing for one without.
    def lane(name: str, roi: Any) -> Any:
        return SimpleNamespace(name=name, classifier=SimpleNamespace(preprocessor=SimpleNamespace(roi=roi)))

    rects = roi_rects([lane("left", (0.0, 0.0, 0.5, 1.0)), lane("none", None), lane("box", (0.25, 0.5, 0.75, 0.75))],
                      (640, 480))
    assert rects == [RoiRect("left", 0.0, 0.0, 0.5, 1.0), RoiRect("box", 0.25, 0.5, 0.5, 0.25)]
    (odd,) = roi_rects([lane("", (0.1, 0.1, 0.2, 0.2))], (101, 51))  # 10.1 -> 10, 20.2 -> 20; 5.1 -> 5, 10.2 -> 10
    assert odd == RoiRect("", 10 / 101, 5 / 51, 10 / 101, 5 / 51)


def test_the_live_page_draws_each_classifiers_roi_where_it_is() -> None:
    config = build_config({
        "source": {"type": "synthetic", "width": 640, "height": 480, "fps": 0, "pattern": "halves"},
        "models": [{"name": "left", "path": str(MODEL), "preprocess": {"roi": [0, 0, 0.5, 1]}},
                   {"name": "right", "path": str(MODEL), "preprocess": {"roi": [0.5, 0.25, 1, 0.75]}}],
        "mqtt": {"enabled": False}, "http": {"enabled": True, "port": free_port()}}, "test")
    pipeline = Pipeline.build(config, "run")
    try:
        pipeline.run(max_frames=2)
        assert pipeline.http is not None
        page = pipeline.http.page("").decode()
    finally:
        pipeline.close()
    assert ('id="roi-left" title="left: preprocess.roi" style="left:0.00%;top:0.00%;width:50.00%;height:100.00%"'
            in page)
    assert ('id="roi-right" title="right: preprocess.roi" style="left:50.00%;top:25.00%;width:50.00%;'
            'height:50.00%"' in page)


def test_page_draws_the_roi_only_when_there_is_one() -> None:
    from edgedet.results import LoopStats

    stats = LoopStats(1, 1, 0, 0, 1.0, 1.0, 1.0, 0, 0, 0, {})
    result = FrameResult(7, time.time(), time.monotonic(), [Class(1, 0.9, "pi<ka>chu")], {"total": 1.0})
    kwargs: dict[str, Any] = {"info": {"device_id": "d", "model": {"input_shape": [1, 96, 96, 3]}}, "stats": stats,
                              "latest": result, "frame_size": (640, 480), "history": [(1, (1.0,)), (2, (2.0,))],
                              "stages": ("total",), "token_query": "token=a&b"}
    without = render_page(rois=[], **kwargs)
    assert 'id="roi"' not in without and "pi&lt;ka&gt;chu" in without and "<polyline" in without
    assert 'src="frame.jpg?frame=7&amp;token=a&amp;b"' in without
    drawn = render_page(rois=[RoiRect("", 0.25, 0.25, 0.5, 0.5)], **kwargs)
    assert 'id="roi"' in drawn and "left:25.00%;top:25.00%;width:50.00%;height:50.00%" in drawn


def test_config_yaml_documents_every_http_key() -> None:
    text = (REPO / "config.yaml").read_text()
    config, _ = load_config(REPO / "config.yaml")
    assert config.http == HttpConfig()
    section = yaml.safe_load(text)["http"]
    assert set(section) == set(field_types(HttpConfig))


def test_batched_counts_are_the_per_frame_counts() -> None:
    rng = np.random.default_rng(3)
    latencies = [dict(zip(STAGES, rng.choice([0.5, 1.0, 2.0, 12_000.0, 3.3], len(STAGES)).tolist()))
                 for _ in range(500)]
    one, batched = StageHistogram(), StageHistogram()
    for latency in [*latencies, {"inference": 1.0}]:
        one.observe(latency)
    batched.observe_many(latencies[:123])
    batched.observe_many(latencies[123:])
    batched.observe_many([{"inference": 1.0}])  # a stage missing: counted one by one
    samples = [[(s.name, s.labels, s.value) for s in h.family().samples] for h in (one, batched)]
    assert [s[:2] for s in samples[0]] == [s[:2] for s in samples[1]]
    assert [s[2] for s in samples[0]] == pytest.approx([s[2] for s in samples[1]])

    results = [FrameResult(i, 100.0 + i * 0.01 + (3 if i > 300 else 0), 0.0, [], latency)
               for i, latency in enumerate(latencies)]
    each, runs = server.LatencyHistory(), server.LatencyHistory()
    for result in results:
        each.add(result.captured_wall, result.latency_ms)
    for start in range(0, len(results), 77):
        runs.add_many(results[start:start + 77])
    assert [s for s, _ in each.points()] == [s for s, _ in runs.points()] == [100, 101, 102, 103, 106]  # 107: open
    assert [v for _, v in each.points()] == [pytest.approx(v) for _, v in runs.points()]
