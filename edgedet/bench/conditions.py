"""Machine conditions that move latency, as the bench report records them (read by edgedet.machine)."""

from __future__ import annotations

from typing import Any

from edgedet.machine import cpu_governors, cpu_temperature_c, throttling

__all__ = ["conditions_snapshot", "cpu_governors", "governor_warnings"]


def conditions_snapshot() -> dict[str, Any]:
    found = throttling()
    return {"temperature_c": cpu_temperature_c(), "throttling": found._asdict() if found else None}


def governor_warnings(governors: list[str]) -> list[str]:
    if governors and governors != ["performance"]:
        return [f"CPU governor is {','.join(governors)}, not performance: latency varies "
                "with the clock (sudo cpupower frequency-set -g performance)"]
    if not governors:
        return ["CPU governor unknown (no cpufreq in /sys)"]
    return []
