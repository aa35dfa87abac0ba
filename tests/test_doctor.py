"""`edgedet doctor`: a healthy box against a real mosquitto is all ok (or reasoned skips), and each fault,
made real where this machine can make it, gives its fail line naming the fix. Fakes only for what is not
here: no Coral (the library faults are real .so files), no Pi camera."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jsonschema
import mosquitto
import pytest
from helpers import REPO, run_cli

from edgedet.config import load_config
from edgedet.doctor import Context, Item, camera, edgetpu, model, mqtt, platform, runtimes, service
from edgedet.doctor.cli import report

SCHEMA = json.loads((REPO / "docs" / "schemas" / "doctor.json").read_text())
USER, PASSWORD = "edgedet", "s3cret-pw"
ACL_OK = f"user {USER}\ntopic readwrite edgedet/#\ntopic read homeassistant/#\n"
ACL_DENY = f"user {USER}\ntopic readwrite other/#\n"

needs_mosquitto = pytest.mark.skipif(mosquitto.available() is not None, reason=str(mosquitto.available()))


def context(tmp_path: Path, text: str, *overrides: str, environ: dict[str, str] | None = None) -> Context:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    config, found = load_config(path, list(overrides), check_files=False)
    return Context(config, found, [], {**os.environ, **(environ or {})})


def one(items: list[Item], name: str) -> Item:
    found = [i for i in items if i.name == name]
    assert len(found) == 1, items
    return found[0]


def mqtt_yaml(broker: mosquitto.Mosquitto, password_file: Path | None = None, tls: bool = False,
              ca: Path | None = None) -> str:
    text = f"mqtt:\n  enabled: true\n  host: {broker.host}\n  port: {broker.port}\n"
    if password_file is not None:
        text += f"  username: {USER}\n  password_file: {password_file}\n"
    if tls:
        text += f"  tls:\n    enabled: true\n    ca_file: {ca}\n"
    return text


def password_file(tmp_path: Path, password: str = PASSWORD, mode: int = 0o600) -> Path:
    path = tmp_path / "mqtt-password"
    path.write_text(password + "\n")
    path.chmod(mode)
    return path


@needs_mosquitto
def test_a_healthy_config_is_all_ok_or_reasoned_skips_and_the_json_matches_the_schema(tmp_path: Path) -> None:
    with mosquitto.Mosquitto(tmp_path / "broker", users={USER: PASSWORD}, acl=ACL_OK) as broker:
        config = tmp_path / "config.yaml"
        config.write_text("source:\n  type: synthetic\npublish:\n  jsonl_path: " + str(tmp_path / "out.jsonl") +
                          "\n" + mqtt_yaml(broker, password_file(tmp_path)) +
                          f"  outbox_path: {tmp_path / 'outbox.db'}\n")
        config.chmod(0o600)
        run = run_cli("doctor", "--config", str(config), "--json")
        assert run.code == 0, run.out + run.err
        data = json.loads(run.out)
        jsonschema.validate(data, SCHEMA)
        print(f"doctor took {data['seconds']:.2f} s")  # the local-only budget is 5 s; not asserted (noisy box)
        bad = [i for i in data["items"] if i["status"] not in ("ok", "skip") and i["name"] != "labels"]
        assert not bad, bad
        statuses = {(i["group"], i["name"]): i["status"] for i in data["items"]}
        for key in [("mqtt", "dns"), ("mqtt", "tcp"), ("mqtt", "login"), ("mqtt", "acl"), ("camera", "source"),
                    ("runtimes", "selected"), ("model", "file"), ("platform", "disk mqtt.outbox_path"),
                    ("service", "password file")]:
            assert statuses[key] == "ok", (key, data["items"])
        assert all(i["fact"] for i in data["items"] if i["status"] == "skip")
        assert PASSWORD not in run.out
        text = run_cli("doctor", "--config", str(config))
        assert text.code == 0 and "mqtt:" in text.out and "round trip on edgedet/" in text.out
        assert len(text.out.splitlines()) < 50 and PASSWORD not in text.out


def test_a_secret_in_a_fact_is_masked(tmp_path: Path) -> None:
    ctx = context(tmp_path, "mqtt:\n  password: hunter2-pw\n")
    data = report(ctx, [Item("mqtt", "x", "fail", "said hunter2-pw", "")], 0.1)
    assert data["items"][0]["fact"] == "said ***"


def test_broker_down(tmp_path: Path) -> None:
    port = mosquitto.free_port()
    items = mqtt.check(context(tmp_path, f"mqtt:\n  enabled: true\n  host: 127.0.0.1\n  port: {port}\n"))
    tcp = one(items, "tcp")
    assert tcp.status == "fail" and "refused" in tcp.fact.lower() and "start the broker" in tcp.fix


def test_wrong_port_something_else_listens(tmp_path: Path) -> None:
    """A port where a non-MQTT service accepts and hangs up: no CONNACK, the fix names the listener."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        items = mqtt.check(context(tmp_path, f"mqtt:\n  enabled: true\n  host: 127.0.0.1\n  port: {port}\n"))
    finally:
        stop.set()
        thread.join()
        server.close()
    login = one(items, "login")
    assert login.status == "fail" and "MQTT listener" in login.fix, items


@needs_mosquitto
@pytest.mark.parametrize("side", ["broker only", "client only"])
def test_tls_on_only_one_side(tmp_path: Path, side: str) -> None:
    files = mosquitto.make_tls_files(tmp_path / "tls")
    with mosquitto.Mosquitto(tmp_path / "broker", tls=files if side == "broker only" else None) as broker:
        items = mqtt.check(context(tmp_path, mqtt_yaml(broker, tls=side == "client only", ca=files.ca_file)))
    tls = one(items, "tls")
    assert tls.status == "fail", items
    if side == "broker only":
        assert "set mqtt.tls.enabled: true" in tls.fix
    else:
        assert "does not speak TLS" in tls.fix and "mqtt.tls.enabled: false" in tls.fix


@needs_mosquitto
def test_tls_on_both_sides_shows_the_certificate(tmp_path: Path) -> None:
    files = mosquitto.make_tls_files(tmp_path / "tls")
    with mosquitto.Mosquitto(tmp_path / "broker", tls=files) as broker:
        items = mqtt.check(context(tmp_path, mqtt_yaml(broker, tls=True, ca=files.ca_file)))
    assert one(items, "tls").status == "ok" and "CN=localhost" in one(items, "tls").fact
    assert one(items, "acl").status == "ok", items


@needs_mosquitto
def test_wrong_password(tmp_path: Path) -> None:
    with mosquitto.Mosquitto(tmp_path / "broker", users={USER: PASSWORD}, acl=ACL_OK) as broker:
        items = mqtt.check(context(tmp_path, mqtt_yaml(broker, password_file(tmp_path, "wrong-pw"))))
    login = one(items, "login")
    assert login.status == "fail" and "password" in login.fix and "mosquitto_passwd" in login.fix, items


@needs_mosquitto
def test_an_acl_that_denies_the_prefix(tmp_path: Path) -> None:
    with mosquitto.Mosquitto(tmp_path / "broker", users={USER: PASSWORD}, acl=ACL_DENY) as broker:
        items = mqtt.check(context(tmp_path, mqtt_yaml(broker, password_file(tmp_path))))
    assert one(items, "login").status == "ok"
    acl = one(items, "acl")
    assert acl.status == "fail" and "topic readwrite edgedet/#" in acl.fix, items


@needs_mosquitto
def test_home_assistant_discovery_configs_are_seen(tmp_path: Path) -> None:
    with mosquitto.Mosquitto(tmp_path / "broker") as broker:
        ctx = context(tmp_path, mqtt_yaml(broker) + "device_id: cam1\nhomeassistant:\n  enabled: true\n")
        assert one(mqtt.check(ctx), "homeassistant").status == "warn"
        subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-r", "-t",
                        "homeassistant/sensor/cam1/top/config", "-m", "{}"], check=True, timeout=10)
        ha = one(mqtt.check(ctx), "homeassistant")
    assert ha.status == "ok" and "1 retained" in ha.fact


def test_a_missing_model(tmp_path: Path) -> None:
    items = model.check(context(tmp_path, f"model:\n  path: {tmp_path / 'gone.tflite'}\n"))
    assert one(items, "file").status == "fail" and "not found" in one(items, "file").fact
    assert "model.path" in one(items, "file").fix


def test_an_edgetpu_model_with_the_cpu_delegate(tmp_path: Path, shared_models: Path) -> None:
    path = shared_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
    build = one(model.check(context(tmp_path, f"model:\n  path: {path}\n")), "edgetpu build")
    assert build.status == "fail" and "model.delegate: edgetpu" in build.fix
    assert "mobilenet_v1_0.25_128_quant.tflite" in build.fact  # its CPU twin is named


def test_an_edgetpu_model_and_libedgetpu_missing(tmp_path: Path, shared_models: Path) -> None:
    path = shared_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
    ctx = context(tmp_path, f"model:\n  path: {path}\n  delegate: edgetpu\n  fallback: fail\n",
                  environ={"EDGEDET_EDGETPU_LIBRARY": str(tmp_path / "libedgetpu.so.1")})
    build = one(model.check(ctx), "edgetpu build")
    assert build.status == "fail" and "does not load" in build.fact and "libedgetpu1-std" in build.fix
    items = edgetpu.check(ctx)
    lib = one(items, "libedgetpu")
    assert lib.status == "fail" and "install libedgetpu1-std" in lib.fix
    assert one(items, "device").status == "fail" and "plug the Coral in" in one(items, "device").fix
    assert one(items, "delegate").status == "skip"


def test_edgetpu_is_skipped_with_the_cpu_delegate_and_no_coral(tmp_path: Path) -> None:
    if edgetpu.usb_devices() or list(Path("/dev").glob("apex_*")):
        pytest.skip("a Coral is attached here")
    items = edgetpu.check(context(tmp_path, "model:\n  delegate: cpu\n"))
    assert {i.status for i in items} == {"skip"} and "delegate cpu" in one(items, "libedgetpu").fact


def test_a_library_without_the_delegate_symbols(tmp_path: Path) -> None:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (scripts/test installs gcc): cannot build the test shared library")
    (tmp_path / "lib.c").write_text("int edgedet_not_a_delegate(void) { return 0; }\n")
    library = tmp_path / "libnotadelegate.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(tmp_path / "lib.c")], check=True,
                   capture_output=True, timeout=120)
    ctx = context(tmp_path, "model:\n  delegate: edgetpu\n", environ={"EDGEDET_EDGETPU_LIBRARY": str(library)})
    lib = one(edgetpu.check(ctx), "libedgetpu")
    assert lib.status == "fail" and "tflite_plugin_create_delegate" in lib.fact
    assert "EDGEDET_EDGETPU_LIBRARY" in lib.fix


TFLITE_VENV = Path("/work/main/.venv-tflite214/bin/python")


def _tflite_python() -> Path:
    python = Path(os.environ.get(runtimes.TFLITE_PYTHON_ENV, TFLITE_VENV))
    if not python.is_file():
        pytest.skip(f"set {runtimes.TFLITE_PYTHON_ENV} to a python with tflite-runtime==2.14.0 and numpy<2")
    return python


def test_tflite_runtime_with_numpy_1_works(tmp_path: Path) -> None:
    ctx = context(tmp_path, "source:\n  type: synthetic\n", environ={runtimes.TFLITE_PYTHON_ENV: str(_tflite_python())})
    item = one(runtimes.check(ctx), "tflite-runtime")
    assert item.status == "ok" and "NumPy 1." in item.fact and "one invoke ok" in item.fact, item


def test_tflite_runtime_with_numpy_2_fails_with_the_fix(tmp_path: Path) -> None:
    """The real pair: the tflite-runtime 2.14 venv's python with this venv's NumPy 2 ahead on its path."""
    import numpy

    python = _tflite_python()
    overlay = tmp_path / "numpy2"
    overlay.mkdir()
    site = Path(numpy.__file__).resolve().parents[1]
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            (overlay / name).symlink_to(site / name)
    wrapper = tmp_path / "python-numpy2"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={overlay} exec {python} "$@"\n')
    wrapper.chmod(0o755)
    ctx = context(tmp_path, "source:\n  type: synthetic\n", environ={runtimes.TFLITE_PYTHON_ENV: str(wrapper)})
    item = one(runtimes.check(ctx), "tflite-runtime")
    assert item.status == "fail" and f"NumPy {numpy.__version__}" in item.fact, item
    assert "numpy<2" in item.fix and "ai-edge-litert" in item.fix


def test_a_full_disk_under_the_outbox_path(tmp_path: Path) -> None:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root")
    try:
        with open(mount / "filler", "wb") as f:  # fill it, as a runaway log would
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        ctx = context(tmp_path, f"mqtt:\n  enabled: true\n  outbox_path: {mount / 'spool' / 'outbox.db'}\n")
        item = one(platform.check(ctx), "disk mqtt.outbox_path")
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert item.status == "fail" and "0.0 MiB free" in item.fact and "mqtt.outbox_path" in item.fix, item


def test_a_password_file_readable_by_others(tmp_path: Path) -> None:
    path = password_file(tmp_path, mode=0o644)
    item = one(service.check(context(tmp_path, f"mqtt:\n  username: u\n  password_file: {path}\n")),
               "password file")
    assert item.status == "fail" and "readable by everyone" in item.fact and f"chmod 600 {path}" in item.fix


def test_a_camera_path_that_does_not_exist(tmp_path: Path) -> None:
    item = one(camera.check(context(tmp_path, "source:\n  type: opencv\n  path: /dev/video97\n")), "source")
    assert item.status == "fail" and "/dev/video97" in item.fact and "source.path" in item.fix


def test_a_failing_check_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("source:\n  type: opencv\n  path: /dev/video97\n")
    run = run_cli("doctor", "--config", str(config))
    assert run.code == 1 and "FAIL source: source.path /dev/video97" in run.out and "fix: " in run.out


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait(predicate: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_with_the_service_running_doctor_leaves_its_camera_alone(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text(f"source:\n  type: synthetic\n  fps: 20\npublish:\n  console: false\n  jsonl_path: {results}\n")
    daemon = subprocess.Popen([sys.executable, "-m", "edgedet", "run", "--config", str(config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        assert _wait(lambda: _lines(results) > 0), "the service produced no result"
        before = _lines(results)
        run = run_cli("doctor", "--config", str(config), "--json")
        during = _lines(results)
        data = json.loads(run.out)
        jsonschema.validate(data, SCHEMA)
        assert data["service_running"] is True
        source = next(i for i in data["items"] if i["group"] == "camera")
        assert source["status"] == "skip" and "the service is running" in source["fact"]
        assert f"pid {daemon.pid}" in source["fact"]
        assert during > before, "the service stopped processing frames while doctor ran"
        assert daemon.poll() is None
        # The same daemon is not the service of another config (other edgedet runs on the box hold no camera
        # of this one).
        other = tmp_path / "other.yaml"
        other.write_text("source:\n  type: synthetic\n")
        assert not [s for s in service.running_services(other) if f"pid {daemon.pid}:" in s]
        assert [s for s in service.running_services(config) if f"pid {daemon.pid}:" in s]
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def test_each_classifier_of_models_gets_its_own_model_checks(tmp_path: Path) -> None:
    bundled = REPO / "models" / "pikachu_mobilenet_v2_0.35_96_int8.tflite"
    config = tmp_path / "config.yaml"
    config.write_text(f"source:\n  type: synthetic\nmodels:\n  - {{name: door, path: {bundled}}}\n"
                      f"  - {{name: drive, path: {tmp_path / 'missing.tflite'}}}\n")
    run = run_cli("doctor", "--config", str(config), "--json")
    data = json.loads(run.out)
    jsonschema.validate(data, SCHEMA)
    model = {i["name"]: i for i in data["items"] if i["group"] == "model"}
    assert model["door: file"]["status"] == "ok" and model["door: input"]["status"] == "ok"
    assert model["drive: file"]["status"] == "fail" and "models[1].path" in model["drive: file"]["fact"]
    assert run.code == 1
