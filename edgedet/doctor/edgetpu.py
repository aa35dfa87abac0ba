"""The Coral Edge TPU: USB ids or /dev/apex_*, device node permissions for the service user, libedgetpu
(loadable, the delegate symbols, its dpkg version), the delegate loading and one invoke (in a subprocess)."""

from __future__ import annotations

import ctypes
import functools
import grp
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from edgedet.doctor import Context, Item

G = "edgetpu"
CORAL_USB_IDS = {("1a6e", "089a"): "Coral USB (not yet initialised)", ("18d1", "9302"): "Coral USB"}
INVOKE_TIMEOUT_S = 20.0


def library_name(ctx: Context) -> str:
    from edgedet.model.runtime import edgetpu_library

    return ctx.environ.get("EDGEDET_EDGETPU_LIBRARY", edgetpu_library())


@functools.lru_cache(maxsize=8)
def _library_problem(library: str) -> Optional[str]:
    from edgedet.model.runtime import DELEGATE_SYMBOLS

    try:
        handle = ctypes.CDLL(library)
    except OSError as exc:
        return f"libedgetpu {library} does not load ({exc})"
    missing = [s for s in DELEGATE_SYMBOLS if not hasattr(handle, s)]
    if missing:
        return f"{library} is not a TFLite delegate library (no symbol {missing[0]})"
    return None


def libedgetpu_problem(ctx: Context) -> Optional[str]:
    """None when the Edge TPU library loads and has the delegate entry points, else why not."""
    return _library_problem(library_name(ctx))


def usb_devices(root: Path = Path("/sys/bus/usb/devices")) -> list[tuple[str, str, str]]:
    found = []
    for dev in sorted(root.glob("*")):
        try:
            ids = ((dev / "idVendor").read_text().strip(), (dev / "idProduct").read_text().strip())
        except OSError:
            continue
        if ids in CORAL_USB_IDS:
            found.append((dev.name, f"{ids[0]}:{ids[1]}", CORAL_USB_IDS[ids]))
    return found


def _usb_node(sysfs_name: str) -> Optional[Path]:
    try:
        base = Path("/sys/bus/usb/devices") / sysfs_name
        bus, num = int((base / "busnum").read_text()), int((base / "devnum").read_text())
    except (OSError, ValueError):
        return None
    return Path(f"/dev/bus/usb/{bus:03d}/{num:03d}")


def service_user(ctx: Context) -> str:
    from edgedet.doctor.service import unit_properties

    user = unit_properties().get("User") or ""
    return user or pwd.getpwuid(os.getuid()).pw_name


def can_read_write(node: Path, user: str) -> tuple[bool, str]:
    st = node.stat()
    owner = _name(pwd.getpwuid, st.st_uid)
    group = _name(grp.getgrgid, st.st_gid)
    fact = f"{node} {stat.filemode(st.st_mode)} {owner}:{group}"
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return False, fact + f" (user {user} unknown)"
    groups = {g.gr_gid for g in grp.getgrall() if user in g.gr_mem} | {entry.pw_gid}
    mode = st.st_mode
    ok = entry.pw_uid == 0 or (entry.pw_uid == st.st_uid and mode & 0o600 == 0o600) or \
        (st.st_gid in groups and mode & 0o060 == 0o060) or mode & 0o006 == 0o006
    return ok, fact


def _name(lookup: Callable[[int], Any], ident: int) -> str:
    """The user or group name of ``ident`` (``pwd.getpwuid`` / ``grp.getgrgid``), else the number."""
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return str(ident)


INVOKE = r"""
import sys, numpy
from edgedet.model.runtime import select_runtime, load_edgetpu_delegate, make_interpreter
rt = select_runtime(sys.argv[1], "edgetpu")
d = load_edgetpu_delegate(rt, sys.argv[2])
print("delegate loaded", flush=True)
if sys.argv[3]:
    it = make_interpreter(sys.argv[3], rt, delegates=[d])
    i = it.get_input_details()[0]
    it.set_tensor(i["index"], numpy.zeros(i["shape"], i["dtype"]))
    it.invoke()
    print("invoked", flush=True)
"""


def check(ctx: Context) -> list[Item]:
    from edgedet.model.runtime import installed_libedgetpu

    entries = ctx.config.classifiers()
    # The delegate is tried with the first classifier that asks for the Edge TPU (else the first one).
    cfg = next((entry for entry in entries if entry.delegate == "edgetpu"), entries[0])
    wanted = cfg.delegate == "edgetpu"
    usb = usb_devices()
    apex = sorted(Path("/dev").glob("apex_*"))
    present = bool(usb or apex)
    items: list[Item] = []
    if present:
        names = [f"{ids} {what} at {name}" for name, ids, what in usb] + [str(p) for p in apex]
        items.append(Item(G, "device", "ok", "; ".join(names)))
    elif wanted:
        items.append(Item(G, "device", "fail", "no Coral: no USB 1a6e:089a / 18d1:9302, no /dev/apex_*",
                          "plug the Coral in (a USB 3 port, its own cable), or for PCIe install gasket-dkms; "
                          "or set model.delegate: cpu"))
    else:
        items.append(Item(G, "device", "skip", "model.delegate is cpu and no Coral is present"))
    user = service_user(ctx)
    nodes = [n for n in (_usb_node(name) for name, _, _ in usb) if n is not None and n.exists()] + apex
    for node in nodes:
        ok, fact = can_read_write(node, user)
        items.append(Item(G, f"permissions {node.name}", "ok" if ok else "fail", f"{fact}; service user {user}",
                          "" if ok else f"install the Coral udev rules (60-edgetpu.rules) and add {user} to "
                          "the plugdev (USB) or apex (PCIe) group"))
    package = installed_libedgetpu()
    version = package.describe() if package else "no libedgetpu1-std/-max dpkg package"
    library = library_name(ctx)
    if not wanted and not present:
        items.append(Item(G, "libedgetpu", "skip", f"not needed (delegate cpu); {version}"))
        return items
    problem = libedgetpu_problem(ctx)
    if problem is not None:
        fix = "point EDGEDET_EDGETPU_LIBRARY at libedgetpu.so.1, or reinstall libedgetpu1-std" \
            if "not a TFLite delegate" in problem else \
            "install libedgetpu1-std (docs/troubleshooting.md: the Coral apt repository, or a maintained build)"
        items.append(Item(G, "libedgetpu", "fail", f"{problem}; {version}", fix))
        items.append(Item(G, "delegate", "skip", "libedgetpu does not load"))
        return items
    items.append(Item(G, "libedgetpu", "ok", f"{library} loads, delegate symbols present; {version}"))
    if ctx.service_running and wanted:
        items.append(Item(G, "delegate", "skip", "the service is running and holds the Edge TPU "
                          f"({ctx.service[0]}); stop it to test the delegate"))
        return items
    if not present:
        items.append(Item(G, "delegate", "skip", "no Coral present to load the delegate on"))
        return items
    model = cfg.path if cfg.path and cfg.path.stem.endswith("_edgetpu") and cfg.path.is_file() else None
    try:
        proc = subprocess.run([sys.executable, "-c", INVOKE, cfg.runtime, cfg.edgetpu_device, str(model or "")],
                              capture_output=True, text=True, timeout=INVOKE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        items.append(Item(G, "delegate", "fail", f"no answer within {INVOKE_TIMEOUT_S:.0f} s",
                          "replug the Coral; check dmesg for USB resets"))
        return items
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode != 0:
        items.append(Item(G, "delegate", "fail", (lines[-1] if lines else f"exit {proc.returncode}")[:300],
                          "see docs/troubleshooting.md (Edge TPU)"))
    else:
        done = "one invoke of " + str(model) if "invoked" in proc.stdout else "loaded (no _edgetpu model.path)"
        items.append(Item(G, "delegate", "ok", f"device {cfg.edgetpu_device}: {done}"))
    return items
