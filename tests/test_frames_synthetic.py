"""The synthetic source: deterministic frames, pacing, timeouts, and close() from another thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgedet.frames import FramePacer, open_source
from edgedet.frames.config import SourceConfig
from edgedet.frames.synthetic import SyntheticSource


def read_n(source, n):
    return [source.read(1.0) for _ in range(n)]


def test_frames_are_rgb_uint8_of_the_configured_size_with_increasing_ids():
    with open_source(SourceConfig(type="synthetic", width=320, height=240, fps=0)) as source:
        frames = read_n(source, 5)
    assert [f.frame_id for f in frames] == [0, 1, 2, 3, 4]
    for frame in frames:
        assert frame.image.shape == (240, 320, 3) and frame.image.dtype == np.uint8
        assert frame.captured_wall > 1e9  # a wall-clock timestamp, not a monotonic one
    monos = [f.captured_mono for f in frames]
    assert monos == sorted(monos)
    # Consecutive frames differ (the pattern moves), so a consumer can tell them apart.
    assert not np.array_equal(frames[0].image, frames[1].image)
    assert frames[0].image.std() > 20  # not a flat colour


def test_same_seed_same_frames_and_another_seed_other_frames():
    a, b, c = (SyntheticSource(64, 48, 0, seed=s) for s in (7, 7, 8))
    for s in (a, b, c):
        s.open()
    fa, fb, fc = read_n(a, 10), read_n(b, 10), read_n(c, 10)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(fa, fb))
    assert not np.array_equal(fa[0].image, fc[0].image)
    # Reopening restarts the sequence at frame 0 with the same content.
    a.close()
    a.open()
    again = a.read(1.0)
    assert again.frame_id == 0 and np.array_equal(again.image, fa[0].image)


def test_frames_are_read_only_so_a_consumer_cannot_corrupt_the_cycle():
    with SyntheticSource(32, 32, 0) as source:
        frame = source.read(1.0)
        with pytest.raises(ValueError):
            frame.image[0, 0, 0] = 1


def test_fps_paces_frames_no_faster_than_requested():
    with SyntheticSource(32, 32, fps=50) as source:
        start = time.monotonic()
        frames = read_n(source, 6)
        elapsed = time.monotonic() - start
    # Five periods of 20 ms must have passed between the first and the sixth frame (a lower bound only).
    assert elapsed >= 5 * 0.02 - 1e-3
    assert frames[-1].captured_mono - frames[0].captured_mono >= 5 * 0.02 - 1e-3


def test_a_frame_due_after_the_timeout_raises_timeout_error():
    with SyntheticSource(32, 32, fps=0.2) as source:
        source.read(1.0)  # the first frame is due at once
        with pytest.raises(TimeoutError):
            source.read(0.05)  # the next one is 5 s away


def test_close_from_another_thread_unblocks_a_waiting_read():
    source = SyntheticSource(32, 32, fps=0.1)
    source.open()
    source.read(1.0)
    threading.Timer(0.1, source.close).start()
    assert source.read(30.0) is None  # returns as soon as closed, not after 10 s


def test_pacer_restarts_its_schedule_after_falling_behind_instead_of_bursting():
    stop = threading.Event()
    pacer = FramePacer(100, stop)
    assert pacer.wait(1.0)
    time.sleep(0.1)  # the consumer fell ten periods behind
    assert pacer.wait(1.0)
    start = time.monotonic()
    assert pacer.wait(1.0)
    # No catch-up burst: the frame after a late one still waits (about) one period.
    assert time.monotonic() - start >= 0.01 - 1e-3


def test_max_frames_exhausts_the_source():
    with SyntheticSource(16, 16, 0, max_frames=3) as source:
        frames = read_n(source, 4)
    assert [f is None for f in frames] == [False, False, False, True]


def test_describe_names_the_type_and_resolution():
    source = open_source(SourceConfig(type="synthetic", width=640, height=480, fps=15))
    assert source.describe() == {"type": "synthetic", "resolution": [640, 480], "fps": 15.0, "seed": 0,
                                 "pattern": "scenes"}


def test_scenes_show_the_bundled_model_both_classes():
    """The shipped config's synthetic source + the bundled model give real classifications out of the box."""
    from pathlib import Path

    from edgedet.model.classifier import Classifier
    from edgedet.model.config import ModelConfig

    model = Path(__file__).resolve().parents[1] / "models" / "pikachu_mobilenet_v2_0.35_96_int8.tflite"
    classifier = Classifier.from_config(ModelConfig(path=model, num_threads=1))
    source = open_source(SourceConfig(type="synthetic", width=640, height=480, fps=0))
    labels = []
    with source:
        for _ in range(8):
            frame = source.read(1.0)
            labels.append(classifier.infer(frame.image).top_k[0].label)
    # scenes alternate with and without the creature; the model must tell them apart on nearly all
    expected = ["pikachu", "no-pikachu"] * 4
    assert sum(a == b for a, b in zip(labels, expected)) >= 7, labels
