"""Fake of ``picamera2.Picamera2`` (the parts edgedet uses), following raspberrypi/picamera2."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import libcamera
from libcamera import ColorSpace

from . import fake
from .platform import Platform, get_platform
from .request import CompletedRequest

YUV_FORMATS = ("YUV420", "YVU420", "NV12", "NV21", "YUYV", "YVYU", "UYVY", "VYUY")
RGB_FORMATS = ("BGR888", "RGB888", "XBGR8888", "XRGB8888", "RGB161616", "BGR161616")
VALID_STREAM_KEYS = ("format", "size", "stride", "preserve_ar")
RAW_IGNORE = ("bit_depth", "crop_limits", "exposure_limits", "fps", "unpacked")


def _colour_space_to_libcamera(colour_space: ColorSpace, fmt: str) -> ColorSpace:
    # As picamera2.utils.colour_space_to_libcamera: an RGB stream carries no YCbCr matrix or range.
    if fmt in RGB_FORMATS:
        colour_space = ColorSpace(colour_space)
        colour_space.ycbcrEncoding = ColorSpace.YcbcrEncoding.Null
        colour_space.range = ColorSpace.Range.Full
    return colour_space


_COLOUR_SPACE_TABLE = (ColorSpace.Sycc(), ColorSpace.Smpte170m(), ColorSpace.Rec709())


def _colour_space_from_libcamera(colour_space: ColorSpace | None) -> ColorSpace | None:
    # As picamera2.utils.colour_space_from_libcamera: the main stream's space, matched back to one of the
    # three standard ones by primaries and transfer function (a different object from the one requested).
    if colour_space is None:
        return None
    for cs in _COLOUR_SPACE_TABLE:
        if colour_space.primaries == cs.primaries and colour_space.transferFunction == cs.transferFunction:
            return cs
    return colour_space


@dataclass
class _LibcameraRequest:
    """Stands in for the libcamera.Request a real CompletedRequest wraps: which frame, and when."""

    frame_index: int
    timestamp_ns: int


class Picamera2:
    platform = get_platform()

    @staticmethod
    def global_camera_info() -> list:
        cams = [{"Model": c.model, "Location": c.location, "Rotation": c.rotation, "Id": c.id, "Num": i}
                for i, c in enumerate(fake.state.cameras)]
        return sorted(cams, key=lambda cam: ("/usb" not in cam["Id"], cam["Id"]), reverse=True)

    def __init__(self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None,
                 allocator: Any = None) -> None:
        self.is_open = False
        self.started = False
        # Real: ``camera_num = self.global_camera_info()[camera_num]['Num']`` -> IndexError if absent.
        camera_num = self.global_camera_info()[camera_num]["Num"]
        if camera_num in fake.state.acquired:
            # Real: camera.acquire() fails inside __init__, reported as this RuntimeError.
            raise RuntimeError("Camera __init__ sequence did not complete.")
        fake.state.acquired.add(camera_num)
        self.camera_idx = camera_num
        self._camera = fake.state.cameras[camera_num]
        self.sensor_resolution = self._camera.sensor_resolution
        self.camera_properties = {"Model": self._camera.model, "PixelArraySize": self.sensor_resolution,
                                  "ColorFilterArrangement": 0, "Location": self._camera.location,
                                  "Rotation": self._camera.rotation}
        self.camera_config: dict | None = None
        self.configure_count = 0
        self.controls: dict[str, Any] = {}
        self._held_requests = 0
        self._last_taken = -1
        self._lock = threading.Lock()
        self.is_open = True
        fake.state.instances.append(self)

    # --- context manager / lifetime ---------------------------------------------------------------
    def __enter__(self) -> Picamera2:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_traceback: Any) -> None:
        self.close()

    def close(self) -> None:
        if not self.is_open:
            return
        self.stop()
        fake.state.acquired.discard(self.camera_idx)
        self.is_open = False
        self.camera_config = None

    # --- configuration ----------------------------------------------------------------------------
    @property
    def sensor_modes(self) -> list:
        # Real: reading the modes configures the camera once per mode, so it fails while started.
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        return [dict(m) for m in self._camera.modes]

    @staticmethod
    def _make_initial_stream_config(stream_config: dict, updates: dict | None,
                                    ignore_list: tuple | list = ()) -> dict | None:
        if updates is None:
            return None
        for key, value in updates.items():
            if key in VALID_STREAM_KEYS:
                stream_config[key] = value
            elif key not in ignore_list:
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are {VALID_STREAM_KEYS}")
        return stream_config

    @staticmethod
    def align_stream(stream_config: dict, optimal: bool = True) -> None:
        align = 2
        if optimal:
            align = 32 if Picamera2.platform == Platform.VC4 else 64
            if stream_config["format"] in ("YUV420", "YVU420"):
                align *= 2
            elif stream_config["format"] in ("XBGR8888", "XRGB8888"):
                align //= 2
        width, height = stream_config["size"]
        stream_config["size"] = (width - width % align, height - height % 2)

    # The real defaults (mutable ones included): main={} and raw={} mean "the default stream", lores=None none.
    def create_video_configuration(self, main: dict = {}, lores: dict | None = None,  # noqa: B006
                                   raw: dict | None = {}, transform: Any = libcamera.Transform(),  # noqa: B006, B008
                                   colour_space: Any = None, buffer_count: int = 6,
                                   controls: dict = {}, display: str | None = "main",  # noqa: B006
                                   encode: str | None = "main", queue: bool = True,
                                   sensor: dict | None = {}, use_case: str = "video") -> dict:  # noqa: B006
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        main_cfg = self._make_initial_stream_config({"format": "XBGR8888", "size": (1280, 720),
                                                     "preserve_ar": True}, dict(main))
        assert main_cfg is not None
        self.align_stream(main_cfg, optimal=False)
        lores_cfg = self._make_initial_stream_config({"format": "YUV420", "size": main_cfg["size"],
                                                      "preserve_ar": False}, lores)
        if lores_cfg is not None:
            self.align_stream(lores_cfg, optimal=False)
        raw_cfg = self._make_initial_stream_config({"format": "SRGGB10_CSI2P", "size": main_cfg["size"]},
                                                   raw, RAW_IGNORE)
        if colour_space is None:
            small = main_cfg["size"][0] < 1280 or main_cfg["size"][1] < 720
            colour_space = libcamera.ColorSpace.Smpte170m() if small else libcamera.ColorSpace.Rec709()
        config = {"use_case": use_case, "transform": transform, "colour_space": colour_space,
                  "buffer_count": buffer_count, "queue": queue, "main": main_cfg, "lores": lores_cfg,
                  "raw": raw_cfg, "controls": {"NoiseReductionMode": 1,
                                               "FrameDurationLimits": (33333, 33333)} | (controls or {}),
                  "sensor": sensor}
        for name, stream in (("display", display), ("encode", encode)):
            if stream is not None and config.get(stream) is None:
                raise RuntimeError(f"{name.capitalize()} stream {stream} was not defined")
        config["display"], config["encode"] = display, encode
        return config

    def check_stream_config(self, stream_config: Any, name: str) -> None:
        if type(stream_config) is not dict:
            raise RuntimeError(name + " stream should be a dictionary")
        for key in ("format", "size"):
            if key not in stream_config:
                raise RuntimeError(f"{key} not found in {name} stream")
        fmt = stream_config["format"]
        if type(fmt) is not str:
            raise RuntimeError("format in " + name + " stream should be a string")
        if name == "raw":
            if not fmt.startswith(("S", "R")):
                raise RuntimeError("Unrecognised raw format " + fmt)
        elif fmt not in YUV_FORMATS and fmt not in RGB_FORMATS and fmt != "MJPEG":
            raise RuntimeError("Bad format " + fmt + " in stream " + name)
        size = stream_config["size"]
        if type(size) is not tuple or len(size) != 2:
            raise RuntimeError("size in " + name + " stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")

    def check_camera_config(self, camera_config: dict) -> None:
        for name in ("colour_space", "transform", "main", "lores", "raw"):
            if name not in camera_config:
                raise RuntimeError(f"{name!r} key expected in camera configuration")
        if not isinstance(camera_config["colour_space"], libcamera._libcamera.ColorSpace):
            raise RuntimeError("Colour space has incorrect type")
        if not isinstance(camera_config["transform"], libcamera._libcamera.Transform):
            raise RuntimeError("Transform has incorrect type")
        self.check_stream_config(camera_config["main"], "main")
        if camera_config["lores"] is not None:
            self.check_stream_config(camera_config["lores"], "lores")
            main_w, main_h = camera_config["main"]["size"]
            lores_w, lores_h = camera_config["lores"]["size"]
            if lores_w > main_w or lores_h > main_h:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if Picamera2.platform == Platform.VC4 and camera_config["lores"]["format"] not in YUV_FORMATS:
                raise RuntimeError("lores stream must be YUV")
        if camera_config["raw"] is not None:
            self.check_stream_config(camera_config["raw"], "raw")

    def configure(self, camera_config: Any = None) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if camera_config is None or isinstance(camera_config, str):
            camera_config = self.create_video_configuration()
        camera_config = dict(camera_config)
        self.check_camera_config(camera_config)
        for name in ("main", "lores"):
            stream = camera_config[name]
            if stream is not None:
                camera_config[name] = dict(stream)
                width = stream["size"][0]
                bpp = {"BGR888": 3, "RGB888": 3, "XBGR8888": 4, "XRGB8888": 4}.get(stream["format"], 1)
                camera_config[name]["stride"] = width * bpp if bpp > 1 else -(-width // 64) * 64
        # What libcamera gets per stream (lores carries the requested space as it is: it must be YUV), and
        # what picamera2 then reports back: the main stream's space, mapped to a standard one.
        requested = camera_config["colour_space"]
        main_space = _colour_space_to_libcamera(requested, camera_config["main"]["format"])
        self._stream_colour_spaces = {"main": main_space, "lores": requested}
        camera_config["colour_space"] = _colour_space_from_libcamera(main_space)
        self.camera_config = camera_config
        self.controls = dict(camera_config.get("controls") or {})
        self.configure_count += 1

    def camera_configuration(self) -> dict | None:
        return self.camera_config

    def stream_configuration(self, name: str = "main") -> dict:
        assert self.camera_config is not None
        return self.camera_config[name]

    def set_controls(self, controls: dict) -> None:
        self.controls.update(controls)

    # --- running ----------------------------------------------------------------------------------
    def start(self, config: Any = None, show_preview: Any = False) -> None:
        if self.camera_config is None and config is None:
            config = "preview"
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        self.started = True
        self._start_mono_ns = time.monotonic_ns()
        self._last_taken = -1

    def stop(self) -> None:
        self.started = False

    def _frame_duration_us(self) -> int:
        limits = self.controls.get("FrameDurationLimits") or (33333, 33333)
        # The sensor runs at the shortest duration allowed by the limits and by its fastest mode.
        fastest_us = int(1e6 / max(m["fps"] for m in self._camera.modes))
        return max(int(limits[0]), fastest_us)

    def capture_request(self, wait: Any = None, signal_function: Any = None,
                        flush: Any = None) -> CompletedRequest:
        if not self.started:
            # Real: the job waits for a request that never comes (the camera is not running).
            raise TimeoutError("fake picamera2: capture_request while the camera is stopped")
        timeout_s = None if wait is None or wait is True else float(wait)
        buffers = self.camera_config["buffer_count"]
        if self._held_requests >= buffers or fake.state.stalled:
            # All buffers held by the application (or no frames coming): the real camera stalls.
            if timeout_s is None:
                raise RuntimeError(f"fake picamera2: no frame can complete ({self._held_requests} of "
                                   f"{buffers} buffers held, stalled={fake.state.stalled}); the real "
                                   "camera would block forever")
            time.sleep(timeout_s)
            raise TimeoutError("fake picamera2: no frame within the wait")
        duration_ns = self._frame_duration_us() * 1000
        with self._lock:
            now = time.monotonic_ns()
            newest_completed = (now - self._start_mono_ns) // duration_ns - 1
            if flush is True:
                flush = now
            if self.camera_config["queue"] and newest_completed > self._last_taken and not flush:
                # queue=True keeps the last completed request: handed back at once, possibly stale.
                index = newest_completed
            else:
                index = max(newest_completed, self._last_taken) + 1
            due_ns = self._start_mono_ns + (index + 1) * duration_ns
            delay_s = max(0.0, (due_ns - now) / 1e9)
            if timeout_s is not None and delay_s > timeout_s:
                time.sleep(timeout_s)
                raise TimeoutError("fake picamera2: no frame within the wait")
            self._last_taken = index
            self._held_requests += 1
        time.sleep(delay_s)
        return CompletedRequest(_LibcameraRequest(index, due_ns), self)

    def capture_array(self, name: str = "main", wait: Any = None, signal_function: Any = None) -> Any:
        request = self.capture_request(wait=wait)
        try:
            return request.make_array(name)
        finally:
            request.release()

    def capture_metadata(self, wait: Any = None, signal_function: Any = None) -> dict:
        request = self.capture_request(wait=wait)
        try:
            return request.get_metadata()
        finally:
            request.release()
