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

import functools
import logging
import re
import time
from dataclasses import dataclass
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


# libcamera's standard colour spaces (ColorSpace::toString() names) -> YCbCr matrix and range. sRGB and RAW
# have no YCbCr encoding and never describe a YUV stream.
STANDARD_COLOUR_SPACES: dict[str, tuple[str, bool]] = {
    "sYCC": ("Rec601", True),  # JPEG: BT.601 matrix, full range
    "SMPTE170M": ("Rec601", False),
    "Rec709": ("Rec709", False),
    "Rec2020": ("Rec2020", False),
}
# The four fields of each standard space (primaries, transfer, encoding, range), as toString() names them.
_STANDARD_FIELDS: dict[tuple[str, str, str, str], str] = {
    ("RAW", "Linear", "None", "Full"): "RAW",
    ("Rec709", "sRGB", "None", "Full"): "sRGB",
    ("Rec709", "sRGB", "Rec601", "Full"): "sYCC",
    ("SMPTE170M", "Rec709", "Rec601", "Limited"): "SMPTE170M",
    ("Rec709", "Rec709", "Rec709", "Limited"): "Rec709",
    ("Rec2020", "Rec709", "Rec2020", "Limited"): "Rec2020",
}
# The Python binding's enum member names where they differ from toString()'s ("Null" is C++ "None").
_BINDING_NAMES = {"Raw": "RAW", "Smpte170m": "SMPTE170M", "Srgb": "sRGB", "Null": "None"}
# Kr, Kb of each YCbCr matrix (ITU-R BT.601, BT.709, BT.2020).
_KR_KB = {"Rec601": (0.299, 0.114), "Rec709": (0.2126, 0.0722), "Rec2020": (0.2627, 0.0593)}
_WRAPPED = re.compile(r"^<libcamera\.ColorSpace '(.*)'>$")


@dataclass(frozen=True)
class YCbCr:
    """What a libcamera colour space means for decoding YUV: its name, YCbCr matrix and range."""

    name: str  # libcamera's toString(): sYCC, SMPTE170M, Rec709, Rec2020, or "primaries/transfer/encoding/range"
    matrix: str  # Rec601 | Rec709 | Rec2020
    full_range: bool

    def describe(self) -> str:
        return f"{self.matrix} {'full' if self.full_range else 'limited'} range"


DEFAULT_YCBCR = YCbCr("SMPTE170M", "Rec601", False)


def _from_fields(primaries: str, transfer: str, encoding: str, range_: str) -> YCbCr:
    name = _STANDARD_FIELDS.get((primaries, transfer, encoding, range_),
                                f"{primaries}/{transfer}/{encoding}/{range_}")
    if encoding == "None":
        # picamera2 reports the main stream's colour space, whose YCbCr fields libcamera drops for an RGB
        # main stream; picamera2 maps it back by primaries and transfer (utils.colour_space_from_libcamera),
        # and the YUV lores stream carries the space it asked for. Do the same.
        for p, t, e, r in _STANDARD_FIELDS:
            if (p, t) == (primaries, transfer) and e != "None":
                encoding, range_ = e, r
                break
        else:
            raise ValueError(f"colour space {name} has no YCbCr encoding")
    if encoding not in _KR_KB or range_ not in ("Full", "Limited"):
        raise ValueError(f"unknown colour space {name}")
    return YCbCr(_STANDARD_FIELDS.get((primaries, transfer, encoding, range_), name), encoding,
                 range_ == "Full")


@functools.lru_cache(maxsize=64)
def _parse_colour_space_text(text: str) -> YCbCr:
    wrapped = _WRAPPED.match(text.strip())
    name = wrapped.group(1) if wrapped else text.strip()
    if name in STANDARD_COLOUR_SPACES:
        matrix, full_range = STANDARD_COLOUR_SPACES[name]
        return YCbCr(name, matrix, full_range)
    if name in ("RAW", "sRGB"):
        raise ValueError(f"colour space {name} has no YCbCr encoding")
    parts = name.split("/")
    if len(parts) == 4:
        return _from_fields(*parts)
    raise ValueError(f"unknown colour space {text!r}")


def parse_colour_space(value: object) -> YCbCr:
    """libcamera's ColorSpace object, its ``str()`` ("<libcamera.ColorSpace 'SMPTE170M'>"), or a bare name.

    The Python binding exposes ``primaries``, ``transferFunction``, ``ycbcrEncoding`` and ``range`` as enums
    and wraps toString() in ``str()``; the fields are read where present, else the text is parsed.
    Raises ValueError for a space that describes no YCbCr encoding.
    """
    if isinstance(value, YCbCr):
        return value
    if isinstance(value, str):
        return _parse_colour_space_text(value)
    try:
        key = (value.primaries, value.transferFunction, value.ycbcrEncoding, value.range)  # type: ignore[attr-defined]
    except AttributeError:
        return _parse_colour_space_text(str(value))
    cached = _BY_FIELDS.get(key)
    if cached is None:
        names = [getattr(field, "name", None) for field in key]
        if not all(isinstance(name, str) for name in names):
            return _parse_colour_space_text(str(value))
        cached = _from_fields(*(_BINDING_NAMES.get(str(name), str(name)) for name in names))
        _BY_FIELDS[key] = cached
    return cached


# The binding's enums are hashable: a frame's conversion looks its space up instead of re-reading names.
_BY_FIELDS: dict[tuple[Any, ...], YCbCr] = {}


@functools.lru_cache(maxsize=16)
def _ycbcr_to_rgb_matrix(matrix: str, full_range: bool) -> np.ndarray:
    """The 3x4 affine map from (Y, Cb, Cr, 1) codes to (R, G, B)."""
    kr, kb = _KR_KB[matrix]
    kg = 1.0 - kr - kb
    y_scale, c_scale = (1.0, 1.0) if full_range else (255.0 / 219.0, 255.0 / 224.0)
    y_offset = 0.0 if full_range else 16.0
    linear = np.array([[y_scale, 0.0, 2 * (1 - kr) * c_scale],
                       [y_scale, -2 * (1 - kb) * kb / kg * c_scale, -2 * (1 - kr) * kr / kg * c_scale],
                       [y_scale, 2 * (1 - kb) * c_scale, 0.0]])
    offset = -linear @ np.array([y_offset, 128.0, 128.0])
    return np.hstack([linear, offset[:, None]])


# OpenCV (the optional extra) is ~15x faster than numpy here: cvtColor for BT.601 limited range (the lores
# default below 1280x720), a per-pixel 3x4 transform for the other matrices and ranges.
_cv2 = import_cv2()


def _planes(buffer: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y, U and V planes without the row padding."""
    stride = buffer.shape[1]
    flat = buffer.reshape(-1)
    chroma_stride, chroma_rows, chroma_width = stride // 2, height // 2, width // 2
    chroma_len = chroma_stride * chroma_rows
    start = height * stride
    u = flat[start:start + chroma_len].reshape(chroma_rows, chroma_stride)[:, :chroma_width]
    v = flat[start + chroma_len:start + 2 * chroma_len].reshape(chroma_rows, chroma_stride)[:, :chroma_width]
    return buffer[:height, :width], u, v


def _yuv420_to_rgb_cv2(buffer: np.ndarray, width: int, height: int, swap_uv: bool = False) -> np.ndarray:
    """BT.601 limited range: repack the padded planes into the contiguous layout OpenCV expects, convert."""
    cv2 = _cv2
    assert cv2 is not None
    y, first, second = _planes(buffer, width, height)
    chroma_len = (height // 2) * (width // 2)
    packed = np.empty(height * width + 2 * chroma_len, dtype=np.uint8)
    packed[: height * width].reshape(height, width)[:] = y
    packed[height * width:height * width + chroma_len].reshape(first.shape)[:] = first
    packed[height * width + chroma_len:].reshape(second.shape)[:] = second
    code = cv2.COLOR_YUV2RGB_YV12 if swap_uv else cv2.COLOR_YUV2RGB_I420
    return cv2.cvtColor(packed.reshape(height * 3 // 2, width), code)


def _yuv420_to_rgb_cv2_transform(buffer: np.ndarray, width: int, height: int, ycbcr: YCbCr,
                                 swap_uv: bool) -> np.ndarray:
    """Any matrix and range: upsample chroma 2x (nearest, as cvtColor does), then one affine transform."""
    cv2 = _cv2
    assert cv2 is not None
    y, u, v = _planes(buffer, width, height)
    if swap_uv:
        u, v = v, u
    size = (width, height)
    yuv = cv2.merge([y, cv2.resize(u, size, interpolation=cv2.INTER_NEAREST),
                     cv2.resize(v, size, interpolation=cv2.INTER_NEAREST)])
    return cv2.transform(yuv, _ycbcr_to_rgb_matrix(ycbcr.matrix, ycbcr.full_range))


def _yuv420_to_rgb_numpy(buffer: np.ndarray, width: int, height: int, ycbcr: YCbCr,
                         swap_uv: bool) -> np.ndarray:
    y_plane, u, v = _planes(buffer, width, height)
    if swap_uv:
        u, v = v, u
    m = _ycbcr_to_rgb_matrix(ycbcr.matrix, ycbcr.full_range)
    y = y_plane.astype(np.float32) * np.float32(m[0, 0])
    cb = u.astype(np.float32)
    cr = v.astype(np.float32)
    # Chroma is subsampled 2x2: compute the colour offsets at half resolution, then repeat them.
    offsets = np.stack([m[i, 1] * cb + m[i, 2] * cr + m[i, 3] for i in range(3)], axis=-1).astype(np.float32)
    offsets = np.repeat(np.repeat(offsets, 2, axis=0), 2, axis=1)[:height, :width]
    rgb = y[..., None] + offsets
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def yuv420_to_rgb(buffer: np.ndarray, width: int, height: int, colour_space: object = "SMPTE170M",
                  swap_uv: bool = False) -> np.ndarray:
    """Convert Picamera2's YUV420 array ((h*3/2, stride) with row padding) to HxWx3 uint8 RGB.

    The I420 layout is Y (h rows of ``stride``), then U and V, each h/2 rows of ``stride/2`` (V first
    with ``swap_uv``, YVU420). ``colour_space`` is what :func:`parse_colour_space` takes: a parsed
    :class:`YCbCr`, libcamera's ColorSpace, its ``str()`` or a bare name (sYCC, SMPTE170M, Rec709, Rec2020).
    """
    ycbcr = parse_colour_space(colour_space)
    if _cv2 is not None:
        if ycbcr.matrix == "Rec601" and not ycbcr.full_range:
            return _yuv420_to_rgb_cv2(buffer, width, height, swap_uv)
        return _yuv420_to_rgb_cv2_transform(buffer, width, height, ycbcr, swap_uv)
    return _yuv420_to_rgb_numpy(buffer, width, height, ycbcr, swap_uv)


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
        self._ycbcr = DEFAULT_YCBCR
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
        self._ycbcr = self._lores_ycbcr(actual.get("colour_space"))
        stream = actual.get(self._stream) or {}
        size = stream.get("size")
        if size is not None:
            if self.lores_size is not None:
                self.lores_size = tuple(size)
            else:
                self.main_size = tuple(size)

    def _lores_ycbcr(self, colour_space: Any) -> YCbCr:
        if colour_space is None:  # picamera2 reports none only for USB webcams
            return DEFAULT_YCBCR
        try:
            ycbcr = parse_colour_space(colour_space)
        except ValueError as exc:
            log.warning("picamera2: %s; decoding the lores stream as %s (%s)", exc, DEFAULT_YCBCR.name,
                        DEFAULT_YCBCR.describe())
            return DEFAULT_YCBCR
        log.info("picamera2: lores colour space %s (%s)", ycbcr.name, ycbcr.describe())
        return ycbcr

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
            image = yuv420_to_rgb(array, width, height, self._ycbcr)
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
                "lores_format": "YUV420" if self.lores_size else None, "colour_space": self._ycbcr.name,
                "fps": self.fps, "camera": self.camera_info, "platform": self._platform}
