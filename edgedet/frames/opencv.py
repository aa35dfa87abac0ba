"""USB/V4L2 cameras, RTSP/HTTP streams and video files through OpenCV (the ``opencv`` extra).

``source.path``: a camera index (``0``), a device (``/dev/video0``), a URL (``rtsp://...``,
``http://...``) or a video file. Frames are converted from OpenCV's BGR to RGB.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgedet.cv import import_cv2 as optional_cv2
from edgedet.errors import SourceError
from edgedet.frames.base import Frame, FramePacer, FrameSource

log = logging.getLogger(__name__)

INSTALL_FIX = "pip install 'edgedet[opencv]' (opencv-python-headless)"
URL_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
DEVICE_PATTERN = re.compile(r"^/dev/video(\d+)$")
# First wait between attempts to open a stream; doubled per failure up to OPEN_BACKOFF_MAX_S.
OPEN_BACKOFF_FIRST_S = 0.5
OPEN_BACKOFF_MAX_S = 30.0


def import_cv2() -> Any:
    cv2 = optional_cv2()
    if cv2 is None:
        raise SourceError("OpenCV is not installed", where="source.type opencv", fix=INSTALL_FIX)
    return cv2


def classify_target(path: str | int | None) -> tuple[str, str | int]:
    """("camera", index) | ("device", "/dev/videoN") | ("url", url) | ("file", path)."""
    if path is None:
        return "camera", 0
    if isinstance(path, int):
        return "camera", path
    text = path.strip()
    if text.isdigit():
        return "camera", int(text)
    if DEVICE_PATTERN.match(text):
        return "device", text
    if URL_PATTERN.match(text):
        return "url", text
    return "file", text


def video_devices() -> list[str]:
    def number(dev: str) -> int:
        match = DEVICE_PATTERN.match(dev)
        return int(match.group(1)) if match else 1 << 30

    return sorted(glob.glob("/dev/video*"), key=number)


def redact(url: str) -> str:
    """Hide a password in ``scheme://user:password@host`` before logging."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


class OpenCVSource(FrameSource):
    def __init__(self, path: str | int | None, width: int, height: int, fps: float, loop: bool,
                 timeout_s: float, max_retries: int) -> None:
        super().__init__()
        self.kind, self.target = classify_target(path)
        self.width, self.height, self.fps, self.loop = width, height, fps, loop
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.capture: Any = None
        self._pacer = FramePacer(fps, self._closed)
        self._read_lock = threading.Lock()
        self._actual: dict[str, Any] = {}

    @property
    def _label(self) -> str:
        return redact(str(self.target)) if self.kind == "url" else str(self.target)

    def open(self) -> None:
        cv2 = import_cv2()
        self._closed.clear()
        self._pacer.reset()
        self._next_frame_id = 0
        if self.kind in ("camera", "device"):
            self.capture = self._open_camera(cv2)
        elif self.kind == "file":
            if not Path(str(self.target)).is_file():
                raise SourceError("video file not found", where=f"source.path {self.target!r}",
                                  fix="check the path, or give a camera index, /dev/videoN or a URL")
            capture = cv2.VideoCapture(str(self.target))
            if not capture.isOpened():
                capture.release()
                raise SourceError("OpenCV cannot decode this video file",
                                  where=f"source.path {self.target!r}",
                                  fix="convert it to MJPG/H.264 in an .avi or .mp4 container")
            self.capture = capture
        else:
            self.capture = self._open_url(cv2)
        cap = self.capture
        self._actual = {
            "resolution": [int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))],
            "device_fps": round(float(cap.get(cv2.CAP_PROP_FPS) or 0.0), 2),
            "backend": cap.getBackendName() if hasattr(cap, "getBackendName") else None,
        }
        log.info("opencv source: %s %s, %s, backend %s", self.kind, self._label, self._actual["resolution"],
                 self._actual["backend"])

    def _open_camera(self, cv2: Any) -> Any:
        if self.kind == "device":
            index = int(DEVICE_PATTERN.match(str(self.target)).group(1))  # type: ignore[union-attr]
            device = str(self.target)
        else:
            index = int(self.target)
            device = f"/dev/video{index}"
        # Checking the device node first gives a clear message and avoids OpenCV's own warnings.
        if sys.platform.startswith("linux") and not os.path.exists(device):
            present = ", ".join(video_devices()) or "none"
            raise SourceError(f"camera {self.target} does not exist ({device} not found; video devices: "
                              f"{present})", where="source.path",
                              fix="plug the camera in, or pick an index/device that `v4l2-ctl "
                                  "--list-devices` shows")
        api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        capture = cv2.VideoCapture(index, api)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"camera {self.target} cannot be opened ({device} exists but is not a capture "
                              "device, or is busy)", where="source.path",
                              fix="close other programs using it, or check permissions (group 'video')")
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps > 0:
            capture.set(cv2.CAP_PROP_FPS, self.fps)
        # One driver buffer: a read returns the newest frame, not one queued while inference ran.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return capture

    def _open_url(self, cv2: Any) -> Any:
        timeout_ms = int(self.timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        attempt, delay = 0, OPEN_BACKOFF_FIRST_S
        while True:
            capture = cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, params)
            if capture.isOpened():
                return capture
            capture.release()
            attempt += 1
            if self.max_retries and attempt > self.max_retries:
                raise SourceError(f"cannot open stream {self._label} after {attempt} attempts",
                                  where="source.path",
                                  fix="check the URL, that the camera/server is up and reachable, and "
                                      "source.max_retries (0 = retry forever)")
            log.warning("stream %s: open failed (attempt %d), retrying in %.1f s", self._label, attempt,
                        delay)
            if self._closed.wait(delay):
                raise SourceError(f"stream {self._label}: closed while retrying", where="source.path")
            delay = min(delay * 2, OPEN_BACKOFF_MAX_S)

    def read(self, timeout_s: float) -> Frame | None:
        with self._read_lock:
            capture = self.capture
            if self.closed or capture is None:
                return None
            if not self._pacer.wait(timeout_s):
                return None
            ok, bgr = capture.read()
            if not ok or bgr is None:
                if self.kind == "file":
                    if self.loop and self._rewind(capture):
                        ok, bgr = capture.read()
                    if not ok or bgr is None:
                        return None
                elif self.closed:
                    return None
                else:
                    raise ConnectionError(f"{self.kind} {self._label}: no frame (device unplugged or stream "
                                          "dropped)")
            image = bgr_to_rgb(bgr)
            return self._make_frame(image)

    def _rewind(self, capture: Any) -> bool:
        import cv2

        return bool(capture.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def close(self) -> None:
        super().close()
        # Wait for a read in progress so the capture is not released under it.
        with self._read_lock:
            capture, self.capture = self.capture, None
        if capture is not None:
            capture.release()

    @property
    def on_demand(self) -> bool:
        return self.kind == "file" and self.fps == 0

    def describe(self) -> dict[str, Any]:
        return {"type": "opencv", "kind": self.kind, "path": self._label,
                "requested": [self.width, self.height], "fps": self.fps,
                "loop": self.loop if self.kind == "file" else None, **self._actual}


def bgr_to_rgb(bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim == 2:
        return np.repeat(bgr[..., None], 3, axis=-1)
    if bgr.shape[2] == 4:
        bgr = bgr[..., :3]
    return np.ascontiguousarray(bgr[..., ::-1])


def opens_as_camera(device: str) -> bool:
    """True when OpenCV opens ``device`` and gets a frame from it (used by ``type: auto``)."""
    cv2 = optional_cv2()
    if cv2 is None:
        return False
    match = DEVICE_PATTERN.match(device)
    if not match:
        return False
    capture = cv2.VideoCapture(int(match.group(1)), cv2.CAP_V4L2)
    try:
        if not capture.isOpened():
            return False
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            ok, _ = capture.read()
            if ok:
                return True
        return False
    finally:
        capture.release()
