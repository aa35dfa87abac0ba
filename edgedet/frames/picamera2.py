"""The Raspberry Pi camera through Picamera2 (libcamera).

The ISP scales a second ``lores`` stream to (near) the model's input size, so the CPU never resizes a
large frame. On Pi 4 and older (VC4) the lores stream must be YUV420 and no larger than the main
stream; YUV420 is accepted on the Pi 5 as well, so it is used everywhere and converted to RGB here.
Frames are fresh: the configuration uses ``queue=False``, so a capture waits for the next frame to
complete instead of handing back one completed before the call.

picamera2 comes from apt on Raspberry Pi OS (``python3-picamera2``); edgedet's venv must be created with
``--system-site-packages`` to see it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from edgedet.cv import import_cv2
from edgedet.errors import SourceError
from edgedet.frames.base import Frame, FrameSource

log = logging.getLogger(__name__)

INSTALL_FIX = ("on Raspberry Pi OS: sudo apt install python3-picamera2, and create the venv with "
               "python3 -m venv --system-site-packages")
# A SensorTimestamp further than this from time.monotonic() is not on the monotonic clock.
MAX_TIMESTAMP_SKEW_S = 10.0


def _even(value: int) -> int:
    return max(2, value - value % 2)


def lores_size_for(model_input_size: tuple[int, int], main_size: tuple[int, int]) -> tuple[int, int]:
    """The model's input size, made even and no larger than the main stream (the ISP's rules)."""
    width = min(_even(model_input_size[0]), _even(main_size[0]))
    height = min(_even(model_input_size[1]), _even(main_size[1]))
    return width, height


# OpenCV (the optional extra) converts BT.601 limited range, the lores default, ~5x faster than numpy.
_cv2 = import_cv2()


def _yuv420_to_rgb_cv2(buffer: np.ndarray, width: int, height: int) -> np.ndarray:
    """Repack the padded planes into the contiguous I420 layout OpenCV expects, then convert."""
    stride = buffer.shape[1]
    flat = buffer.reshape(-1)
    chroma_stride, chroma_rows, chroma_width = stride // 2, height // 2, width // 2
    chroma_len = chroma_stride * chroma_rows
    start = height * stride
    packed = np.empty(height * width + 2 * chroma_rows * chroma_width, dtype=np.uint8)
    packed[: height * width].reshape(height, width)[:] = buffer[:height, :width]
    offset = height * width
    for plane_start in (start, start + chroma_len):
        plane = flat[plane_start:plane_start + chroma_len].reshape(chroma_rows, chroma_stride)
        packed[offset:offset + chroma_rows * chroma_width].reshape(chroma_rows, chroma_width)[:] = (
            plane[:, :chroma_width])
        offset += chroma_rows * chroma_width
    return _cv2.cvtColor(packed.reshape(height * 3 // 2, width), _cv2.COLOR_YUV2RGB_I420)


def yuv420_to_rgb(buffer: np.ndarray, width: int, height: int, colour_space: str = "SMPTE170M",
                  swap_uv: bool = False) -> np.ndarray:
    """Convert Picamera2's YUV420 array ((h*3/2, stride) with row padding) to HxWx3 uint8 RGB.

    The I420 layout is Y (h rows of ``stride``), then U and V, each h/2 rows of ``stride/2``.
    ``colour_space`` is libcamera's name: sYCC is full range BT.601, SMPTE170M limited range BT.601,
    Rec709 limited range BT.709.
    """
    if _cv2 is not None and colour_space == "SMPTE170M" and not swap_uv:
        return _yuv420_to_rgb_cv2(buffer, width, height)
    stride = buffer.shape[1]
    flat = buffer.reshape(-1)
    chroma_stride, chroma_rows, chroma_width = stride // 2, height // 2, width // 2
    chroma_len = chroma_stride * chroma_rows
    start = height * stride
    u = flat[start:start + chroma_len].reshape(chroma_rows, chroma_stride)[:, :chroma_width]
    v = flat[start + chroma_len:start + 2 * chroma_len].reshape(chroma_rows, chroma_stride)[:, :chroma_width]
    if swap_uv:
        u, v = v, u
    y = buffer[:height, :width].astype(np.float32)
    cb = u.astype(np.float32) - 128.0
    cr = v.astype(np.float32) - 128.0
    if "sycc" in colour_space.lower() or "jpeg" in colour_space.lower():
        pass  # full range: codes are the values
    else:
        y = (y - 16.0) * (255.0 / 219.0)
        cb *= 255.0 / 224.0
        cr *= 255.0 / 224.0
    if "709" in colour_space:
        kr, kb = 0.2126, 0.0722
    else:
        kr, kb = 0.299, 0.114
    kg = 1.0 - kr - kb
    # Chroma is subsampled 2x2: compute the colour offsets at half resolution, then repeat them.
    r_off = (2 * (1 - kr)) * cr
    b_off = (2 * (1 - kb)) * cb
    g_off = -(kr * r_off + kb * b_off) / kg
    offsets = np.stack([r_off, g_off, b_off], axis=-1)
    offsets = np.repeat(np.repeat(offsets, 2, axis=0), 2, axis=1)[:height, :width]
    rgb = y[..., None] + offsets
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


class Picamera2Source(FrameSource):
    """Main stream at ``source.width`` x ``source.height``; frames from a lores stream at the model size.

    Without a model input size the main stream itself is read (as RGB).
    """

    def __init__(self, camera_num: int, main_size: tuple[int, int], fps: float,
                 model_input_size: tuple[int, int] | None = None, buffer_count: int = 4) -> None:
        super().__init__()
        self.camera_num = camera_num
        self.main_size = (_even(main_size[0]), _even(main_size[1]))
        self.fps = fps
        self.lores_size = lores_size_for(model_input_size, self.main_size) if model_input_size else None
        self.buffer_count = buffer_count
        self.camera: Any = None
        self.camera_info: dict[str, Any] = {}
        self._stream = "lores" if self.lores_size else "main"
        self._colour_space = "SMPTE170M"
        self._platform = "unknown"

    def open(self) -> None:
        self._closed.clear()
        self._next_frame_id = 0
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError("the picamera2 library is not installed", where="source.type picamera2",
                              fix=INSTALL_FIX) from None
        cameras = Picamera2.global_camera_info()
        if not cameras:
            raise SourceError("no Raspberry Pi camera found", where="source.type picamera2",
                              fix="check the ribbon cable and `rpicam-hello --list-cameras`, or set "
                                  "source.type: opencv or synthetic")
        if not 0 <= self.camera_num < len(cameras):
            found = ", ".join(f"{i}: {c.get('Model', '?')}" for i, c in enumerate(cameras))
            raise SourceError(f"Pi camera index {self.camera_num} does not exist (found {found})",
                              where="source.path", fix=f"set source.path to 0..{len(cameras) - 1}")
        self.camera_info = dict(cameras[self.camera_num])
        try:
            camera = Picamera2(self.camera_num)
        except (RuntimeError, IndexError) as exc:
            raise SourceError(f"cannot open Pi camera {self.camera_num}: {exc}",
                              where="source.type picamera2",
                              fix="is another program (rpicam-*, edgedet) using the camera?") from None
        try:
            self._configure(camera)
            camera.start()
        except BaseException:
            camera.close()
            raise
        self.camera = camera
        self._platform = getattr(getattr(Picamera2, "platform", None), "name", "unknown")
        log.info("picamera2 source: camera %d (%s), main %s, %s, %s fps", self.camera_num,
                 self.camera_info.get("Model"), self.main_size,
                 f"lores {self.lores_size} YUV420" if self.lores_size else "frames from main",
                 self.fps or "sensor max")

    def _configure(self, camera: Any) -> None:
        controls: dict[str, Any] = {}
        if self.fps > 0:
            duration_us = round(1e6 / self.fps)
            controls["FrameDurationLimits"] = (duration_us, duration_us)
        else:
            # As fast as the sensor mode allows (Picamera2's video default pins 30 fps).
            controls["FrameDurationLimits"] = (100, 33333)
        # "BGR888" is libcamera's name for bytes in R, G, B order: RGB arrays without a copy.
        main = {"size": self.main_size, "format": "BGR888" if self.lores_size is None else "XBGR8888"}
        lores = {"size": self.lores_size, "format": "YUV420"} if self.lores_size else None
        config = camera.create_video_configuration(main=main, lores=lores, controls=controls,
                                                   buffer_count=self.buffer_count, queue=False,
                                                   display=None, encode=None)
        try:
            camera.configure(config)
        except (RuntimeError, ValueError) as exc:
            raise SourceError(f"the camera rejected the stream configuration: {exc}",
                              where="source.width/source.height",
                              fix="use a smaller even size the sensor supports (e.g. 640x480)") from None
        actual = camera.camera_configuration() or config
        self._colour_space = str(actual.get("colour_space"))
        stream = actual.get(self._stream) or {}
        size = stream.get("size")
        if size is not None:
            if self.lores_size is not None:
                self.lores_size = tuple(size)
            else:
                self.main_size = tuple(size)

    def read(self, timeout_s: float) -> Frame | None:
        camera = self.camera
        if self.closed or camera is None:
            return None
        # TimeoutError (no frame within the wait) propagates: the loop closes and reopens the camera.
        request = camera.capture_request(wait=timeout_s)
        try:
            array = request.make_array(self._stream)
            metadata = request.get_metadata()
        finally:
            request.release()
        if self.lores_size is not None:
            width, height = self.lores_size
            image = yuv420_to_rgb(array, width, height, self._colour_space)
        else:
            image = np.ascontiguousarray(array[..., :3])
        now_mono, now_wall = time.monotonic(), time.time()
        captured_mono = now_mono
        timestamp_ns = metadata.get("SensorTimestamp")
        if timestamp_ns:
            sensor_mono = timestamp_ns / 1e9
            if abs(now_mono - sensor_mono) < MAX_TIMESTAMP_SKEW_S:
                captured_mono = min(sensor_mono, now_mono)
        return self._make_frame(image, now_wall - (now_mono - captured_mono), captured_mono)

    def close(self) -> None:
        super().close()
        camera, self.camera = self.camera, None
        if camera is not None:
            try:
                camera.stop()
            finally:
                camera.close()

    def describe(self) -> dict[str, Any]:
        size = self.lores_size or self.main_size
        return {"type": "picamera2", "resolution": list(size), "main": list(self.main_size),
                "lores": list(self.lores_size) if self.lores_size else None,
                "lores_format": "YUV420" if self.lores_size else None, "colour_space": self._colour_space,
                "fps": self.fps, "camera": self.camera_info, "platform": self._platform}
