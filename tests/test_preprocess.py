"""Preprocessing: colour conversion of every image kind, resize semantics against TFLite itself, quantization."""

from __future__ import annotations

import numpy as np
import pytest
import tflite_builder
from PIL import Image

from edgedet.model.preprocess import (
    BilinearResizer,
    FrameError,
    InputQuantization,
    Preprocessor,
    center_crop,
    opencv_resize,
    resize,
    resize_bilinear_reference,
    to_rgb,
)
from edgedet.model.runtime import select_runtime

RNG = np.random.default_rng(7)


def _tflite_resize(frame: np.ndarray, out_h: int, out_w: int, tmp_path) -> np.ndarray:
    """Run TFLite's own RESIZE_BILINEAR(half_pixel_centers=True) on the frame."""
    h, w = frame.shape[:2]
    path = tflite_builder.write(tmp_path / f"resize_{h}x{w}_{out_h}x{out_w}.tflite",
                                tflite_builder.resize_model(h, w, out_h, out_w))
    interpreter = select_runtime("auto").interpreter_class(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], frame[None].astype(np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]


@pytest.mark.parametrize(("shape", "out"), [((480, 640, 3), (224, 224)), ((480, 640, 3), (128, 128)),
                                            ((7, 5, 3), (224, 224)), ((1, 1, 3), (96, 96)),
                                            ((1080, 1920, 3), (192, 192)), ((100, 100, 3), (224, 160))])
def test_bilinear_matches_tflite_resize_bilinear(shape, out, tmp_path):
    frame = RNG.integers(0, 256, shape, dtype=np.uint8)
    reference = _tflite_resize(frame, out[0], out[1], tmp_path)
    ours = BilinearResizer(shape[0], shape[1], out[0], out[1])(frame)
    assert ours.shape == (out[0], out[1], 3)
    # Fixed-point weights: within 0.56 of TFLite's float result, so at most 1 after rounding.
    assert np.abs(ours - reference).max() < 0.6
    # and equal to TFLite's own result rounded, for nearly every pixel
    assert np.mean(np.floor(reference + 0.5) != ours) < 0.05
    assert np.abs(resize_bilinear_reference(frame, out[1], out[0]).astype(np.float32) - reference).max() < 0.6
    cv2_resize = opencv_resize()
    if cv2_resize is not None:  # the opencv backend: same sampling, coarser fixed point
        fast = cv2_resize(frame, out[1], out[0])
        assert np.abs(fast - reference).max() < 0.8
        assert np.abs(fast.astype(int) - ours).max() <= 1


@pytest.mark.parametrize("backend", ["numpy", "opencv"])
def test_preprocessor_backends(backend):
    if backend == "opencv" and opencv_resize() is None:
        pytest.skip("OpenCV is not installed (the opencv extra)")
    q = InputQuantization.build(np.uint8, 1 / 128, 128, np.array(127.5), np.array(127.5))
    pre = Preprocessor(224, 224, q, backend=backend)
    assert pre.backend == backend
    frame = RNG.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert pre(frame).shape == (1, 224, 224, 3)


def test_resizer_reuses_its_buffers_without_sharing_results_across_sizes():
    pre = Preprocessor(64, 64, InputQuantization.build(np.uint8, 1 / 128, 128, np.array(127.5), np.array(127.5)))
    a = RNG.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    b = RNG.integers(0, 256, (90, 90, 3), dtype=np.uint8)
    ta = pre(a).copy()
    tb = pre(b).copy()
    assert not np.array_equal(ta, tb)
    assert np.array_equal(pre(a), ta)


@pytest.mark.parametrize("method", ["nearest", "area", "antialias", "bilinear"])
def test_every_resize_method_gives_the_input_size(method):
    frame = RNG.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    out = resize(frame, 96, 64, method)
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8


def test_area_averages_blocks():
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[:2, :2] = 200
    out = resize(frame, 2, 2, "area")
    assert out[0, 0].tolist() == [200, 200, 200] and out[1, 1].tolist() == [0, 0, 0]


def test_nearest_picks_source_pixels():
    frame = np.arange(16, dtype=np.uint8).reshape(4, 4, 1).repeat(3, axis=2)
    out = resize(frame, 2, 2, "nearest")
    assert out[..., 0].tolist() == [[5, 7], [13, 15]]  # floor((x + 0.5) * 2): rows/cols 1 and 3


def test_center_crop_keeps_aspect_ratio():
    wide = np.zeros((480, 640, 3), np.uint8)
    assert center_crop(wide, 224, 224).shape == (480, 480, 3)
    tall = np.zeros((640, 480, 3), np.uint8)
    assert center_crop(tall, 224, 224).shape == (480, 480, 3)
    assert center_crop(wide, 320, 160).shape == (320, 640, 3)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "CMYK", "1", "I;16", "I", "F"])
def test_every_pil_mode_becomes_rgb_uint8(mode):
    img = Image.fromarray(RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert(mode) \
        if mode not in ("I;16", "I", "F") else Image.fromarray((RNG.integers(0, 65535, (20, 30))).astype(np.uint16))
    if mode in ("I", "F"):
        img = img.convert(mode)
    rgb = to_rgb(img)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8


def test_sixteen_bit_keeps_the_high_byte():
    img16 = np.full((4, 4), 0xABCD, np.uint16)
    assert to_rgb(img16)[0, 0].tolist() == [0xAB] * 3


@pytest.mark.parametrize(("arr", "expected"), [
    (np.full((3, 3), 7, np.uint8), [7, 7, 7]),
    (np.full((3, 3, 1), 9, np.uint8), [9, 9, 9]),
    (np.dstack([np.full((3, 3), v, np.uint8) for v in (1, 2, 3, 255)]), [1, 2, 3]),
    (np.full((3, 3, 3), 1.0, np.float32), [255, 255, 255]),
    (np.full((3, 3, 3), 128.0, np.float64), [128, 128, 128]),
])
def test_numpy_frames_of_any_layout(arr, expected):
    assert to_rgb(arr)[1, 1].tolist() == expected


@pytest.mark.parametrize("bad", [np.zeros((3, 3, 2), np.uint8), np.zeros((2, 3, 3, 3), np.uint8),
                                 np.zeros((0, 3, 3), np.uint8), np.full((2, 2, 3), np.nan, np.float32),
                                 np.zeros((2, 2, 3), np.complex64)])
def test_unusable_frames_raise_frame_error(bad):
    with pytest.raises(FrameError):
        to_rgb(bad)


def test_coral_quantization_is_raw_pixels():
    # scale 1/128, zero point 128, metadata mean/std 127.5: within one step of identity -> raw pixels.
    q = InputQuantization.build(np.uint8, 0.0078125, 128, np.array([127.5]), np.array([127.5]))
    frame = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert q.raw and q.apply(frame) is frame


def test_int8_input_quantizes_with_the_models_parameters():
    # real = (p - 127.5) / 127.5, q = real / scale + zp with scale 2/255, zp -1:
    # p=0 -> -128.5 -> clipped -128; p=128 -> -0.5 -> -1 and p=255 -> 126.5 -> 127 (half away from zero).
    q = InputQuantization.build(np.int8, 2 / 255, -1, np.array([127.5]), np.array([127.5]))
    out = q.apply(np.array([[[0, 128, 255]]], np.uint8))
    assert out.dtype == np.int8 and out.tolist() == [[[-128, -1, 127]]]


def test_float_input_normalizes_per_channel():
    q = InputQuantization.build(np.float32, 0.0, 0, np.array([0.0, 127.5, 255.0]), np.array([255.0, 127.5, 1.0]))
    out = q.apply(np.array([[[255, 255, 255]]], np.uint8))
    assert out.dtype == np.float32 and np.allclose(out, [[[1.0, 1.0, 0.0]]])
