"""What the machine says of itself, read in one place: the SoC temperature, the CPU frequency governors and
the Raspberry Pi firmware's throttling flags. Used by the ``stats`` message, ``edgedet doctor`` and
``edgedet bench``; every reader returns None (or nothing) where the board does not tell."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import NamedTuple, Optional

THERMAL = Path("/sys/class/thermal")
CPUS = Path("/sys/devices/system/cpu")
FIRMWARE_THROTTLED = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
# get_throttled's bits 0-3 (now); the same bits + 16 say "has occurred since boot".
THROTTLE_BITS = ("under_voltage", "frequency_capped", "throttled", "soft_temperature_limit")


def read_value(path: Path) -> Optional[str]:
    """A sysfs/procfs value as text (NULs and the newline stripped), None where it cannot be read."""
    try:
        return path.read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def cpu_temperature_c(thermal: Optional[Path] = None) -> Optional[float]:
    """The SoC's temperature in °C (0.1 °C): the zone whose type names the CPU or SoC (the Pi's is
    "cpu-thermal"), else the first readable one; None without a thermal zone."""
    zones = sorted((thermal or THERMAL).glob("thermal_zone*"))
    zones.sort(key=lambda z: 0 if re.search(r"cpu|soc|x86_pkg", read_value(z / "type") or "") else 1)
    for zone in zones:
        raw = read_value(zone / "temp")
        if raw and raw.lstrip("-").isdigit():
            return round(int(raw) / 1000, 1)
    return None


def cpu_governors(cpus: Optional[Path] = None) -> list[str]:
    """The distinct cpufreq governors of the CPUs, sorted; empty where there is no cpufreq (VMs, containers)."""
    found = (read_value(path) for path in (cpus or CPUS).glob("cpu[0-9]*/cpufreq/scaling_governor"))
    return sorted({g for g in found if g})


class Throttling(NamedTuple):
    raw: str  # the firmware's value as 0x-prefixed hex, e.g. "0x50005", whichever source gave it
    now: list[str]
    since_boot: list[str]


def throttling(firmware: Optional[Path] = None) -> Optional[Throttling]:
    """The firmware's throttling flags: ``vcgencmd get_throttled``, else the firmware's sysfs file; None where
    neither is there (not a Raspberry Pi) or the value cannot be read."""
    raw: Optional[str] = None
    tool = shutil.which("vcgencmd")
    if tool:
        import subprocess  # here, not at the top: only a Raspberry Pi has the tool

        try:
            out = subprocess.run([tool, "get_throttled"], capture_output=True, text=True, timeout=3).stdout
            raw = out.strip().partition("=")[2] or None
        except (OSError, subprocess.SubprocessError):
            raw = None
    if raw is None:
        raw = read_value(firmware or FIRMWARE_THROTTLED)
    if raw is None:
        return None
    try:
        value = int(raw, 16)  # hex either way: vcgencmd says "0x50005", the kernel's file "50005" (its "%x")
    except ValueError:
        return None
    return Throttling(hex(value), [n for i, n in enumerate(THROTTLE_BITS) if value >> i & 1],
                      [n for i, n in enumerate(THROTTLE_BITS) if value >> (16 + i) & 1])
