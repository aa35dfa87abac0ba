"""Machine conditions that move latency: the CPU frequency governor, the temperature, Pi throttling."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any


def cpu_governors() -> list[str]:
    governors = set()
    for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor"):
        try:
            governors.add(path.read_text().strip())
        except OSError:
            continue
    return sorted(governors)


def cpu_temperature_c() -> float | None:
    zones = sorted(Path("/sys/class/thermal").glob("thermal_zone*"))
    # Prefer a zone named for the CPU/SoC (the Pi's is "cpu-thermal"); else the first readable one.
    zones.sort(key=lambda z: 0 if re.search(r"cpu|soc|x86_pkg", _read(z / "type") or "") else 1)
    for zone in zones:
        raw = _read(zone / "temp")
        if raw and raw.lstrip("-").isdigit():
            return int(raw) / 1000
    return None


def pi_throttling() -> dict[str, Any] | None:
    """`vcgencmd get_throttled` on a Raspberry Pi: bit 0 under-voltage, 1 freq capped, 2 throttled, 3 soft
    temperature limit; bits 16-19 the same "has occurred since boot". None where vcgencmd is absent."""
    tool = shutil.which("vcgencmd")
    if not tool:
        return None
    try:
        text = subprocess.run([tool, "get_throttled"], capture_output=True, text=True, timeout=5).stdout
        value = int(text.strip().split("=")[1], 16)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None
    names = ("under_voltage", "frequency_capped", "throttled", "soft_temperature_limit")
    return {
        "raw": hex(value),
        "now": [n for i, n in enumerate(names) if value >> i & 1],
        "since_boot": [n for i, n in enumerate(names) if value >> (16 + i) & 1],
    }


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def conditions_snapshot() -> dict[str, Any]:
    return {"temperature_c": cpu_temperature_c(), "throttling": pi_throttling()}


def governor_warnings(governors: list[str]) -> list[str]:
    if governors and governors != ["performance"]:
        return [f"CPU governor is {','.join(governors)}, not performance: latency varies "
                "with the clock (sudo cpupower frequency-set -g performance)"]
    if not governors:
        return ["CPU governor unknown (no cpufreq in /sys)"]
    return []
