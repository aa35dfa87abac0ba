"""``edgedet doctor [--config F] [--set k=v] [--json]``: run every check group, print one screen (or JSON).
Exit 0 when nothing fails, 1 when something does."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from edgedet import __version__
from edgedet.doctor import Context, Item

SYMBOL = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="config file (as for run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--json", action="store_true", help="a machine-readable report (docs/schemas/doctor.json)")
    p.set_defaults(handler=main)


def groups() -> list[tuple[str, Callable[[Context], list[Item]]]]:
    from edgedet.doctor import camera, edgetpu, model, mqtt, platform, runtimes, service

    return [("platform", platform.check), ("runtimes", runtimes.check), ("model", model.check),
            ("edgetpu", edgetpu.check), ("camera", camera.check), ("mqtt", mqtt.check),
            ("service", service.check)]


def run_checks(ctx: Context) -> list[Item]:
    items: list[Item] = []
    for name, check in groups():
        try:
            items += check(ctx)
        except Exception as exc:  # one broken check must not hide the others' results
            items.append(Item(name, "check", "fail", f"the check itself failed: {type(exc).__name__}: {exc}",
                              "report this as an edgedet bug, with this output"))
    return items


def _secrets(ctx: Context) -> list[str]:
    cfg = ctx.config.mqtt
    found = [cfg.password or "", os.environ.get("EDGEDET_MQTT_PASSWORD", "")]
    with contextlib.suppress(Exception):  # an unreadable password file is reported by the mqtt checks
        found.append(cfg.effective_password() or "")
    return [s for s in found if len(s) >= 3]


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def report(ctx: Context, items: list[Item], seconds: float) -> dict[str, Any]:
    secrets = _secrets(ctx)
    counts = {s: sum(1 for i in items if i.status == s) for s in ("ok", "warn", "fail", "skip")}
    return {"edgedet": __version__, "config": str(ctx.config_path) if ctx.config_path else None,
            "device_id": ctx.config.resolved_device_id(), "service_running": ctx.service_running,
            "seconds": round(seconds, 3), "counts": counts, "ok": counts["fail"] == 0,
            "items": [{k: _mask(v, secrets) for k, v in i.as_dict().items()} for i in items]}


def text_report(data: dict[str, Any]) -> str:
    lines = [f"edgedet {data['edgedet']} doctor · config {data['config'] or 'embedded defaults'} · device "
             f"{data['device_id']}"]
    group = None
    for item in data["items"]:
        if item["group"] != group:
            group = item["group"]
            lines.append(f"{group}:")
        lines.append(f"  {SYMBOL[item['status']]} {item['name']}: {item['fact']}")
        if item["fix"] and item["status"] in ("fail", "warn"):
            lines.append(f"       fix: {item['fix']}")
    c = data["counts"]
    lines.append(f"{c['ok']} ok, {c['warn']} warn, {c['fail']} fail, {c['skip']} skip in {data['seconds']:.2f} s")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from edgedet.config import load_config
    from edgedet.doctor.service import running_services

    started = time.monotonic()
    # A missing model or camera is what doctor reports, not a reason to refuse the config.
    config, found = load_config(args.config, args.overrides, check_files=False)
    logging.getLogger("edgedet").setLevel(logging.ERROR)  # the checks' own log lines would clutter the screen
    ctx = Context(config, found, running_services(found))
    items = run_checks(ctx)
    data = report(ctx, items, time.monotonic() - started)
    print(json.dumps(data, indent=2) if args.json else text_report(data), flush=True)
    return 0 if data["ok"] else 1
