"""Frame -> model input: colour conversion, resize, normalization and quantization.

Preprocessing is part of correctness: the resize method and the normalization change the scores. The default
(``bilinear``, whole frame) has the semantics of TFLite's RESIZE_BILINEAR with half-pixel centers, which is
what the published reference results use. The resize tables depend only on the frame and input sizes, so they
are computed once per size and cached; the per-frame work is a few vectorised numpy gathers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgedet.errors import ImageError

ImageLike = Union[np.ndarray, Image.Image]


class FrameError(ValueError):
    """A frame that cannot be turned into an RGB image (wrong shape or dtype). The loop drops and counts it."""


def load_image(path: str | Path, max_pixels: int = 64_000_000) -> Image.Image:
    """Open and decode an image file, refusing non-images and decompression bombs with one clear line."""
    path = Path(path)
    if not path.exists():
        raise ImageError("image file not found", where=path, fix="check the path")
    if path.is_dir():
        raise ImageError("is a directory, not an image", where=path, fix="pass image files (or a glob)")
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; turn the warning into an error and use our
    # own limit so a crafted header cannot make a small box allocate gigabytes.
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return img.copy() if img.mode in ("RGB", "L") else img.convert(_target_mode(img))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused: image is larger than {max_pixels} pixels (possible decompression bomb: {exc})",
                         where=path, fix="resize it, or raise model.preprocess.max_image_pixels") from None
    except UnidentifiedImageError:
        raise ImageError("is not an image Pillow can decode", where=path,
                         fix="pass a JPEG, PNG, BMP, GIF, TIFF or WebP file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot decode image ({exc})", where=path, fix="the file may be truncated") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def _target_mode(img: Image.Image) -> str:
    return "I" if img.mode.startswith("I;16") or img.mode in ("I", "F") else "RGB"


def to_rgb(image: ImageLike) -> np.ndarray:
    """Any decoded image or camera frame -> HxWx3 uint8 RGB (a view where possible, no copy for RGB)."""
    if isinstance(image, Image.Image):
        if image.mode == "RGB":
            return np.asarray(image)
        if image.mode.startswith("I;16") or image.mode in ("I", "F"):
            return to_rgb(np.asarray(image))
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise FrameError(f"frame of shape {arr.shape} is not an HxW, HxWx1, HxWx3 or HxWx4 image")
    if arr.dtype != np.uint8:
        arr = _to_uint8(arr)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]  # drop alpha (RGBA/RGBX camera formats)
    return arr


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        # 32-bit "I" images from 16-bit PNGs hold 0..65535.
        top = 65535 if arr.size and int(arr.max()) > 255 else 255
        return (np.clip(arr, 0, top) * (255.0 / top) + 0.5).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise FrameError("frame contains NaN or infinite values")
        top_f = 1.0 if arr.size and float(arr.max()) <= 1.0 else 255.0
        return (np.clip(arr, 0.0, top_f) * (255.0 / top_f) + 0.5).astype(np.uint8)
    raise FrameError(f"frame dtype {arr.dtype} is not an image type")


Roi = tuple[float, float, float, float]


def roi_box(width: int, height: int, roi: Roi) -> tuple[int, int, int, int]:
    """The pixel box ``(x0, y0, x1, y1)`` of a fractional region of interest, at least one pixel each way."""
    x0 = min(round(roi[0] * width), width - 1)
    y0 = min(round(roi[1] * height), height - 1)
    x1 = max(round(roi[2] * width), x0 + 1)
    y1 = max(round(roi[3] * height), y0 + 1)
    return x0, y0, x1, y1


def crop_roi(rgb: np.ndarray, roi: Optional[Roi]) -> np.ndarray:
    """The region of interest of a frame (a view, no copy); the whole frame for None."""
    if roi is None:
        return rgb
    x0, y0, x1, y1 = roi_box(rgb.shape[1], rgb.shape[0], roi)
    return rgb[y0:y1, x0:x1]


def center_crop(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """The largest centred crop with the output's aspect ratio (a view, no copy)."""
    h, w = rgb.shape[:2]
    target = out_w / out_h
    if w / h > target:
        new_w = max(1, round(h * target))
        x0 = (w - new_w) // 2
        return rgb[:, x0:x0 + new_w]
    new_h = max(1, round(w / target))
    y0 = (h - new_h) // 2
    return rgb[y0:y0 + new_h, :]


@lru_cache(maxsize=32)
def _bilinear_axis(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights along one axis, as TFLite RESIZE_BILINEAR(half_pixel_centers=True)."""
    scale = in_len / out_len
    pos = (np.arange(out_len, dtype=np.float64) + 0.5) * scale - 0.5
    lower = np.floor(pos)
    frac = (pos - lower).astype(np.float32)
    i0 = np.clip(lower, 0, in_len - 1).astype(np.intp)
    i1 = np.clip(np.ceil(pos), 0, in_len - 1).astype(np.intp)
    return i0, i1, frac


@lru_cache(maxsize=32)
def _nearest_axis(in_len: int, out_len: int) -> np.ndarray:
    # TFLite RESIZE_NEAREST_NEIGHBOR with half_pixel_centers: floor((x + 0.5) * scale).
    return np.minimum(((np.arange(out_len) + 0.5) * (in_len / out_len)).astype(np.intp), in_len - 1)


class BilinearResizer:
    """TFLite RESIZE_BILINEAR (half-pixel centers) from one frame size to one output size.

    Fixed-point (11-bit weights, as OpenCV's INTER_LINEAR) with preallocated buffers: per frame it is six
    gathers and a few integer passes, with no allocation. Results are within 1 of the float formula.
    """

    _BITS = 11

    def __init__(self, in_h: int, in_w: int, out_h: int, out_w: int) -> None:
        y0, y1, fy = _bilinear_axis(in_h, out_h)
        x0, x1, fx = _bilinear_axis(in_w, out_w)
        one = 1 << self._BITS
        wy1 = np.rint(fy * one).astype(np.int32)
        wx1 = np.repeat(np.rint(fx * one).astype(np.int32), 3)
        self._wy = ((one - wy1)[:, None], wy1[:, None])
        self._wx = (one - wx1, wx1)
        channels = np.arange(3)
        self._cols = ((x0[:, None] * 3 + channels).ravel(), (x1[:, None] * 3 + channels).ravel())
        # Only the rows some output row reads are gathered (about 2 * out_h of in_h), sorted. Not np.unique:
        # it imports numpy.ma, which a run would then hold for good (about 1 MB resident).
        self._rows = np.flatnonzero(np.bincount(np.concatenate([y0, y1]), minlength=in_h))
        self._row_pos = (np.searchsorted(self._rows, y0), np.searchsorted(self._rows, y1))
        self._in_shape = (in_h, in_w * 3)
        self._out_shape = (out_h, out_w, 3)
        n_rows, n_cols = len(self._rows), out_w * 3
        self._gathered = np.empty((n_rows, in_w * 3), np.uint8)
        self._picked = np.empty((n_rows, n_cols), np.uint8)
        self._cols_acc = np.empty((n_rows, n_cols), np.int32)
        self._cols_tmp = np.empty((n_rows, n_cols), np.int32)
        self._acc = np.empty((out_h, n_cols), np.int32)
        self._tmp = np.empty((out_h, n_cols), np.int32)
        self._out = np.empty((out_h, n_cols), np.uint8)

    def __call__(self, rgb: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The resized image; written into ``out`` (out_h x out_w x 3, C-contiguous, any dtype) when given."""
        flat = rgb.reshape(self._in_shape) if rgb.flags.c_contiguous else rgb.reshape(self._in_shape).copy()
        np.take(flat, self._rows, axis=0, out=self._gathered)
        np.take(self._gathered, self._cols[0], axis=1, out=self._picked)
        np.multiply(self._picked, self._wx[0], out=self._cols_acc)
        np.take(self._gathered, self._cols[1], axis=1, out=self._picked)
        np.multiply(self._picked, self._wx[1], out=self._cols_tmp)
        np.add(self._cols_acc, self._cols_tmp, out=self._cols_acc)
        np.take(self._cols_acc, self._row_pos[0], axis=0, out=self._acc)
        np.multiply(self._acc, self._wy[0], out=self._acc)
        np.take(self._cols_acc, self._row_pos[1], axis=0, out=self._tmp)
        np.multiply(self._tmp, self._wy[1], out=self._tmp)
        np.add(self._acc, self._tmp, out=self._acc)
        np.add(self._acc, 1 << (2 * self._BITS - 1), out=self._acc)
        np.right_shift(self._acc, 2 * self._BITS, out=self._acc)
        if out is not None:
            np.copyto(out.reshape(self._acc.shape), self._acc, casting="unsafe")
            return out
        np.copyto(self._out, self._acc, casting="unsafe")
        return self._out.reshape(self._out_shape)


def resize_bilinear_reference(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """The float formula of TFLite RESIZE_BILINEAR(half_pixel_centers=True), for tests and checks."""
    h, w = rgb.shape[:2]
    y0, y1, fy = _bilinear_axis(h, out_h)
    x0, x1, fx = _bilinear_axis(w, out_w)
    top = rgb[y0].astype(np.float32)
    rows = top + (rgb[y1] - top) * fy[:, None, None]
    left = rows[:, x0]
    out = left + (rows[:, x1] - left) * fx[None, :, None]
    return (out + 0.5).astype(np.uint8)


def resize_bilinear(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    return BilinearResizer(rgb.shape[0], rgb.shape[1], out_h, out_w)(rgb).copy()


def resize_nearest(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    return rgb[_nearest_axis(h, out_h)][:, _nearest_axis(w, out_w)]


def resize_pil(rgb: np.ndarray, out_w: int, out_h: int, method: str) -> np.ndarray:
    resample = {"area": Image.Resampling.BOX, "antialias": Image.Resampling.LANCZOS}[method]
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((out_w, out_h), resample))


def resize(rgb: np.ndarray, out_w: int, out_h: int, method: str = "bilinear") -> np.ndarray:
    if rgb.shape[0] == out_h and rgb.shape[1] == out_w:
        return rgb
    if method == "bilinear":
        return resize_bilinear(rgb, out_w, out_h)
    if method == "nearest":
        return resize_nearest(rgb, out_w, out_h)
    return resize_pil(rgb, out_w, out_h, method)


@dataclass(frozen=True)
class InputQuantization:
    """How 0..255 RGB pixels become the model's input tensor values.

    real = (pixel - mean) / std is what the model was trained on; integer inputs then hold
    q = real / scale + zero_point. ``affine`` folds both into q = pixel * gain + offset per channel.
    """

    dtype: np.dtype
    gain: np.ndarray  # per channel, float32
    offset: np.ndarray  # per channel, float32
    raw: bool  # True: the tensor takes the pixels as they are (no arithmetic per frame)

    @classmethod
    def build(cls, dtype: np.dtype, scale: float, zero_point: int,
              mean: np.ndarray, std: np.ndarray) -> InputQuantization:
        dtype = np.dtype(dtype)
        mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), (3,))
        std = np.broadcast_to(np.asarray(std, dtype=np.float64), (3,))
        if dtype == np.float32:
            gain, offset = 1.0 / std, -mean / std
            return cls(dtype, gain.astype(np.float32), offset.astype(np.float32), raw=False)
        if not scale:
            raise ValueError("integer input without quantization parameters")
        gain = 1.0 / (std * scale)
        offset = zero_point - mean * gain
        # Within one quantization step of the identity over 0..255 (the Coral / TF-hosted quant MobileNets:
        # scale 1/128, zero point 128, trained on (p - 127.5) / 127.5) -> pass raw pixels, as the published
        # references (label_image, pycoral) do; rounding 1.0039 * p would only add noise.
        raw = dtype == np.uint8 and bool(np.all(np.abs(gain - 1) * 255 + np.abs(offset) <= 1.0 + 1e-6))
        return cls(dtype, gain.astype(np.float32), offset.astype(np.float32), raw=raw)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        if self.raw:
            return rgb
        out = np.empty(rgb.shape, self.dtype)
        self.apply_into(rgb, out, np.empty(rgb.shape, np.float32))
        return out

    def apply_into(self, rgb: np.ndarray, out: np.ndarray, scratch: np.ndarray,
                   sign: Optional[np.ndarray] = None) -> None:
        """:meth:`apply` written into ``out`` through float32 ``scratch`` and ``sign`` arrays of the same shape
        (``sign`` None: allocated here); with both given, no allocation."""
        if self.raw:
            np.copyto(out, rgb)
            return
        np.multiply(rgb, self.gain, out=scratch)
        np.add(scratch, self.offset, out=scratch)
        if self.dtype != np.float32:
            info = np.iinfo(self.dtype)
            # Round half away from zero, as TFLite's QUANTIZE kernel (std::round), not numpy's half-to-even.
            sign = np.sign(scratch, out=sign)
            np.abs(scratch, out=scratch)
            np.add(scratch, 0.5, out=scratch)
            np.floor(scratch, out=scratch)
            np.multiply(scratch, sign, out=scratch)
            np.clip(scratch, info.min, info.max, out=scratch)
        np.copyto(out, scratch, casting="unsafe")


def opencv_resize() -> Optional[Callable[..., np.ndarray]]:
    """OpenCV's INTER_LINEAR (half-pixel bilinear, SIMD) if OpenCV is importable, else None.

    Single-threaded: the frame loop gives the other cores to inference, and OpenCV's own thread pool would
    fight it.
    """
    from edgedet.cv import import_cv2

    cv2 = import_cv2()
    if cv2 is None:
        return None
    cv2.setNumThreads(1)

    def resize_cv2(rgb: np.ndarray, out_w: int, out_h: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        if out is None:
            return cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        # cv2 writes into dst in place when it has the output's size and type (uint8 HxWx3, contiguous),
        # else it allocates and returns a new array: checked, so a mismatch cannot pass silently.
        if cv2.resize(rgb, (out_w, out_h), dst=out, interpolation=cv2.INTER_LINEAR) is not out:
            raise RuntimeError("cv2.resize did not write into the buffer it was given")
        return out

    return resize_cv2


class Preprocessor:
    """Frame -> 1xHxWx3 input tensor for one model. Keeps the resize tables of the frame sizes it has seen.

    ``backend`` for ``bilinear``: ``numpy`` is the fixed-point implementation above (within 0.56 of TFLite's
    float RESIZE_BILINEAR, about 1.9 ms for 640x480 -> 224 on the build machine); ``opencv`` is OpenCV's
    INTER_LINEAR (same half-pixel sampling, coarser rounding: within 0.77 of TFLite's float result, about
    0.2 ms); ``auto`` takes OpenCV when it is installed.
    """

    def __init__(self, out_w: int, out_h: int, quant: InputQuantization,
                 method: str = "bilinear", crop: str = "full", backend: str = "auto",
                 roi: Optional[Roi] = None) -> None:
        self.out_w, self.out_h, self.quant, self.method, self.crop = out_w, out_h, quant, method, crop
        self.roi: Optional[Roi] = (float(roi[0]), float(roi[1]), float(roi[2]), float(roi[3])) \
            if roi is not None else None
        self._resizers: dict[tuple[int, int], BilinearResizer] = {}
        self._cv2 = opencv_resize() if method == "bilinear" and backend in ("auto", "opencv") else None
        if backend == "opencv" and self._cv2 is None:
            raise ImportError("model.preprocess.backend: opencv needs OpenCV (pip install 'edgedet[opencv]')")
        self.backend = "opencv" if self._cv2 is not None else "numpy"
        # backend auto looked for OpenCV and did not find it: numpy resizes, several times slower
        self.opencv_missing = method == "bilinear" and backend == "auto" and self._cv2 is None
        self._resized = np.empty((out_h, out_w, 3), np.uint8)  # for inputs that are not raw pixels
        self._scratch = np.empty((out_h, out_w, 3), np.float32)
        self._sign = np.empty((out_h, out_w, 3), np.float32)

    def _region(self, image: ImageLike) -> np.ndarray:
        """The part of the frame the model gets: the region of interest, then the centred crop (a view)."""
        rgb = crop_roi(to_rgb(image), self.roi)
        return center_crop(rgb, self.out_w, self.out_h) if self.crop == "center" else rgb

    def _resize(self, rgb: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """``rgb`` at the input size, written into ``out`` when given (and returned); without ``out`` the result
        may be ``rgb`` itself or a buffer that the next call reuses."""
        h, w = rgb.shape[:2]
        if (h, w) == (self.out_h, self.out_w) or self.method != "bilinear":
            done = rgb if (h, w) == (self.out_h, self.out_w) else resize(rgb, self.out_w, self.out_h, self.method)
            if out is None:
                return done
            np.copyto(out, done)
            return out
        if self._cv2 is not None:
            target = self._resized if out is None else out
            self._cv2(rgb, self.out_w, self.out_h, target)
            return target
        resizer = self._resizers.get((h, w))
        if resizer is None:
            if len(self._resizers) > 8:  # a source that changes size every frame must not grow memory
                self._resizers.clear()
            resizer = self._resizers[(h, w)] = BilinearResizer(h, w, self.out_h, self.out_w)
        return resizer(rgb, out)

    def copy(self, quant: Optional[InputQuantization] = None) -> Preprocessor:
        """The same view (size, ROI, crop, resize) with buffers of its own, for another thread (this one's are in
        use on the inference thread); ``quant``: another output (default: this one's)."""
        return Preprocessor(self.out_w, self.out_h, self.quant if quant is None else quant, self.method,
                            self.crop, self.backend, roi=self.roi)

    def frame_size_hint(self) -> tuple[int, int]:
        """(width, height) of a frame whose region of interest has the model's input size: what a source
        that scales for the model (the Pi camera's lores stream) should deliver, so a ROI is not upscaled."""
        if self.roi is None:
            return self.out_w, self.out_h
        x1, y1, x2, y2 = self.roi
        return math.ceil(self.out_w / (x2 - x1) - 1e-9), math.ceil(self.out_h / (y2 - y1) - 1e-9)

    def view(self, image: ImageLike) -> np.ndarray:
        """The frame as the model sees it, before quantization: the region of interest, the crop, resized to
        the input size (HxWx3 uint8; may be a buffer reused by the next call: copy it to keep it)."""
        return self._resize(self._region(image))

    def into(self, image: ImageLike, out: np.ndarray) -> None:
        """Preprocess ``image`` into ``out`` (HxWx3 of the model's input dtype, C-contiguous; e.g. a view of the
        interpreter's input tensor): raw-pixel models are resized straight into it, no allocation per frame."""
        rgb = self._region(image)
        if self.quant.raw:
            self._resize(rgb, out)
        else:
            self.quant.apply_into(self._resize(rgb, self._resized), out, self._scratch, self._sign)

    def __call__(self, image: ImageLike) -> np.ndarray:
        out = np.empty((self.out_h, self.out_w, 3), self.quant.dtype)
        self.into(image, out)
        return out[None]
