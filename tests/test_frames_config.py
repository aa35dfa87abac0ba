"""Choosing a source by source.type, the auto fallback, and clear messages for bad source values."""

from __future__ import annotations

import logging

import pytest

from edgedet.config import build_config
from edgedet.errors import EXIT_USAGE, ConfigError
from edgedet.frames import open_source
from edgedet.frames.config import SourceConfig
from edgedet.frames.images import ImagesSource
from edgedet.frames.opencv import OpenCVSource
from edgedet.frames.picamera2 import Picamera2Source
from edgedet.frames.synthetic import SyntheticSource


def config_error(source: dict) -> str:
    with pytest.raises(ConfigError) as info:
        build_config({"source": source}, "config.yaml")
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == EXIT_USAGE
    return message


def test_unknown_source_type_names_the_key_and_the_choices():
    message = config_error({"type": "webcam"})
    assert message.startswith("config.yaml: source.type: must be 'auto', 'picamera2', 'opencv', "
                              "'images' or 'synthetic', got 'webcam'")


@pytest.mark.parametrize(("key", "value"), [("width", 0), ("width", -640), ("height", 0), ("height", -1)])
def test_zero_or_negative_size_names_the_key(key, value):
    message = config_error({"type": "synthetic", key: value})
    assert message.startswith(f"config.yaml: source.{key}: must be greater than or equal to 1, "
                              f"got {value}")


def test_negative_fps_names_the_key_and_zero_means_as_fast_as_possible():
    message = config_error({"fps": -5})
    assert message.startswith("config.yaml: source.fps: must be greater than or equal to 0, got -5")
    assert build_config({"source": {"fps": 0}}, "config.yaml").source.fps == 0


def test_unknown_source_key_suggests_the_close_one():
    assert "source.max_retries" in config_error({"max_retry": 3})


def test_each_type_builds_its_source():
    assert isinstance(open_source(SourceConfig(type="synthetic")), SyntheticSource)
    assert isinstance(open_source(SourceConfig(type="images", path="x/*.jpg")), ImagesSource)
    assert isinstance(open_source(SourceConfig(type="opencv", path=0)), OpenCVSource)
    camera = open_source(SourceConfig(type="picamera2", width=1280, height=720), (224, 224))
    assert isinstance(camera, Picamera2Source)
    assert camera.main_size == (1280, 720) and camera.lores_size == (224, 224)


def test_config_values_reach_the_source():
    cfg = build_config({"source": {"type": "opencv", "path": "rtsp://cam/s", "width": 320, "height": 240,
                                   "fps": 12, "timeout_s": 3, "max_retries": 4, "loop": False}}, "c.yaml")
    source = open_source(cfg.source)
    assert (source.kind, source.target, source.width, source.height) == ("url", "rtsp://cam/s", 320, 240)
    assert (source.fps, source.timeout_s, source.max_retries, source.loop) == (12, 3, 4, False)


def test_auto_on_this_machine_falls_back_to_synthetic_and_logs_why(caplog, monkeypatch):
    import edgedet.frames as frames

    # This machine has no Pi camera (picamera2 is not importable) and no /dev/video* devices.
    monkeypatch.setattr(frames, "pi_camera_present", lambda: False)
    monkeypatch.setattr(frames, "first_v4l2_camera", lambda: None)
    caplog.set_level(logging.INFO, logger="edgedet.frames")
    source = open_source(SourceConfig(type="auto", width=320, height=240, fps=0))
    assert isinstance(source, SyntheticSource) and (source.width, source.height) == (320, 240)
    assert "source.type auto -> synthetic (no Pi camera and no V4L2 camera found)" in caplog.text


def test_auto_picks_a_v4l2_camera_when_one_opens(caplog, monkeypatch):
    import edgedet.frames as frames

    monkeypatch.setattr(frames, "pi_camera_present", lambda: False)
    monkeypatch.setattr(frames, "first_v4l2_camera", lambda: "/dev/video2")
    caplog.set_level(logging.INFO, logger="edgedet.frames")
    source = open_source(SourceConfig(type="auto"))
    assert isinstance(source, OpenCVSource) and source.target == "/dev/video2"
    assert "source.type auto -> opencv (V4L2 camera /dev/video2 opens)" in caplog.text


def test_auto_detection_without_mocks_on_a_machine_without_cameras():
    import glob
    import importlib.util

    from edgedet.frames import detect_auto

    if glob.glob("/dev/video*") or importlib.util.find_spec("picamera2") is not None:
        pytest.skip("this machine has a video device or picamera2; the fallback path cannot be shown")
    assert detect_auto() == ("synthetic", None)
