"""``edgedet models install``: against the REAL daemon and a real mosquitto, a good model is checked,
installed, the config points at it and a SIGHUP swaps it in (``status`` stays online, the next detections
come from it); a truncated one is refused with exit 2 and the running model goes on."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import yaml
from helpers import run_cli
from mosquitto import Mosquitto, available
from test_daemon_mqtt import DAEMON_ENV, MODEL, Daemon, Subscriber, finished, wait_until

from edgedet.install import set_model_path

STARTUP_S = 60.0  # model load + first frame on a busy shared machine: only a bound for waiting


def _candidate(tmp_path: Path, name: str) -> Path:
    model = tmp_path / "incoming" / f"{name}.tflite"
    model.parent.mkdir(exist_ok=True)
    shutil.copy(MODEL, model)
    shutil.copy(MODEL.with_suffix(".json"), model.with_suffix(".json"))
    return model


def _install(*args: str) -> tuple[int, str, str]:
    run = run_cli("models", "install", *args, env={"PYTHONPATH": DAEMON_ENV["PYTHONPATH"]})
    return run.code, run.out, run.err


@pytest.mark.skipif(available() is not None, reason=available() or "")
def test_install_swaps_the_model_of_the_running_daemon_and_refuses_a_truncated_one(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    running = models / MODEL.name
    shutil.copy(MODEL, running)
    shutil.copy(MODEL.with_suffix(".json"), running.with_suffix(".json"))
    good = _candidate(tmp_path, "new_model")
    bad = tmp_path / "incoming" / "broken_model.tflite"
    bad.write_bytes(MODEL.read_bytes()[: MODEL.stat().st_size // 2])
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker, "edgedet/inst/#")
    daemon = Daemon(tmp_path, broker.port, "inst", fps=50, config={"model": {"path": str(running)}})
    try:
        assert wait_until(lambda: len(sub.seqs()) >= 10, STARTUP_S), daemon.stderr()[-2000:]
        config = daemon.config_path
        before = config.read_text()

        code, out, err = _install(str(bad), "--config", str(config), "--pid", str(daemon.proc.pid))
        assert code == 2 and "Traceback" not in err, err
        assert [line for line in err.splitlines() if not line.startswith("INFO: ")] == [
            f"edgedet: error: {bad}: truncated or corrupt TFLite file (error); the copy or download is "
            "incomplete; fetch the model again"]
        assert config.read_text() == before and sorted(p.name for p in models.iterdir()) == \
            sorted([running.name, running.with_suffix(".json").name])  # nothing left behind, no staging folder
        seen = len(sub.json("/detection"))
        assert wait_until(lambda: len(sub.json("/detection")) >= seen + 10, 30)
        assert {d["model"] for d in sub.json("/detection")} == {MODEL.stem}  # the old model goes on

        code, out, err = _install(str(good), "--config", str(config), "--pid", str(daemon.proc.pid))
        assert code == 0, err
        assert "6/6 sample images classified as their folder" in out
        assert f"done: send SIGHUP to the daemon (pid {daemon.proc.pid})" in out
        assert (models / "new_model.tflite").read_bytes() == MODEL.read_bytes()
        assert (models / "new_model.json").is_file()
        edited = yaml.safe_load(config.read_text())
        assert edited["model"]["path"] == str(models / "new_model.tflite")
        assert {k: v for k, v in edited.items() if k != "model"} == \
            {k: v for k, v in yaml.safe_load(before).items() if k != "model"}
        assert wait_until(lambda: len([d for d in sub.json("/detection") if d["model"] == "new_model"]) >= 10, 30), \
            daemon.stderr()[-3000:]
        daemon.proc.send_signal(signal.SIGTERM)
        finished(daemon, 30)
    finally:
        daemon.kill()
        sub.close()
        broker.stop()
    assert sub.payloads("/status") == [b"online", b"offline"]  # online until the stop: MQTT never dropped
    models_seen = [d["model"] for d in sub.json("/detection")]
    switch = models_seen.index("new_model")
    assert set(models_seen[:switch]) == {MODEL.stem} and set(models_seen[switch:]) == {"new_model"}
    seqs = [d["seq"] for d in sub.json("/detection")]
    assert seqs == list(range(1, len(seqs) + 1))  # the same run: seq continues
    assert "config reloaded: model rebuilt" in daemon.stderr()


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    good = _candidate(tmp_path, "new_model")
    config = tmp_path / "config.yaml"
    text = f"# mine\nmodel:\n  path: {MODEL}\n"
    config.write_text(text)
    code, out, err = _install(str(good), "--config", str(config), "--dir", str(tmp_path / "models"), "--dry-run")
    assert code == 0, err
    assert "dry run, nothing changed; would:" in out and f"copy {good} -> {tmp_path / 'models' / good.name}" in out
    assert config.read_text() == text and not (tmp_path / "models").exists()


def test_an_edgetpu_model_without_the_delegate_is_refused(tmp_path: Path, shared_models: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  path: {MODEL}\n")
    code, _, err = _install(str(shared_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"), "--config",
                              str(config), "--dir", str(tmp_path / "models"))
    lines = [line for line in err.splitlines() if not line.startswith("INFO: ")]
    assert code == 2 and len(lines) == 1 and "refused: compiled for the Edge TPU" in lines[0], err
    assert config.read_text() == f"model:\n  path: {MODEL}\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("# c\nmodel:\n  # m\n  path: old.tflite  # keep\n  top_k: 2\nmqtt: {}\n",
     '# c\nmodel:\n  # m\n  path: "/m/new.tflite"  # keep\n  top_k: 2\nmqtt: {}\n'),
    ("model:\n  top_k: 2\n", 'model:\n  path: "/m/new.tflite"\n  top_k: 2\n'),
    ("model: {top_k: 2}\n", 'model: {top_k: 2, path: "/m/new.tflite"}\n'),
    ("mqtt:\n  enabled: false", 'mqtt:\n  enabled: false\nmodel:\n  path: "/m/new.tflite"\n'),
    ("", 'model:\n  path: "/m/new.tflite"\n'),
])
def test_set_model_path_keeps_the_rest_of_the_file(text: str, expected: str) -> None:
    edited = set_model_path(text, "/m/new.tflite")
    assert edited == expected
    assert yaml.safe_load(edited)["model"]["path"] == "/m/new.tflite"


def _fake_systemctl(tmp_path: Path, active: str) -> Path:
    """A `systemctl` on PATH (no systemd runs here) that logs its arguments and says only ``active`` is."""
    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\n'
                      f'if [ "$1" = is-active ]; then [ "$3" = "{active}" ]; exit $?; fi\nexit 0\n')
    script.chmod(0o755)
    return log


@pytest.mark.parametrize(("config_name", "active", "reloaded"), [
    ("cam1.yaml", "edgedet@cam1", "edgedet@cam1"),  # scripts/install.sh --instance cam1
    ("config.yaml", "edgedet", "edgedet"),
    ("cam1.yaml", "edgedet", None),  # the main unit is running, but it reads config.yaml, not this file
])
def test_install_reloads_the_unit_that_reads_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        config_name: str, active: str,
                                                        reloaded: str | None) -> None:
    import argparse

    from edgedet import config as config_module
    from edgedet import install

    etc = tmp_path / "etc" / "edgedet"
    etc.mkdir(parents=True)
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", etc / "config.yaml")
    log = _fake_systemctl(tmp_path, active)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    config = etc / config_name
    config.write_text(f"model:\n  path: {MODEL}\n")
    parser = argparse.ArgumentParser()
    install.add_arguments(parser)
    args = parser.parse_args([str(_candidate(tmp_path, "new_model")), "--config", str(config),
                              "--dir", str(tmp_path / "models")])
    assert install.install(args) == 0
    calls = log.read_text().splitlines()
    if reloaded is None:  # only the unit that reads the file was asked about, and nothing was reloaded
        assert calls == ["is-active --quiet edgedet@cam1"]
    else:
        assert calls == [f"is-active --quiet {reloaded}", f"reload {reloaded}"]
    assert yaml.safe_load(config.read_text())["model"]["path"] == str(tmp_path / "models" / "new_model.tflite")
