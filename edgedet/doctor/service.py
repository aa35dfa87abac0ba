"""The systemd unit (installed, enabled, active, last exit, watchdog), a running ``edgedet run``, and the
permissions of the config and password files."""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Optional

from edgedet.doctor import Context, Item

G = "service"
UNIT = "edgedet.service"
PROPS = ("LoadState", "UnitFileState", "ActiveState", "SubState", "ExecMainStatus", "ExecMainCode",
         "WatchdogUSec", "User", "FragmentPath", "NRestarts")


@functools.lru_cache(maxsize=1)
def unit_properties() -> dict[str, str]:
    """``systemctl show edgedet.service``; empty when systemctl is missing or systemd is not running."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():
        return {}
    try:
        out = subprocess.run([systemctl, "show", UNIT, "-p", ",".join(PROPS)], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)


def _config_of(pid: str, args: list[str]) -> Optional[Path]:
    """The --config a process was given, resolved against its working directory (None: not given)."""
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--config" and i + 1 < len(args) else \
            arg.partition("=")[2] if arg.startswith("--config=") else None
        if value:
            try:
                return (Path(os.readlink(f"/proc/{pid}/cwd")) / value).resolve()
            except OSError:
                return Path(value).resolve()
    return None


def running_services(config_path: Optional[Path] = None, own_pid: Optional[int] = None) -> list[str]:
    """How a running daemon of this config shows: ``edgedet run`` processes in /proc given this config (or
    none, so the default search), with their pids; else the unit active. Another config's daemon is not ours."""
    own = {own_pid or os.getpid(), os.getppid()}
    mine = config_path.resolve() if config_path is not None else None
    seen = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            args = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        names = [Path(a).name for a in args]
        edgedet = next((i for i, a in enumerate(names) if a == "edgedet" or a.startswith("edgedet.")
                        or (a == "-m" and i + 1 < len(names) and names[i + 1] == "edgedet")), None)
        if edgedet is None or "run" not in names[edgedet + 1:]:
            continue
        given = _config_of(entry.name, args)
        if given is None or mine is None or given == mine:
            seen.append(f"pid {entry.name}: {' '.join(args)[:80]}")
    if unit_properties().get("ActiveState") == "active" and not seen:
        seen.append(f"{UNIT} is active")
    return seen


def _mode_item(name: str, path: Path, secret: bool) -> Item:
    try:
        st = path.stat()
    except OSError as exc:
        return Item(G, name, "fail", f"{path}: {exc.strerror}", f"create {path} or fix the path")
    mode = stat.S_IMODE(st.st_mode)
    fact = f"{path} mode {mode:03o}"
    if mode & 0o002:
        return Item(G, name, "fail", fact + " (writable by everyone)", f"chmod o-w {path}")
    if secret and mode & 0o004:
        return Item(G, name, "fail", fact + " (readable by everyone)", f"chmod 600 {path} (or 640 root:edgedet)")
    if secret and mode & 0o040:
        return Item(G, name, "warn", fact + " (readable by its group)", f"chmod 600 {path} unless the group "
                    "is the service's own")
    return Item(G, name, "ok", fact)


def check(ctx: Context) -> list[Item]:
    items = []
    props = unit_properties()
    if not props:
        why = "no systemctl" if shutil.which("systemctl") is None else "systemd is not running here"
        items.append(Item(G, "unit", "skip", why))
    elif props.get("LoadState") != "loaded":
        items.append(Item(G, "unit", "warn", f"{UNIT} {props.get('LoadState', 'not-found')}",
                          "sudo scripts/install.sh (installs and enables the unit)"))
    else:
        enabled = props.get("UnitFileState", "")
        items.append(Item(G, "unit", "ok" if enabled == "enabled" else "warn",
                          f"{props.get('FragmentPath')} {enabled}",
                          "" if enabled == "enabled" else f"sudo systemctl enable {UNIT}"))
        active = props.get("ActiveState", "")
        exit_status = f"last exit {props.get('ExecMainCode', '?')}/{props.get('ExecMainStatus', '?')}, " \
                      f"{props.get('NRestarts', '?')} restarts"
        items.append(Item(G, "active", "ok" if active == "active" else "warn",
                          f"{active}/{props.get('SubState', '')}; {exit_status}",
                          "" if active == "active" else f"journalctl -u {UNIT} -n 50; sudo systemctl start {UNIT}"))
        watchdog = props.get("WatchdogUSec", "0")
        items.append(Item(G, "watchdog", "ok" if watchdog not in ("0", "infinity", "") else "warn",
                          f"WatchdogSec={watchdog}", "" if watchdog not in ("0", "infinity", "") else
                          "keep WatchdogSec= in the unit (systemd/edgedet.service)"))
    items.append(Item(G, "running", "ok", "; ".join(ctx.service) if ctx.service else "no edgedet run process"))
    if ctx.config_path is not None:
        items.append(_mode_item("config file", ctx.config_path, secret=ctx.config.mqtt.password is not None))
    else:
        items.append(Item(G, "config file", "skip", "no config file: embedded defaults"))
    if ctx.config.mqtt.password_file is not None:
        items.append(_mode_item("password file", ctx.config.mqtt.password_file, secret=True))
    return items
