"""The shipped config.yaml, ${VAR} expansion, secrets from files, the search order and check-config."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgedet.checkconfig import MASK, check_config_command
from edgedet.config import EdgedetConfig, find_config_file, load_config
from edgedet.errors import ConfigError
from edgedet.section import field_types

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config.yaml"
EXAMPLE_MODEL = "models/pikachu_mobilenet_v2_0.35_96_int8.tflite"


def _keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        out.add(dotted)
        if isinstance(value, dict):
            out |= _keys(value, dotted + ".")
    return out


@pytest.fixture
def example_copy(tmp_path: Path) -> Path:
    """config.yaml beside a placeholder model file (the real one is built by the host script)."""
    shutil.copy(EXAMPLE, tmp_path / "config.yaml")
    (tmp_path / EXAMPLE_MODEL).parent.mkdir(parents=True)
    (tmp_path / EXAMPLE_MODEL).write_bytes(b"placeholder")
    return tmp_path / "config.yaml"


def test_example_names_every_key_with_its_default(example_copy: Path) -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    defaults = EdgedetConfig().as_dict(json=True)
    assert _keys(raw) == _keys(defaults), "config.yaml and the config classes list different keys"
    config, found = load_config(example_copy)
    assert found == example_copy
    loaded = config.as_dict(json=True)
    assert loaded["model"].pop("path") == str(example_copy.parent / EXAMPLE_MODEL)
    assert defaults["model"].pop("path") is None
    assert loaded == defaults


def test_example_comments_every_section() -> None:
    text = EXAMPLE.read_text()
    for section in field_types(EdgedetConfig):
        line = next(i for i, t in enumerate(text.splitlines()) if t.startswith(f"{section}:"))
        before = text.splitlines()[line - 1]
        assert before.startswith("#") or before == "", f"{section}: no comment or separation before it"


def test_env_expansion_keeps_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEDET_TEST_PORT", "8883")
    monkeypatch.setenv("EDGEDET_TEST_HOST", "broker.lan")
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  host: ${EDGEDET_TEST_HOST}\n  port: ${EDGEDET_TEST_PORT}\n"
                    "  topic_prefix: ${EDGEDET_TEST_NOPE:-fallback}/x\n")
    config, _ = load_config(path)
    assert config.mqtt.host == "broker.lan"
    assert config.mqtt.port == 8883  # a number again, not the string "8883"
    assert config.mqtt.topic_prefix == "fallback/x"


def test_password_file_is_read_and_never_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEDET_MQTT_PASSWORD", "from-env")  # the file comes first
    (tmp_path / "mqtt.secret").write_text("s3cret-value\n")
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  username: cam\n  password_file: mqtt.secret\n")
    config, _ = load_config(path)
    assert config.mqtt.effective_password() == "s3cret-value"
    assert config.mqtt.password is None  # never copied into the config (so never dumped with it)
    out, err = io.StringIO(), io.StringIO()
    assert check_config_command(path, out=out, err=err) == 0
    printed = out.getvalue()
    assert "s3cret-value" not in printed and "from-env" not in printed
    shown = yaml.safe_load(printed)
    assert shown["mqtt"]["password"] is None
    assert shown["mqtt"]["password_file"] == str(tmp_path / "mqtt.secret")
    assert printed.startswith(f"# effective config from {path}\n")
    assert err.getvalue() == ""


def test_inline_password_is_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEDET_TEST_PW", "from-env")
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  password: ${EDGEDET_TEST_PW}\n")
    out = io.StringIO()
    assert check_config_command(path, out=out, err=io.StringIO()) == 0
    assert "from-env" not in out.getvalue()
    assert yaml.safe_load(out.getvalue())["mqtt"]["password"] == MASK


def test_empty_password_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "mqtt.secret").write_text("\n")
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  password_file: mqtt.secret\n")
    err = io.StringIO()
    assert check_config_command(path, out=io.StringIO(), err=err) == 2
    assert err.getvalue() == (f"{path}: mqtt.password_file: {tmp_path / 'mqtt.secret'} is empty; "
                              "write the password on the file's first line\n")


def test_password_file_is_checked_with_the_other_files(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  password_file: absent.secret\n")
    with pytest.raises(ConfigError, match=r"mqtt.password_file: file not found: .*absent.secret; check the path"):
        load_config(path)
    config, _ = load_config(path, check_files=False)  # the caller promised to check later
    with pytest.raises(ConfigError, match=r"^mqtt.password_file: file not found: .*absent.secret; check"):
        config.mqtt.effective_password()


@pytest.mark.parametrize("check_files", [True, False])
def test_tls_certificate_without_key_is_one_line_on_every_load_path(tmp_path: Path, check_files: bool) -> None:
    expected = ("mqtt.tls: cert_file and key_file must be set together (a client certificate) or neither; "
                "see config.yaml for every key")
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  tls:\n    enabled: true\n    cert_file: client.crt\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, check_files=check_files)
    assert str(info.value) == f"{path}: {expected}"
    with pytest.raises(ConfigError) as info:
        load_config(None, ["mqtt.tls.enabled=true", "mqtt.tls.key_file=/x/client.key"], search=False,
                    check_files=check_files)
    assert str(info.value) == f"--set: {expected}"


def test_topic_prefixes_are_stored_without_a_trailing_slash(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  topic_prefix: site/edgedet/\nhomeassistant:\n  prefix: ha/\n")
    config, _ = load_config(path)
    assert (config.mqtt.topic_prefix, config.homeassistant.prefix) == ("site/edgedet", "ha")


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, from_env = tmp_path / "a.yaml", tmp_path / "b.yaml"
    monkeypatch.setenv("EDGEDET_CONFIG", str(from_env))
    assert find_config_file(explicit) == explicit
    assert find_config_file(None) == from_env
    monkeypatch.delenv("EDGEDET_CONFIG")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("edgedet.config.SYSTEM_CONFIG", tmp_path / "etc-config.yaml")
    assert find_config_file(None) is None
    (tmp_path / "config.yaml").write_text("{}\n")
    assert find_config_file(None) == Path("config.yaml")
    (tmp_path / "etc-config.yaml").write_text("{}\n")
    assert find_config_file(None) == tmp_path / "etc-config.yaml"


def test_overrides_apply_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  top_k: 3\n")
    config, _ = load_config(path, ["model.top_k=7", "mqtt.port=1884"])
    assert (config.model.top_k, config.mqtt.port) == (7, 1884)


def test_check_config_exit_2_one_line_no_traceback(tmp_path: Path) -> None:
    """The process-level contract: one line on stderr, exit code 2, nothing on stdout."""
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  port: 99999\n")
    code = "import sys\nfrom edgedet.checkconfig import check_config_command\n" \
           "raise SystemExit(check_config_command(sys.argv[1]))\n"
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (f"{path}: mqtt.port: must be less than or equal to 65535, got 99999; "
                             "see config.yaml for every key\n")


def test_cli_check_config(tmp_path: Path) -> None:
    """`edgedet check-config FILE` once the lead's CLI wires it (skips until then)."""
    cli = REPO / "edgedet" / "cli.py"
    if not cli.is_file():
        pytest.skip("edgedet/cli.py not in this branch yet")
    if "check-config" not in cli.read_text():
        pytest.skip("edgedet/cli.py has no check-config subcommand yet")
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("mqtt:\n  password: hunter2\n")
    bad.write_text("modle: {}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "edgedet", "check-config", str(good)], capture_output=True,
                        text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "hunter2" not in ok.stdout and MASK in ok.stdout
    failed = subprocess.run([sys.executable, "-m", "edgedet", "check-config", str(bad)], capture_output=True,
                            text=True, env=env, timeout=120)
    assert failed.returncode == 2
    assert failed.stderr.strip().endswith(
        "modle: unknown key; did you mean 'model'?; see config.yaml for every key")
    assert "Traceback" not in failed.stderr
