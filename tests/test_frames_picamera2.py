"""The Pi camera source, against the fake picamera2 in tests/fakes (this machine has no Pi camera)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgedet.errors import EXIT_USAGE, SourceError
from edgedet.frames import detect_auto, open_source
from edgedet.frames.config import SourceConfig
from edgedet.frames.picamera2 import Picamera2Source, lores_size_for, yuv420_to_rgb

FAKES = str(Path(__file__).parent / "fakes")


@pytest.fixture
def fake():
    """Put the fake picamera2 first on sys.path for one test, with one IMX219 and Pi 4 (VC4) rules."""
    sys.path.insert(0, FAKES)
    for name in [m for m in sys.modules if m.split(".")[0] in ("picamera2", "libcamera")]:
        del sys.modules[name]
    import picamera2.fake as fake_control

    fake_control.reset()
    yield fake_control
    sys.path.remove(FAKES)
    for name in [m for m in sys.modules if m.split(".")[0] in ("picamera2", "libcamera")]:
        del sys.modules[name]


def test_lores_stream_at_the_model_size_is_yuv420_and_arrives_as_matching_rgb(fake):
    source = open_source(SourceConfig(type="picamera2", width=640, height=480, fps=60), (224, 224))
    with source:
        frame = source.read(2.0)
        camera = fake.state.instances[-1]
        config = camera.camera_configuration()
        info = source.describe()
    assert config["main"]["size"] == (640, 480)
    assert config["lores"]["size"] == (224, 224) and config["lores"]["format"] == "YUV420"
    assert config["queue"] is False  # captures wait for a fresh frame
    assert config["controls"]["FrameDurationLimits"] == (16667, 16667)
    assert frame.image.shape == (224, 224, 3) and frame.image.dtype == np.uint8
    # The fake's lores rows are padded to a 256-byte stride; the conversion must drop the padding and
    # reproduce the scene up to 4:2:0 chroma loss and rounding.
    expected = fake.scene(224, 224, 0).astype(int)
    diff = np.abs(frame.image.astype(int) - expected)
    assert diff.max() <= 8 and diff.mean() < 1.5
    assert info["resolution"] == [224, 224] and info["main"] == [640, 480] and info["lores"] == [224, 224]
    assert info["lores_format"] == "YUV420" and info["camera"]["Model"] == "imx219"
    assert info["colour_space"] == "SMPTE170M" and info["platform"] == "VC4"


def test_each_read_is_a_new_frame_captured_after_the_call_and_buffers_are_returned(fake):
    with Picamera2Source(0, (640, 480), fps=100, model_input_size=(128, 128)) as source:
        frames = []
        for _ in range(5):
            before = time.monotonic()
            frame = source.read(2.0)
            assert frame.captured_mono >= before  # not a frame completed before we asked
            frames.append(frame)
        camera = fake.state.instances[-1]
        assert camera._held_requests == 0  # every request released back to the camera
    assert [f.frame_id for f in frames] == list(range(5))
    assert all(f.captured_wall > 1e9 for f in frames)
    assert camera.is_open is False and fake.state.acquired == set()


def test_the_fake_hands_back_stale_frames_with_queue_true_which_is_why_edgedet_sets_false(fake):
    from picamera2 import Picamera2

    camera = Picamera2()
    camera.configure(camera.create_video_configuration(controls={"FrameDurationLimits": (10000, 10000)}))
    camera.start()
    time.sleep(0.05)
    before_ns = time.monotonic_ns()
    request = camera.capture_request(wait=1.0)
    assert request.get_metadata()["SensorTimestamp"] < before_ns
    request.release()
    camera.close()


def test_lores_never_exceeds_main(fake):
    assert lores_size_for((1024, 1024), (640, 480)) == (640, 480)
    assert lores_size_for((225, 223), (640, 480)) == (224, 222)  # even, as the ISP requires
    with Picamera2Source(0, (640, 480), fps=0, model_input_size=(1024, 1024)) as source:
        frame = source.read(2.0)
    assert frame.image.shape == (480, 640, 3)


def test_without_a_model_size_the_main_stream_is_read_as_rgb(fake):
    with Picamera2Source(0, (320, 240), fps=30) as source:
        frame = source.read(2.0)
        assert fake.state.instances[-1].camera_configuration()["lores"] is None
    assert np.array_equal(frame.image, fake.scene(320, 240, 0))  # BGR888 is R,G,B in memory


def test_each_colour_space_round_trips_and_a_wrong_one_would_show(fake):
    # Colour blocks aligned to the 2x2 chroma grid: 4:2:0 subsampling loses nothing, only rounding remains.
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, size=(16, 32, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)  # 32x64
    for colour_space in ("sYCC", "SMPTE170M", "Rec709"):
        buffer = fake.rgb_to_i420(image, 128, colour_space)  # stride 128 > width 64: padded rows
        rgb = yuv420_to_rgb(buffer, 64, 32, colour_space)
        assert np.abs(rgb.astype(int) - image.astype(int)).max() <= 3, colour_space
    wrong = yuv420_to_rgb(fake.rgb_to_i420(image, 128, "Rec709"), 64, 32, "sYCC")
    assert np.abs(wrong.astype(int) - image.astype(int)).max() > 10


def test_the_fake_rejects_what_the_real_library_rejects(fake):
    from picamera2 import Picamera2
    from picamera2.platform import Platform

    camera = Picamera2()
    too_big = camera.create_video_configuration(main={"size": (320, 240)}, lores={"size": (640, 480)})
    with pytest.raises(RuntimeError, match="lores stream dimensions may not exceed main stream"):
        camera.configure(too_big)
    rgb_lores = camera.create_video_configuration(main={"size": (640, 480)},
                                                  lores={"size": (224, 224), "format": "BGR888"})
    with pytest.raises(RuntimeError, match="lores stream must be YUV"):
        camera.configure(rgb_lores)
    with pytest.raises(ValueError, match="Bad key 'fps'"):
        camera.create_video_configuration(main={"size": (640, 480), "fps": 30})
    odd = camera.create_video_configuration(main={"size": (640, 480)})
    odd["lores"] = {"size": (223, 223), "format": "YUV420"}
    with pytest.raises(RuntimeError, match="width and height should be even"):
        camera.configure(odd)
    Picamera2.platform = Platform.PISP  # Pi 5: an RGB lores stream is allowed
    camera.configure(rgb_lores)
    camera.start()
    with pytest.raises(RuntimeError, match="Camera must be stopped before configuring"):
        camera.sensor_modes  # noqa: B018 - reading the property is the action under test
    camera.close()


def test_a_camera_index_that_does_not_exist_is_one_clear_error(fake):
    source = open_source(SourceConfig(type="picamera2", path=3), (224, 224))
    with pytest.raises(SourceError) as info:
        source.open()
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == EXIT_USAGE
    assert message == ("source.path: Pi camera index 3 does not exist (found 0: imx219); "
                       "set source.path to 0..0")


def test_no_pi_camera_is_one_clear_error(fake):
    fake.state.cameras = []
    with pytest.raises(SourceError, match=r"^source.type picamera2: no Raspberry Pi camera found; check"):
        Picamera2Source(0, (640, 480), 30, (224, 224)).open()


def test_a_busy_camera_is_one_clear_error(fake):
    with Picamera2Source(0, (640, 480), 30, (224, 224)), \
            pytest.raises(SourceError, match=r"cannot open Pi camera 0: .*is another program"):
        Picamera2Source(0, (640, 480), 30, (224, 224)).open()


def test_a_rejected_configuration_is_one_clear_error_and_frees_the_camera(fake):
    from picamera2 import Picamera2
    from picamera2.platform import Platform

    Picamera2.platform = Platform.VC4
    source = Picamera2Source(0, (640, 480), 30, (224, 224))
    source.lores_size = (800, 600)  # bigger than main: what a wrong size calculation would produce
    with pytest.raises(SourceError, match=r"^source.width/source.height: the camera rejected the stream "
                                          r"configuration: lores stream dimensions may not exceed main"):
        source.open()
    assert fake.state.acquired == set()


def test_missing_picamera2_library_names_the_apt_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    with pytest.raises(SourceError) as info:
        Picamera2Source(0, (640, 480), 30).open()
    assert str(info.value) == ("source.type picamera2: the picamera2 library is not installed; on "
                               "Raspberry Pi OS: sudo apt install python3-picamera2, and create the venv "
                               "with python3 -m venv --system-site-packages")


def test_a_stalled_camera_times_out_as_a_transient_error_and_reopens(fake):
    source = Picamera2Source(0, (640, 480), 30, (224, 224))
    source.open()
    source.read(2.0)
    fake.state.stalled = True
    with pytest.raises(TimeoutError):
        source.read(0.05)
    source.close()
    fake.state.stalled = False
    source.open()  # what the loop does after a failure: close, back off, reopen
    assert source.read(2.0).frame_id == 0
    source.close()


def test_auto_prefers_the_pi_camera_when_one_is_present(fake):
    assert detect_auto() == ("picamera2", None)
    fake.state.cameras = []
    assert detect_auto()[0] in ("opencv", "synthetic")


def _reference_rgb(buffer: np.ndarray, width: int, height: int, kr: float, kb: float,
                   full_range: bool) -> np.ndarray:
    """Textbook YCbCr -> RGB in float64, written out per channel (independent of edgedet's matrix)."""
    flat = buffer.reshape(-1)
    stride = buffer.shape[1]
    chroma = (stride // 2) * (height // 2)
    start = height * stride
    y = buffer[:height, :width].astype(np.float64)
    u = flat[start:start + chroma].reshape(height // 2, stride // 2)[:, :width // 2].astype(np.float64)
    v = flat[start + chroma:start + 2 * chroma].reshape(height // 2, stride // 2)[:, :width // 2]
    cb = np.repeat(np.repeat(u - 128, 2, 0), 2, 1)
    cr = np.repeat(np.repeat(v.astype(np.float64) - 128, 2, 0), 2, 1)
    if not full_range:
        y, cb, cr = (y - 16) * 255 / 219, cb * 255 / 224, cr * 255 / 224
    r = y + 2 * (1 - kr) * cr
    b = y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8)


# libcamera's standard YCbCr spaces: the matrix (Kr, Kb) and range each one means.
MEANINGS = {"sYCC": (0.299, 0.114, True), "SMPTE170M": (0.299, 0.114, False),
            "Rec709": (0.2126, 0.0722, False), "Rec2020": (0.2627, 0.0593, False)}


@pytest.mark.parametrize("name", list(MEANINGS))
def test_the_real_libcamera_colour_space_takes_the_fast_path_with_its_own_matrix(fake, monkeypatch, name):
    from libcamera import ColorSpace

    import edgedet.frames.picamera2 as module

    if module._cv2 is None:
        pytest.skip("opencv-python-headless is not installed: only the numpy conversion exists here")
    space = getattr(ColorSpace, {"sYCC": "Sycc", "SMPTE170M": "Smpte170m"}.get(name, name))()
    text = str(space)
    assert text == f"<libcamera.ColorSpace '{name}'>"  # what the real binding's __str__ returns
    kr, kb, full_range = MEANINGS[name]
    # Random codes in the legal range (OpenCV clamps limited-range Y below 16, the reference does not).
    rng = np.random.default_rng(7)
    low, high = (0, 255) if full_range else (16, 235)
    buffer = rng.integers(low, high + 1, size=(336, 256), dtype=np.uint8)  # 224x224 in a 256 stride
    expected = _reference_rgb(buffer, 224, 224, kr, kb, full_range)
    calls = []
    for fast in ("_yuv420_to_rgb_cv2", "_yuv420_to_rgb_cv2_transform"):
        original = getattr(module, fast)
        monkeypatch.setattr(module, fast, lambda *a, _f=original, _n=fast, **k: calls.append(_n) or _f(*a, **k))
    for given in (space, text, name, module.parse_colour_space(text)):
        rgb = module.yuv420_to_rgb(buffer, 224, 224, given)
        assert np.abs(rgb.astype(int) - expected.astype(int)).max() <= 1, (name, given)
    assert len(calls) == 4, calls  # every form of the name took an OpenCV path
    assert module.parse_colour_space(space) == module.parse_colour_space(text) == module.YCbCr(
        name, {0.299: "Rec601", 0.2126: "Rec709", 0.2627: "Rec2020"}[kr], full_range)
    monkeypatch.setattr(module, "_cv2", None)
    slow = module.yuv420_to_rgb(buffer, 224, 224, text)
    assert np.abs(slow.astype(int) - expected.astype(int)).max() <= 1


def test_a_wrong_matrix_or_range_would_show_against_the_reference():
    rng = np.random.default_rng(3)
    buffer = rng.integers(16, 236, size=(48, 64), dtype=np.uint8)
    sycc = yuv420_to_rgb(buffer, 64, 32, "<libcamera.ColorSpace 'sYCC'>").astype(int)
    for other in ("SMPTE170M", "Rec709", "Rec2020"):
        assert np.abs(yuv420_to_rgb(buffer, 64, 32, other).astype(int) - sycc).max() > 10, other


def test_colour_space_text_that_is_not_ycbcr_is_refused():
    from edgedet.frames.picamera2 import parse_colour_space

    # libcamera's toString() for a non-standard space: the four fields, as picamera2 can hand back for a
    # main RGB stream whose YCbCr fields libcamera dropped; the matrix follows the primaries.
    assert parse_colour_space("<libcamera.ColorSpace 'Rec2020/Rec709/None/Full'>").name == "Rec2020"
    assert parse_colour_space("Rec709/sRGB/Rec601/Full").name == "sYCC"
    for text in ("<libcamera.ColorSpace 'RAW'>", "<libcamera.ColorSpace 'sRGB'>", "SMPTE-170M", ""):
        with pytest.raises(ValueError, match="colour space"):
            parse_colour_space(text)


@pytest.mark.parametrize(("main", "expected"), [((640, 480), "SMPTE170M"), ((1280, 720), "Rec709")])
def test_the_source_decodes_lores_with_the_space_picamera2_chose(fake, main, expected):
    # picamera2's video default: SMPTE170M below 1280x720, Rec709 from there; the ISP encodes lores with it.
    with Picamera2Source(0, main, 30, (224, 224)) as source:
        frame = source.read(2.0)
        reported = fake.state.instances[-1].camera_configuration()["colour_space"]
        info = source.describe()
    assert str(reported) == f"<libcamera.ColorSpace '{expected}'>"
    assert info["colour_space"] == expected
    diff = np.abs(frame.image.astype(int) - fake.scene(224, 224, 0).astype(int))
    assert diff.max() <= 8 and diff.mean() < 1.5


def test_rec2020_reported_without_its_ycbcr_fields_still_decodes_as_rec2020(fake):
    from libcamera import ColorSpace
    from picamera2 import Picamera2

    camera = Picamera2()
    camera.configure(camera.create_video_configuration(main={"size": (640, 480)},
                                                       lores={"size": (224, 224), "format": "YUV420"},
                                                       colour_space=ColorSpace.Rec2020()))
    reported = camera.camera_configuration()["colour_space"]
    camera.close()
    assert str(reported) == "<libcamera.ColorSpace 'Rec2020/Rec709/None/Full'>"  # main is RGB
    from edgedet.frames.picamera2 import parse_colour_space

    assert parse_colour_space(reported).matrix == "Rec2020" and not parse_colour_space(reported).full_range
