"""Every bad config is one ConfigError line naming the file, the key path and the expected form."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from edgedet.config import load_config
from edgedet.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SEE = "; see config.yaml for every key"
YAML_FIX = "; fix the YAML at that line and column"
MODEL_FIX = "; check the path (relative paths are relative to the config file)"

# name -> (file text, expected message with {file} = the config file and {dir} = its folder)
BAD_CONFIGS: dict[str, tuple[str, str]] = {
    "unknown_top_key": ("modle:\n  top_k: 3\n", "{file}: modle: unknown key; did you mean 'model'?" + SEE),
    "unknown_nested_key": ("mqtt:\n  tls:\n    enbled: true\n",
                           "{file}: mqtt.tls.enbled: unknown key; did you mean 'mqtt.tls.enabled'?" + SEE),
    "unknown_key_lists_known": (
        "mqtt:\n  xyzzy: 1\n",
        "{file}: mqtt.xyzzy: unknown key (known keys: enabled, host, port, protocol, topic_prefix, qos, "
        "client_id, username, password, password_file, keepalive_s, reconnect_min_s, reconnect_max_s, "
        "reconnect_jitter, outbox_max, outbox_path, outbox_sync_s, outbox_max_mb, inflight_max, flush_timeout_s, "
        "tls)" + SEE),
    "wrong_type": ("mqtt:\n  port: abc\n", "{file}: mqtt.port: must be a valid integer, got 'abc'" + SEE),
    "port_above_range": ("mqtt:\n  port: 70000\n",
                         "{file}: mqtt.port: must be less than or equal to 65535, got 70000" + SEE),
    "port_zero": ("mqtt:\n  port: 0\n", "{file}: mqtt.port: must be greater than or equal to 1, got 0" + SEE),
    "negative_fps": ("source:\n  fps: -1\n",
                     "{file}: source.fps: must be greater than or equal to 0, got -1" + SEE),
    "zero_timeout": ("source:\n  timeout_s: 0\n",
                     "{file}: source.timeout_s: must be greater than 0, got 0" + SEE),
    "bad_choice": ("source:\n  type: webcam\n",
                   "{file}: source.type: must be 'auto', 'picamera2', 'opencv', 'images' or 'synthetic', "
                   "got 'webcam'" + SEE),
    "bad_qos": ("mqtt:\n  qos: 3\n", "{file}: mqtt.qos: must be 0, 1 or 2, got 3" + SEE),
    "union_names_every_form": ("model:\n  num_threads: many\n",
                               "{file}: model.num_threads: must be 'auto' or a valid integer, got 'many'"
                               + SEE),
    "threads_zero": ("model:\n  num_threads: 0\n",
                     "{file}: model.num_threads: must be 'auto' or an integer >= 1, got 0" + SEE),
    "section_not_mapping": ("model: [1, 2]\n",
                            "{file}: model: must be a section (a mapping of keys), got [1, 2]" + SEE),
    "bad_bool": ("source:\n  loop: maybe\n",
                 "{file}: source.loop: must be a valid boolean, got 'maybe'" + SEE),
    "std_not_positive": ("model:\n  preprocess:\n    std: [1, -1, 1]\n",
                         "{file}: model.preprocess.std: must be > 0, got [1, -1, 1]" + SEE),
    "edgetpu_device_form": ("model:\n  edgetpu_device: usb0\n",
                            "{file}: model.edgetpu_device: must be one of usb, usb:N, pci, pci:N or :N, "
                            "got 'usb0'" + SEE),
    "score_above_1": ("publish:\n  min_score: 1.5\n",
                      "{file}: publish.min_score: must be less than or equal to 1, got 1.5" + SEE),
    "top_k_zero": ("model:\n  top_k: 0\n",
                   "{file}: model.top_k: must be greater than or equal to 1, got 0" + SEE),
    "log_level": ("logging:\n  level: verbose\n",
                  "{file}: logging.level: must be 'debug', 'info', 'warning' or 'error', got 'verbose'"
                  + SEE),
    "keepalive_too_low": ("mqtt:\n  keepalive_s: 1\n",
                          "{file}: mqtt.keepalive_s: must be greater than or equal to 5, got 1" + SEE),
    "mqtt_protocol": ("mqtt:\n  protocol: 4\n", "{file}: mqtt.protocol: must be '3.1.1' or '5', got 4" + SEE),
    "yaml_unclosed_list": ("model:\n  top_k: 3\n  labels: [a, b\n",
                           "{file}:4:1: YAML syntax error: expected ',' or ']', but got '<stream end>'"
                           + YAML_FIX),
    "yaml_tab_indent": ("model:\n\ttop_k: 3\n",
                        "{file}:2:1: YAML syntax error: found character '\\t' that cannot start any token"
                        + YAML_FIX),
    "yaml_duplicate_key": ("model:\n  top_k: 3\n  top_k: 5\n",
                           "{file}:3:3: YAML syntax error: duplicate key 'top_k'" + YAML_FIX),
    "top_level_list": ("- model\n- source\n",
                       "{file}: the top level must be a mapping of sections (model:, source:, ...)"),
    "unset_variable": ("mqtt:\n  host: ${EDGEDET_TEST_UNSET_HOST}\n",
                       "{file}: mqtt.host: environment variable ${EDGEDET_TEST_UNSET_HOST} is not set; "
                       "export EDGEDET_TEST_UNSET_HOST=... or write ${EDGEDET_TEST_UNSET_HOST:-default}"),
    "variable_of_wrong_type": ("mqtt:\n  port: ${EDGEDET_TEST_PORT}\n",
                               "{file}: mqtt.port: must be a valid integer, got 'eighty'" + SEE),
    "missing_model_file": ("model:\n  path: models/nope.tflite\n",
                           "{file}: model.path: file not found: {dir}/models/nope.tflite" + MODEL_FIX),
    "model_is_a_directory": ("model:\n  path: sub\n", "{file}: model.path: is a directory, not a file: {dir}/sub"
                             + MODEL_FIX),
    "missing_labels": ("model:\n  labels: /nonexistent/labels.txt\n",
                       "{file}: model.labels: file not found: /nonexistent/labels.txt" + MODEL_FIX),
    "tls_ca_missing": ("mqtt:\n  tls:\n    enabled: true\n    ca_file: ca.pem\n",
                       "{file}: mqtt.tls.ca_file: file not found: {dir}/ca.pem; check the path"),
    "password_and_file": ("mqtt:\n  password: a\n  password_file: secret\n",
                          "{file}: mqtt: password and password_file are both set; keep only one of them" + SEE),
    "tls_key_without_cert": ("mqtt:\n  tls:\n    enabled: true\n    key_file: client.key\n",
                             "{file}: mqtt.tls: cert_file and key_file must be set together (a client "
                             "certificate) or neither" + SEE),
    "password_file_missing": ("mqtt:\n  password_file: secret\n",
                              "{file}: mqtt.password_file: file not found: {dir}/secret; check the path"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_one_exact_line(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, expected = BAD_CONFIGS[name]
    monkeypatch.delenv("EDGEDET_TEST_UNSET_HOST", raising=False)
    monkeypatch.setenv("EDGEDET_TEST_PORT", "eighty")
    (tmp_path / "sub").mkdir()
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message == expected.replace("{file}", str(path)).replace("{dir}", str(tmp_path))
    assert "\n" not in message


def test_at_least_twenty_bad_configs() -> None:
    assert len(BAD_CONFIGS) >= 20


# --- files that cannot be read as a config, made real even when the tests run as root ---

def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match=r"^.*absent\.yaml: config file not found; check the path or pass "
                                          r"--config$"):
        load_config(path)


def test_config_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a config file; pass the YAML file"


def test_config_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        load_config(fifo)
    assert str(info.value) == (f"{fifo}: is not a regular file (a pipe, socket or device); "
                               "pass a regular YAML file")


def test_config_is_a_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "config.yaml"
    link.symlink_to(tmp_path / "deleted.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(link)
    assert str(info.value) == (f"{link}: is a broken symbolic link (points to {tmp_path / 'deleted.yaml'}); "
                               "point it at an existing config file or pass --config")


def test_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"model:\n  top_k: \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: is not UTF-8 text; save the file as UTF-8 YAML"


def _run_as_nobody(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Root reads anything, so the child drops to 'nobody' (65534) to get a real EACCES. It imports edgedet and
    loads a config once as root first, then drops: the checkout and its venv may be private (a 0700 home
    folder), and nothing after the drop may need to read them."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=60)


_LOAD_AND_PRINT = ("import os, sys, tempfile\nfrom edgedet.config import load_config\n"
                   "from edgedet.errors import ConfigError\n"
                   "with tempfile.NamedTemporaryFile('w', suffix='.yaml') as warm:\n"
                   "    warm.write('model:\\n  top_k: 2\\n'); warm.flush(); load_config(warm.name)\n"
                   "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
                   "try:\n    load_config(sys.argv[1])\nexcept ConfigError as e:\n    print(e)\n")
DENIED = "cannot read the config file (permission denied); make it readable by the service user"


def test_config_file_unreadable_for_service_user() -> None:
    folder = Path(tempfile.mkdtemp(prefix="edgedet-perm-"))
    try:
        folder.chmod(0o755)
        path = folder / "config.yaml"
        path.write_text("model:\n  top_k: 3\n")
        path.chmod(0o600)  # owned by root: unreadable for nobody
        result = _run_as_nobody(_LOAD_AND_PRINT, str(path))
        assert result.stdout.strip() == f"{path}: {DENIED}", result.stderr
    finally:
        shutil.rmtree(folder)


def test_config_in_folder_the_service_user_cannot_enter() -> None:
    folder = Path(tempfile.mkdtemp(prefix="edgedet-perm-"))  # mode 0700, owned by root
    try:
        path = folder / "config.yaml"
        path.write_text("model:\n  top_k: 3\n")
        result = _run_as_nobody(_LOAD_AND_PRINT, str(path))
        assert result.stdout.strip() == f"{path}: {DENIED}", result.stderr
    finally:
        shutil.rmtree(folder)


def test_unknown_override_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.topk=5"], search=False)
    assert str(info.value) == "--set: model.topk: unknown key; did you mean 'model.top_k'?" + SEE


def test_override_without_equals() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.top_k"], search=False)
    assert str(info.value) == "--set 'model.top_k': expected section.key=value; e.g. --set model.top_k=5"


def test_env_config_pointing_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEDET_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(ConfigError, match=r"gone\.yaml: config file not found"):
        load_config(None)


def test_binary_sensor_for_a_class_the_model_lacks_stops_the_start(tmp_path: Path) -> None:
    """Only the model knows its labels: checked at start, one line and exit 2 like every config error."""
    from helpers import assert_one_line_error, run_cli

    config = tmp_path / "config.yaml"
    config.write_text(f"model: {{path: {REPO / 'models' / 'pikachu_mobilenet_v2_0.35_96_int8.tflite'}}}\n"
                      "source: {type: synthetic}\npublish: {console: false}\n"
                      "mqtt: {enabled: true, host: 127.0.0.1, port: 9}\n"
                      "homeassistant: {enabled: true, binary_sensors: {pikachoo: 0.5}}\n")
    assert_one_line_error(run_cli("run", "--config", str(config), "--max-frames", "1",
                                  env={"PYTHONPATH": str(REPO)}),
                          "homeassistant.binary_sensors: 'pikachoo' is not a label of the model",
                          "use one of 'no-pikachu', 'pikachu'")
