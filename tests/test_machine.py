"""edgedet.machine: what the board says of itself, read from sysfs trees laid out as the kernel and the Pi
firmware lay them out (this machine has no Pi firmware and no cpufreq)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgedet import machine
from edgedet.doctor import platform


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_cpu_zone_is_preferred_over_the_first_one(tmp_path: Path) -> None:
    _write(tmp_path / "thermal_zone0" / "type", "acpitz\n")
    _write(tmp_path / "thermal_zone0" / "temp", "27800\n")
    _write(tmp_path / "thermal_zone1" / "type", "cpu-thermal\n")  # the Pi's name
    _write(tmp_path / "thermal_zone1" / "temp", "61234\n")
    assert machine.cpu_temperature_c(tmp_path) == 61.2
    (tmp_path / "thermal_zone1" / "temp").write_text("unreadable\n")
    assert machine.cpu_temperature_c(tmp_path) == 27.8
    assert machine.cpu_temperature_c(tmp_path / "absent") is None


def test_governors_are_the_distinct_ones(tmp_path: Path) -> None:
    for cpu, governor in (("cpu0", "ondemand"), ("cpu1", "performance"), ("cpu2", "ondemand")):
        _write(tmp_path / cpu / "cpufreq" / "scaling_governor", governor + "\n")
    _write(tmp_path / "cpufreq" / "policy0" / "scaling_governor", "schedutil\n")  # not a cpuN folder
    assert machine.cpu_governors(tmp_path) == ["ondemand", "performance"]
    assert machine.cpu_governors(tmp_path / "absent") == []


def _no_vcgencmd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))


def test_throttling_from_the_firmware_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_vcgencmd(monkeypatch, tmp_path)
    firmware = tmp_path / "get_throttled"
    # The kernel's raspberrypi firmware driver writes the value with sprintf("%x\n"): hex, no 0x.
    _write(firmware, "50005\n")  # under-voltage and throttled now, both since boot too
    found = machine.throttling(firmware)
    assert found == machine.Throttling("0x50005", ["under_voltage", "throttled"], ["under_voltage", "throttled"])
    firmware.write_text("0\n")
    assert machine.throttling(firmware) == machine.Throttling("0x0", [], [])
    firmware.write_text("garbage\n")
    assert machine.throttling(firmware) is None
    assert machine.throttling(tmp_path / "absent") is None


def test_throttling_from_vcgencmd_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    _write(bin_dir / "vcgencmd", '#!/bin/sh\n[ "$1" = get_throttled ] && echo "throttled=0x80008"\n')
    (bin_dir / "vcgencmd").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    _write(tmp_path / "get_throttled", "0\n")  # not read: vcgencmd answered
    found = machine.throttling(tmp_path / "get_throttled")
    assert found == machine.Throttling("0x80008", ["soft_temperature_limit"], ["soft_temperature_limit"])


def test_doctor_reports_what_the_machine_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_vcgencmd(monkeypatch, tmp_path)
    firmware = tmp_path / "get_throttled"
    _write(firmware, "50000\n")
    monkeypatch.setattr(machine, "FIRMWARE_THROTTLED", firmware)
    item = platform._throttled()
    assert item.status == "warn" and item.fact == ("get_throttled=0x50000: under voltage has occurred, "
                                                     "throttled has occurred")
    firmware.write_text("0\n")
    assert platform._throttled().status == "ok"
    monkeypatch.setattr(machine, "THERMAL", tmp_path / "thermal")
    assert platform._temperature().status == "skip"
    _write(tmp_path / "thermal" / "thermal_zone0" / "temp", "83000\n")
    assert (platform._temperature().status, platform._temperature().fact) == ("warn", "83.0 °C")
    monkeypatch.setattr(machine, "CPUS", tmp_path / "cpu")
    assert platform._governor().status == "skip"
    _write(tmp_path / "cpu" / "cpu0" / "cpufreq" / "scaling_governor", "powersave\n")
    assert (platform._governor().status, platform._governor().fact) == ("warn", "powersave")
