"""Board, OS, Python, CPU governor, temperature and throttling, free disk where the config writes."""

from __future__ import annotations

import os
import platform as std_platform
import shutil
import sys
from pathlib import Path

from edgedet import machine
from edgedet.doctor import Context, Item

G = "platform"
# Below this free space a writer fails within minutes; below the warning level it will soon.
DISK_FAIL_BYTES = 1 << 20
DISK_WARN_BYTES = 50 << 20


def board() -> str:
    model = machine.read_value(Path("/proc/device-tree/model"))
    if model:
        return model
    vendor, product = (machine.read_value(Path(f"/sys/class/dmi/id/{name}"))
                       for name in ("sys_vendor", "product_name"))
    return " ".join(p for p in (vendor, product) if p) or "unknown (no device-tree model, no DMI)"


def os_release() -> str:
    text = machine.read_value(Path("/etc/os-release")) or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip('"')
    return f"{std_platform.system()} {std_platform.release()}"


def _throttled() -> Item:
    found = machine.throttling()
    if found is None:
        return Item(G, "throttling", "skip", "no vcgencmd and no readable firmware get_throttled (not a Raspberry Pi)")
    if not found.now and not found.since_boot:
        return Item(G, "throttling", "ok", f"get_throttled={found.raw}")
    flags = [f"{n.replace('_', ' ')} now" for n in found.now] + \
        [f"{n.replace('_', ' ')} has occurred" for n in found.since_boot]
    return Item(G, "throttling", "warn", f"get_throttled={found.raw}: " + ", ".join(flags),
                "use the official power supply and a heatsink or fan; throttling slows inference")


def _temperature() -> Item:
    celsius = machine.cpu_temperature_c()
    if celsius is None:
        return Item(G, "temperature", "skip", "no thermal zone")
    if celsius >= 80:
        return Item(G, "temperature", "warn", f"{celsius:.1f} °C", "improve cooling: the SoC throttles at 80-85 °C")
    return Item(G, "temperature", "ok", f"{celsius:.1f} °C")


def _governor() -> Item:
    governors = machine.cpu_governors()
    if not governors:
        return Item(G, "cpu governor", "skip", "no cpufreq scaling_governor (virtual machine or container)")
    text = ",".join(governors)
    if "powersave" in governors:
        return Item(G, "cpu governor", "warn", text, "echo ondemand (or performance) | sudo tee "
                    "/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor")
    return Item(G, "cpu governor", "ok", text)


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
