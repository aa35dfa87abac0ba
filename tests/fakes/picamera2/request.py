"""Fake of ``picamera2.request.CompletedRequest``: one completed frame holding a buffer per stream."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import fake

# Stride alignment of YUV420 rows in bytes (real: 64 on VC4, 64 or more on PiSP), so a 224-wide
# lores stream comes back with padding on the right, as it does on a Pi.
YUV_STRIDE_ALIGN = 64


class CompletedRequest:
    def __init__(self, request: Any, picam2: Any) -> None:
        self.request = request
        self.ref_count = 1
        self.picam2 = picam2
        self.configure_count = picam2.configure_count
        self.config = picam2.camera_config.copy()
        self._colour_spaces = dict(picam2._stream_colour_spaces)

    @property
    def _released(self) -> bool:
        return self.ref_count == 0

    def acquire(self) -> None:
        if self.ref_count == 0:
            raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
        self.ref_count += 1

    def release(self) -> None:
        # The real request returns its buffers to libcamera when the last reference goes.
        self.ref_count -= 1
        if self.ref_count < 0:
            raise RuntimeError("CompletedRequest: lock now has negative ref_count")
        if self.ref_count == 0:
            self.picam2._held_requests -= 1

    def get_metadata(self) -> dict[str, Any]:
        duration_us = self.picam2._frame_duration_us()
        return {"SensorTimestamp": self.request.timestamp_ns, "FrameDuration": duration_us,
                "ExposureTime": min(duration_us - 100, 20000), "AnalogueGain": 1.0}

    def make_buffer(self, name: str) -> np.ndarray:
        return self.make_array(name).reshape(-1)

    def make_array(self, name: str) -> np.ndarray:
        if self._released:
            # Reading a released buffer is undefined on the real camera (the memory is recycled).
            raise RuntimeError("fake picamera2: make_array on a released request")
        stream = self.config.get(name)
        if stream is None:
            raise KeyError(name)  # the real stream_map lookup fails the same way
        width, height = stream["size"]
        fmt = stream["format"]
        rgb = fake.scene(width, height, self.request.frame_index)
        if fmt == "BGR888":  # libcamera's naming: the bytes are in R, G, B order
            return rgb.copy()
        if fmt == "RGB888":  # bytes in B, G, R order (what OpenCV calls BGR)
            return rgb[..., ::-1].copy()
        if fmt in ("XBGR8888", "XRGB8888"):
            alpha = np.full((height, width, 1), 255, np.uint8)
            ordered = rgb if fmt == "XBGR8888" else rgb[..., ::-1]
            return np.concatenate([ordered, alpha], axis=-1)
        if fmt in ("YUV420", "YVU420"):
            stride = -(-width // YUV_STRIDE_ALIGN) * YUV_STRIDE_ALIGN
            buf = fake.rgb_to_i420(rgb, stride, self._colour_spaces[name])
            if fmt == "YVU420":  # V plane first
                flat = buf.reshape(-1)
                chroma = (stride // 2) * (height // 2)
                start = height * stride
                u = flat[start:start + chroma].copy()
                flat[start:start + chroma] = flat[start + chroma:start + 2 * chroma]
                flat[start + chroma:start + 2 * chroma] = u
            return buf
        raise RuntimeError("Format " + fmt + " not supported")
