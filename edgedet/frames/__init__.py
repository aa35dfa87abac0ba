"""Frame sources behind one interface, chosen by ``source.type``.

``open_source(cfg, model_input_size)`` builds the source (not yet opened: call ``open()`` or use it as a
context manager). ``auto`` picks the Pi camera if one is present, else the first V4L2 camera, else
synthetic frames, and logs which.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgedet.errors import SourceError
from edgedet.frames.base import Frame, FramePacer, FrameSource
from edgedet.frames.config import SourceConfig

log = logging.getLogger(__name__)

__all__ = ["Frame", "FramePacer", "FrameSource", "SourceConfig", "detect_auto", "open_source"]

# V4L2 nodes of the Pi's codecs/ISPs: they exist on every Pi but are not cameras.
NON_CAMERA_V4L2_NAMES = ("bcm2835-codec", "bcm2835-isp", "rpivid", "pispbe", "rp1-cfe", "unicam", "hevc")


def _camera_index(path: str | int | None, source_type: str) -> int:
    if path is None:
        return 0
    if isinstance(path, int):
        return path
    if path.strip().isdigit():
        return int(path.strip())
    raise SourceError(f"expected a camera index for source.type {source_type}, got {path!r}",
                      where="source.path", fix="use 0 for the first camera")


def pi_camera_present() -> bool:
    try:
        from picamera2 import Picamera2
    except ImportError:
        return False
    try:
        return bool(Picamera2.global_camera_info())
    except Exception as exc:  # libcamera not usable here: treat as no Pi camera
        log.debug("picamera2 present but listing cameras failed: %s", exc)
        return False


def first_v4l2_camera() -> str | None:
    from edgedet.frames.opencv import opens_as_camera, video_devices

    for device in video_devices():
        name_file = Path("/sys/class/video4linux") / Path(device).name / "name"
        try:
            name = name_file.read_text().strip()
        except OSError:
            name = ""
        if any(tag in name for tag in NON_CAMERA_V4L2_NAMES):
            continue
        if opens_as_camera(device):
            return device
    return None


def detect_auto() -> tuple[str, str | None]:
    """("picamera2", None) | ("opencv", "/dev/videoN") | ("synthetic", None)."""
    if pi_camera_present():
        return "picamera2", None
    device = first_v4l2_camera()
    if device is not None:
        return "opencv", device
    return "synthetic", None


def open_source(cfg: SourceConfig, model_input_size: tuple[int, int] | None = None) -> FrameSource:
    """Build the frame source ``cfg`` describes. ``model_input_size`` is (width, height)."""
    source_type: str = cfg.type
    path = cfg.path
    if source_type == "auto":
        source_type, device = detect_auto()
        reason = {"picamera2": "a Raspberry Pi camera is present",
                  "opencv": f"V4L2 camera {device} opens",
                  "synthetic": "no Pi camera and no V4L2 camera found"}[source_type]
        log.info("source.type auto -> %s (%s)", source_type, reason)
        if device is not None:
            path = device
    if source_type == "synthetic":
        from edgedet.frames.synthetic import SyntheticSource

        return SyntheticSource(cfg.width, cfg.height, cfg.fps, pattern=cfg.pattern)
    if source_type == "images":
        from edgedet.frames.images import ImagesSource

        if path is None or str(path).strip() == "":
            raise SourceError("source.type images needs source.path", where="source.path",
                              fix="set it to a folder of images or a glob such as 'photos/*.jpg'")
        return ImagesSource(str(path), cfg.fps, cfg.loop)
    if source_type == "opencv":
        from edgedet.frames.opencv import OpenCVSource

        return OpenCVSource(path, cfg.width, cfg.height, cfg.fps, cfg.loop, cfg.timeout_s, cfg.max_retries)
    if source_type == "picamera2":
        from edgedet.frames.picamera2 import Picamera2Source

        return Picamera2Source(_camera_index(path, "picamera2"), (cfg.width, cfg.height), cfg.fps,
                               model_input_size)
    raise SourceError(f"unknown source type {source_type!r}", where="source.type",
                      fix="use auto, picamera2, opencv, images or synthetic")
