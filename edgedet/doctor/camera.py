"""The configured frame source exists and delivers one frame within its timeout: size, format, colour space.
Skipped while the service runs: a camera opens once, and the service holds it."""

from __future__ import annotations

from pathlib import Path

from edgedet.doctor import Context, Item

G = "camera"


def check(ctx: Context) -> list[Item]:
    from edgedet.errors import EdgedetError
    from edgedet.frames import open_source

    cfg = ctx.config.source
    if ctx.service_running:
        return [Item(G, "source", "skip", f"the service is running ({ctx.service[0]}) and holds source.type "
                     f"{cfg.type}; not opened", "stop the service to test the camera")]
    path = cfg.path
    if isinstance(path, str) and path.startswith("/") and "*" not in path and not Path(path).exists():
        return [Item(G, "source", "fail", f"source.path {path}: does not exist",
                     "fix source.path (ls /dev/video*; v4l2-ctl --list-devices), or source.type auto")]
    try:
        source = open_source(cfg)
        source.open()
        try:
            frame = source.read(cfg.timeout_s)
            described = source.describe()
        finally:
            source.close()
    except EdgedetError as exc:
        return [Item(G, "source", "fail", str(exc).split("; ")[0], exc.fix or "fix the source section")]
    except Exception as exc:  # a camera driver fails in many ways; report it as it is
        return [Item(G, "source", "fail", f"source.type {cfg.type}: {type(exc).__name__}: {exc}",
                     "check the camera cable and source.path; see docs/troubleshooting.md")]
    if frame is None:
        return [Item(G, "source", "fail", f"source.type {cfg.type}: no frame within {cfg.timeout_s:g} s",
                     "check the camera; raise source.timeout_s for a slow stream")]
    h, w = frame.image.shape[:2]
    kind = described.get("type", cfg.type)
    return [Item(G, "source", "ok", f"{kind} {described.get('path') or ''}".strip() +
                 f": one frame {w}x{h}, {frame.image.dtype} RGB")]
