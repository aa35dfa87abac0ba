"""The OpenCV source with a real video file written here, plus its bad inputs (needs the opencv extra)."""

from __future__ import annotations

import logging
import socket

import numpy as np
import pytest
from helpers import read_all

from edgedet.errors import EXIT_USAGE, SourceError
from edgedet.frames import open_source
from edgedet.frames.config import SourceConfig
from edgedet.frames.opencv import OpenCVSource, classify_target, redact

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed "
                                        "(pip install 'edgedet[opencv]')")

# Solid RGB colours, one per frame; MJPG is lossy, so they are compared with a tolerance.
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


@pytest.fixture
def video_file(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG/AVI"
    for rgb in COLOURS:
        frame_rgb = np.zeros((48, 64, 3), np.uint8)
        frame_rgb[:] = rgb
        writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))  # OpenCV writes BGR
    writer.release()
    return path


def closed_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed




def test_reads_a_real_video_file_as_rgb_and_ends_when_loop_is_false(video_file):
    cfg = SourceConfig(type="opencv", path=str(video_file), fps=0, loop=False)
    with open_source(cfg) as source:
        frames = read_all(source, timeout_s=5.0)
        info = source.describe()
    assert len(frames) == len(COLOURS)
    assert [f.frame_id for f in frames] == list(range(len(COLOURS)))
    for frame, rgb in zip(frames, COLOURS):
        assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
        centre = frame.image[24, 32].astype(int)
        assert np.abs(centre - np.array(rgb)).max() <= 12, (centre, rgb)  # RGB order, not BGR
    assert info["type"] == "opencv" and info["kind"] == "file" and info["resolution"] == [64, 48]


def test_loop_true_rewinds_the_file(video_file):
    with OpenCVSource(str(video_file), 640, 480, fps=0, loop=True, timeout_s=5, max_retries=0) as source:
        frames = read_all(source, limit=len(COLOURS) + 2, timeout_s=5.0)
    assert len(frames) == len(COLOURS) + 2
    assert np.abs(frames[len(COLOURS)].image.astype(int) - frames[0].image.astype(int)).max() <= 2


def test_close_releases_and_later_reads_return_none(video_file):
    source = OpenCVSource(str(video_file), 64, 48, fps=0, loop=True, timeout_s=5, max_retries=0)
    source.open()
    assert source.read(5.0) is not None
    source.close()
    assert source.read(5.0) is None and source.capture is None


@pytest.mark.parametrize("path", [7, "7", "/dev/video7"])
def test_a_camera_that_does_not_exist_is_one_clear_error(path):
    source = open_source(SourceConfig(type="opencv", path=path))
    with pytest.raises(SourceError) as info:
        source.open()
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == EXIT_USAGE
    assert message.startswith("source.path: camera ") and "does not exist (/dev/video7 not found" in message


def test_an_unreachable_stream_retries_then_fails_with_one_clear_line(caplog):
    port = closed_loopback_port()
    cfg = SourceConfig(type="opencv", path=f"http://user:secret@127.0.0.1:{port}/stream.mjpg",
                       max_retries=2, timeout_s=2)
    caplog.set_level(logging.WARNING, logger="edgedet.frames.opencv")
    source = open_source(cfg)
    with pytest.raises(SourceError) as info:
        source.open()
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == EXIT_USAGE
    assert message.startswith(f"source.path: cannot open stream http://user:***@127.0.0.1:{port}/stream.mjpg "
                              "after 3 attempts")
    assert "secret" not in message
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2 and "retrying in 0.5 s" in retries[0] and "retrying in 1.0 s" in retries[1]


def test_a_missing_video_file_is_one_clear_error(tmp_path):
    source = open_source(SourceConfig(type="opencv", path=str(tmp_path / "nope.mp4")))
    with pytest.raises(SourceError, match=r"^source.path '.*nope.mp4': video file not found; "):
        source.open()


def test_a_file_opencv_cannot_decode_is_one_clear_error(tmp_path):
    bogus = tmp_path / "bogus.avi"
    bogus.write_bytes(b"this is not a video")
    with pytest.raises(SourceError, match=r"OpenCV cannot decode this video file"):
        OpenCVSource(str(bogus), 64, 48, 0, False, 5, 0).open()


def test_targets_are_classified():
    assert classify_target(None) == ("camera", 0)
    assert classify_target(2) == ("camera", 2)
    assert classify_target(" 3 ") == ("camera", 3)
    assert classify_target("/dev/video4") == ("device", "/dev/video4")
    assert classify_target("rtsp://cam.local/stream") == ("url", "rtsp://cam.local/stream")
    assert classify_target("clips/a.mp4") == ("file", "clips/a.mp4")
    assert redact("rtsp://admin:pw@10.0.0.2:554/s") == "rtsp://admin:***@10.0.0.2:554/s"
