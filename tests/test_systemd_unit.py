"""systemd/edgedet.service: the directives the daemon relies on, its exposure score, and `verify`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "edgedet.service"
DOC = REPO / "docs" / "systemd.md"
MAX_EXPOSURE = 2.0

EXPECTED_DEVICES = {
    "char-video4linux rw", "char-media rw", "char-dma_heap rw", "/dev/vchiq rw",
    "char-usb_device rw", "char-apex rw",
}


def directives() -> dict[str, list[str]]:
    """Key -> every value it is given (systemd keys may repeat), comments and sections skipped."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def one(key: str) -> str:
    values = directives()[key]
    assert len(values) == 1, f"{key} given {len(values)} times"
    return values[0]


def test_service_contract() -> None:
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("ExecStart") == "/opt/edgedet/venv/bin/edgedet run --config /etc/edgedet/config.yaml"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Restart") == "on-failure"
    assert int(one("WatchdogSec")) > 0
    assert int(one("StartLimitIntervalSec")) > 0 and int(one("StartLimitBurst")) > 0
    assert one("User") == "edgedet"
    assert {"video", "plugdev"} <= set(one("SupplementaryGroups").split())
    assert one("RestartPreventExitStatus") == "2"  # a config error is not fixed by restarting


def test_hardening() -> None:
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "DevicePolicy": "closed", "CapabilityBoundingSet": ""}.items():
        assert one(key) == value, key
    assert "@system-service" in directives()["SystemCallFilter"]
    assert set(directives()["DeviceAllow"]) == EXPECTED_DEVICES
    assert one("RestrictAddressFamilies").split() == ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"]
    assert re.fullmatch(r"\d+[KMG]", one("MemoryMax"))


def test_every_hole_is_documented() -> None:
    doc = DOC.read_text()
    holes = [f"DeviceAllow={d}" for d in EXPECTED_DEVICES]
    holes += [f"`{family}`" for family in one("RestrictAddressFamilies").split()]
    holes += ["SupplementaryGroups=", "MemoryDenyWriteExecute", "ProcSubset", "PrivateNetwork",
              "PrivateUsers"]
    missing = [h for h in holes if h not in doc]
    assert not missing, f"docs/systemd.md does not explain: {missing}"


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    return tool


def test_exposure_at_most_2() -> None:
    result = subprocess.run([_systemd_analyze(), "security", "--offline=true", str(UNIT)],
                            capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for edgedet\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}"


def test_verify_clean(tmp_path: Path) -> None:
    """`verify` also checks ExecStart exists; the venv is not installed here, so point it at /bin/true."""
    text = UNIT.read_text()
    assert "ExecStart=/opt/edgedet/venv/bin/edgedet " in text
    copy = tmp_path / "edgedet.service"
    copy.write_text(text.replace("ExecStart=/opt/edgedet/venv/bin/edgedet ", "ExecStart=/bin/true "))
    result = subprocess.run([_systemd_analyze(), "verify", str(copy)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_verify_flags_the_missing_binary_only(tmp_path: Path) -> None:
    """Against the real unit, the only complaint is the venv binary missing on this machine."""
    result = subprocess.run([_systemd_analyze(), "verify", str(UNIT)], capture_output=True, text=True,
                            timeout=120)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if Path("/opt/edgedet/venv/bin/edgedet").exists():
        assert complaints == []
    else:
        assert complaints == ["edgedet.service: Command /opt/edgedet/venv/bin/edgedet is not executable: "
                              "No such file or directory"]
