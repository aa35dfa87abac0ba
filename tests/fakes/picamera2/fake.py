"""Test controls for the fake picamera2: which cameras exist, the scene they see, and faults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from libcamera import ColorSpace

_FACTORIES = {"sYCC": "Sycc", "SMPTE170M": "Smpte170m", "Rec709": "Rec709", "Rec2020": "Rec2020"}

# For tests that run edgedet as a separate process (``python -m edgedet run``), where ``state`` cannot be
# reached: while the file this variable names exists, frames stop arriving exactly as with ``state.stalled``.
STALL_FILE_ENV = "EDGEDET_FAKE_PICAMERA2_STALL_FILE"


@dataclass
class FakeCamera:
    model: str = "imx219"
    id: str = "/base/soc/i2c0mux/i2c@1/imx219@10"
    sensor_resolution: tuple[int, int] = (3280, 2464)
    location: int = 2
    rotation: int = 180
    # Sensor modes as Picamera2.sensor_modes reports them for an IMX219.
    modes: list[dict] = field(default_factory=lambda: [
        {"format": "SRGGB10_CSI2P", "unpacked": "SRGGB10", "bit_depth": 10, "size": (640, 480),
         "fps": 103.33, "crop_limits": (1000, 752, 1280, 960), "exposure_limits": (75, 11766829)},
        {"format": "SRGGB10_CSI2P", "unpacked": "SRGGB10", "bit_depth": 10, "size": (1640, 1232),
         "fps": 41.85, "crop_limits": (0, 0, 3280, 2464), "exposure_limits": (75, 11766829)},
        {"format": "SRGGB10_CSI2P", "unpacked": "SRGGB10", "bit_depth": 10, "size": (3280, 2464),
         "fps": 21.19, "crop_limits": (0, 0, 3280, 2464), "exposure_limits": (75, 11766829)},
    ])


class _State:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.cameras: list[FakeCamera] = [FakeCamera()]
        # Set to True to make frames stop arriving (a dislodged ribbon cable): captures time out.
        self.stalled = False
        # Every Picamera2 object created, so tests can inspect what the code under test did.
        self.instances: list = []
        # Cameras currently acquired (a second Picamera2 on the same camera fails, as libcamera does).
        self.acquired: set[int] = set()

    @property
    def stalled(self) -> bool:
        if self._stalled:
            return True
        flag = os.environ.get(STALL_FILE_ENV)
        return bool(flag) and os.path.exists(flag)

    @stalled.setter
    def stalled(self, value: bool) -> None:
        self._stalled = value


state = _State()


def reset() -> None:
    state.reset()
    from .picamera2 import Picamera2
    from .platform import Platform

    Picamera2.platform = Platform.VC4


def scene(width: int, height: int, frame_index: int) -> np.ndarray:
    """What the fake sensor sees, as HxWx3 uint8 RGB: smooth colour gradients that move per frame.

    Smooth content keeps the 4:2:0 chroma subsampling loss small, so a YUV420 round trip can be
    compared to this image with a tight tolerance.
    """
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    shift = (frame_index % 16) / 16.0
    red = 40 + 180 * xs
    green = 40 + 180 * ys
    blue = 128 + 100 * np.sin(2 * np.pi * (xs + ys + shift))
    rgb = np.stack(np.broadcast_arrays(red, green, blue), axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def rgb_to_i420(rgb: np.ndarray, stride: int, colour_space: Any) -> np.ndarray:
    """Encode like the ISP: I420 planes in a (h*3/2, stride) buffer, rows padded to ``stride``.

    ``colour_space`` is a (fake) libcamera ColorSpace, or the name of one of its standard spaces; its
    ``ycbcrEncoding`` and ``range`` fields choose the matrix and the range.
    """
    if isinstance(colour_space, str):
        colour_space = getattr(ColorSpace, _FACTORIES[colour_space])()
    height, width = rgb.shape[:2]
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    kr, kb = {"Rec601": (0.299, 0.114), "Rec709": (0.2126, 0.0722),
              "Rec2020": (0.2627, 0.0593)}[colour_space.ycbcrEncoding.name]
    kg = 1 - kr - kb
    y = kr * r + kg * g + kb * b
    cb = (b - y) / (2 * (1 - kb))
    cr = (r - y) / (2 * (1 - kr))
    if colour_space.range == ColorSpace.Range.Full:
        y_code, cb_code, cr_code = y, cb + 128, cr + 128
    else:  # limited ("video") range
        y_code = 16 + y * 219 / 255
        cb_code = 128 + cb * 224 / 255
        cr_code = 128 + cr * 224 / 255

    def sub(plane: np.ndarray) -> np.ndarray:  # 2x2 average, as 4:2:0 chroma siting (roughly) does
        return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

    buf = np.zeros(height * 3 // 2 * stride, dtype=np.uint8)
    plane_y = buf[: height * stride].reshape(height, stride)
    plane_y[:, :width] = np.clip(np.rint(y_code), 0, 255)
    chroma_stride, chroma_rows = stride // 2, height // 2
    start = height * stride
    for code in (cb_code, cr_code):
        plane = buf[start: start + chroma_stride * chroma_rows].reshape(chroma_rows, chroma_stride)
        plane[:, : width // 2] = np.clip(np.rint(sub(code)), 0, 255)
        start += chroma_stride * chroma_rows
    return buf.reshape(height * 3 // 2, stride)
