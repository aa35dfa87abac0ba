"""systemd/edgedet@.service: one edgedet per camera. The main unit's sandbox per instance (exposure, verify),
`install.sh --instance` (DESTDIR), and two instances' configs running side by side against one mosquitto."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mosquitto import Collector, Mosquitto, available

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "systemd" / "edgedet.service"
TEMPLATE = REPO / "systemd" / "edgedet@.service"
SCRIPT = REPO / "scripts" / "install.sh"
MODEL = REPO / "models" / "pikachu_mobilenet_v2_0.35_96_int8.tflite"
# What differs between an instance and the main unit: its name, its config, its folders.
PER_INSTANCE = {
    "Description": "edgedet camera classifier %i (TFLite / Coral Edge TPU) publishing over MQTT",
    "ExecStart": "/opt/edgedet/venv/bin/edgedet run --config /etc/edgedet/%i.yaml",
    "StateDirectory": "edgedet/%i",
    "CacheDirectory": "edgedet/%i",
    "Environment": "PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 EDGEDET_INSTANCE=%i",
}


def directives(unit: Path) -> list[tuple[str, str]]:
    out = []
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    return tool


def test_template_is_the_main_unit_with_per_instance_config_and_folders() -> None:
    main, template = directives(MAIN), directives(TEMPLATE)
    assert [k for k, _ in main] == [k for k, _ in template]  # the same directives in the same order
    differing = {k: v for (k, v), (_, old) in zip(template, main) if v != old}
    assert differing == PER_INSTANCE


def test_instance_exposure_at_most_2(tmp_path: Path) -> None:
    shutil.copy(TEMPLATE, tmp_path / TEMPLATE.name)
    result = subprocess.run([_systemd_analyze(), "security", "--offline=true", str(tmp_path / "edgedet@cam0.service")],
                            capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for edgedet@cam0\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= 2.0


def test_instance_verify_clean(tmp_path: Path) -> None:
    """`verify` of an instance loads the template beside it; ExecStart points at /bin/true (no venv here)."""
    text = TEMPLATE.read_text()
    runnable = text.replace("ExecStart=/opt/edgedet/venv/bin/edgedet ", "ExecStart=/bin/true ")
    (tmp_path / TEMPLATE.name).write_text(runnable)
    for name in ("cam0", "cam1"):
        result = subprocess.run([_systemd_analyze(), "verify", str(tmp_path / f"edgedet@{name}.service")],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
    # The check bites: a bad line in the template is reported for the instance.
    (tmp_path / TEMPLATE.name).write_text(text.replace("TasksMax=64", "TasksMax=bogus"))
    result = subprocess.run([_systemd_analyze(), "verify", str(tmp_path / "edgedet@cam0.service")],
                            capture_output=True, text=True, timeout=120)
    assert "Invalid maximum tasks value 'bogus'" in result.stdout + result.stderr


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DESTDIR": str(root), "EDGEDET_SKIP_PIP": "1"}
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120)


def test_install_instance_sets_up_one_camera(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for name in ("cam0", "cam1"):
        result = install(root, "--instance", name)
        assert result.returncode == 0, result.stderr
        assert f"systemctl start edgedet@{name}" in result.stdout
    assert (root / "etc/systemd/system/edgedet@.service").read_text() == TEMPLATE.read_text()
    assert not (root / "etc/systemd/system/edgedet.service").exists()
    assert not (root / "etc/edgedet/config.yaml").exists()
    for name in ("cam0", "cam1"):
        # The config the unit's ExecStart names for this instance, with this instance's device id.
        config = yaml.safe_load((root / f"etc/edgedet/{name}.yaml").read_text())
        assert config["device_id"] == name
        assert config["model"]["path"].startswith("/opt/edgedet/models/")
    actions = (root / "opt/edgedet/install-actions.txt").read_text().splitlines()
    assert actions.count("systemctl enable edgedet@cam0.service") == 1
    assert actions.count("systemctl enable edgedet@cam1.service") == 1
    assert "systemctl enable edgedet.service" not in actions

    edited = root / "etc/edgedet/cam1.yaml"
    edited.write_text(edited.read_text() + "# camera 1 on the left\n")
    assert install(root, "--instance", "cam1").returncode == 0  # a second install keeps the edit
    assert edited.read_text().endswith("# camera 1 on the left\n") and (root / "etc/edgedet/cam1.yaml.new").exists()
    result = install(root, "--uninstall", "--instance", "cam0")
    assert result.returncode == 0 and not (root / "etc/edgedet/cam0.yaml").exists()
    assert (root / "etc/systemd/system/edgedet@.service").exists() and edited.exists()
    result = install(root, "--uninstall")
    assert "kept the edited /etc/edgedet/cam1.yaml" in result.stdout
    assert {str(p.relative_to(root)) for p in root.rglob("*")} == {"etc", "etc/edgedet", "etc/edgedet/cam1.yaml"}
    assert install(root, "--uninstall", "--purge").returncode == 0
    assert list(root.rglob("*")) == []


@pytest.mark.parametrize("name", ["a/b", "cam 0", "config", "x.y"])
def test_instance_names_are_topic_levels(tmp_path: Path, name: str) -> None:
    result = install(tmp_path / "root", "--instance", name)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--instance" in result.stderr
    assert not (tmp_path / "root" / "etc").exists()


@pytest.mark.skipif(available() is not None, reason=available() or "")
def test_two_instances_side_by_side_nothing_mixed(tmp_path: Path) -> None:
    """The configs install.sh makes for two cameras, run as two daemons (a synthetic source each, as the Pi
    cameras are absent) against one broker: each publishes only under its own device id."""
    root = tmp_path / "root"
    for name in ("cam0", "cam1"):
        assert install(root, "--instance", name).returncode == 0
    frames = {"cam0": 30, "cam1": 45}
    with Mosquitto(tmp_path / "broker") as broker:
        everything = Collector(broker, "#")
        procs = {}
        for name in frames:
            config = yaml.safe_load((root / f"etc/edgedet/{name}.yaml").read_text())
            config["model"]["path"] = str(MODEL)
            config["source"].update(type="synthetic", fps=100, width=160, height=120)
            config["publish"].update(console=False)
            config["mqtt"].update(enabled=True, host="127.0.0.1", port=broker.port)
            config["logging"]["format"] = "plain"
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "edgedet", "run", "--config", str(path), "--max-frames", str(frames[name]),
                 "--stats-file", str(tmp_path / f"{name}.stats.json")],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "EDGEDET_INSTANCE": name},
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0 and "Traceback" not in err, f"{name}: {err[-2000:]}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(everything.payloads("/detection")) < sum(frames.values()):
            time.sleep(0.05)
        everything.close()
    devices = {topic.split("/")[1] for topic, _, _ in everything.received if topic.startswith("edgedet/")}
    assert devices == {"cam0", "cam1"}
    run_ids = {}
    for name, count in frames.items():
        (info,) = everything.json(f"edgedet/{name}/info")
        assert info["device_id"] == name
        run_ids[name] = info["run_id"]
        detections = everything.json(f"edgedet/{name}/detection")
        assert [d["seq"] for d in detections] == list(range(1, count + 1))
        assert {d["run_id"] for d in detections} == {info["run_id"]}
        stats = everything.json(f"edgedet/{name}/stats")
        assert stats and {s["device_id"] for s in stats} == {name} and {s["run_id"] for s in stats} == {info["run_id"]}
        assert json.loads((tmp_path / f"{name}.stats.json").read_text())["frames_processed"] == count
    assert run_ids["cam0"] != run_ids["cam1"]
