"""Board, OS, Python, CPU governor, temperature and throttling, free disk where the config writes."""

from __future__ import annotations

import os
import platform as std_platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from edgedet.doctor import Context, Item

G = "platform"
# Below this free space a writer fails within minutes; below the warning level it will soon.
DISK_FAIL_BYTES = 1 << 20
DISK_WARN_BYTES = 50 << 20
THROTTLE_BITS = {0: "under-voltage now", 1: "ARM frequency capped now", 2: "throttled now",
                 3: "soft temperature limit now", 16: "under-voltage has occurred",
                 17: "frequency capping has occurred", 18: "throttling has occurred",
                 19: "soft temperature limit has occurred"}


def _read(path: str) -> Optional[str]:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def board() -> str:
    model = _read("/proc/device-tree/model")
    if model:
        return model
    vendor, product = _read("/sys/class/dmi/id/sys_vendor"), _read("/sys/class/dmi/id/product_name")
    return " ".join(p for p in (vendor, product) if p) or "unknown (no device-tree model, no DMI)"


def os_release() -> str:
    text = _read("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip('"')
    return f"{std_platform.system()} {std_platform.release()}"


def _throttled() -> Item:
    vcgencmd = shutil.which("vcgencmd")
    raw: Optional[str] = None
    if vcgencmd:
        try:
            out = subprocess.run([vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=3).stdout
            raw = out.strip().partition("=")[2] or None
        except (OSError, subprocess.SubprocessError):
            raw = None
    if raw is None:
        raw = _read("/sys/devices/platform/soc/soc:firmware/get_throttled")
        if raw is not None and not raw.startswith("0x"):
            raw = hex(int(raw)) if raw.isdigit() else None
    if raw is None:
        return Item(G, "throttling", "skip", "no vcgencmd and no firmware get_throttled (not a Raspberry Pi)")
    try:
        value = int(raw, 16)
    except ValueError:
        return Item(G, "throttling", "skip", f"unreadable get_throttled value {raw!r}")
    flags = [text for bit, text in THROTTLE_BITS.items() if value & (1 << bit)]
    if not flags:
        return Item(G, "throttling", "ok", "get_throttled=0x0")
    return Item(G, "throttling", "warn", f"get_throttled={raw}: " + ", ".join(flags),
                "use the official power supply and a heatsink or fan; throttling slows inference")


def _temperature() -> Item:
    raw = _read("/sys/class/thermal/thermal_zone0/temp")
    if raw is None or not raw.lstrip("-").isdigit():
        return Item(G, "temperature", "skip", "no thermal zone 0")
    celsius = int(raw) / 1000
    if celsius >= 80:
        return Item(G, "temperature", "warn", f"{celsius:.1f} °C", "improve cooling: the SoC throttles at 80-85 °C")
    return Item(G, "temperature", "ok", f"{celsius:.1f} °C")


def _governor() -> Item:
    gov = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if gov is None:
        return Item(G, "cpu governor", "skip", "no cpufreq scaling_governor (virtual machine or container)")
    if gov == "powersave":
        return Item(G, "cpu governor", "warn", gov, "echo ondemand (or performance) | sudo tee "
                    "/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor")
    return Item(G, "cpu governor", "ok", gov)


def write_paths(ctx: Context) -> list[tuple[str, Path]]:
    cfg = ctx.config
    out = []
    if cfg.publish.jsonl_path is not None:
        out.append(("publish.jsonl_path", cfg.publish.jsonl_path))
    if cfg.mqtt.enabled and cfg.mqtt.outbox_path is not None:
        out.append(("mqtt.outbox_path", cfg.mqtt.outbox_path))
    if cfg.publish.save_uncertain is not None:
        out.append(("publish.save_uncertain.dir", cfg.publish.save_uncertain.dir / "x"))
    return out


def _existing_parent(path: Path) -> Path:
    folder = path.parent.resolve() if not path.is_dir() else path.resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def disk(key: str, path: Path) -> Item:
    folder = _existing_parent(path)
    try:
        usage = shutil.disk_usage(folder)
    except OSError as exc:
        return Item(G, f"disk {key}", "fail", f"{path}: cannot stat {folder} ({exc.strerror})",
                    f"create {folder} or point {key} elsewhere")
    fact = f"{path}: {_mib(usage.free)} free of {_mib(usage.total)} on {folder}"
    if not os.access(folder, os.W_OK):
        return Item(G, f"disk {key}", "fail", fact + " (not writable)", f"make {folder} writable by the "
                    "service user or point " + key + " elsewhere")
    if usage.free < DISK_FAIL_BYTES:
        return Item(G, f"disk {key}", "fail", fact, f"free space on {folder} or point {key} at a larger disk")
    if usage.free < DISK_WARN_BYTES:
        return Item(G, f"disk {key}", "warn", fact, f"free space on {folder}: writes will fail soon")
    return Item(G, f"disk {key}", "ok", fact)


def check(ctx: Context) -> list[Item]:
    items = [Item(G, "board", "ok", board()), Item(G, "os", "ok", os_release()),
             Item(G, "python", "ok", f"{std_platform.python_version()} ({sys.executable})"),
             Item(G, "architecture", "ok", std_platform.machine()),
             _governor(), _temperature(), _throttled()]
    items += [disk(key, path) for key, path in write_paths(ctx)]
    return items
