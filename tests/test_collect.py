"""``edgedet collect``: the files it says it writes exist, at the model's input size (PNG, lossless), from the
synthetic source, a real MJPG video file (OpenCV) and the fake Pi camera; and ``publish.save_uncertain``
stays within its disk budget over a long run."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, run_cli
from PIL import Image

from edgedet import collect as collect_module
from edgedet.cli import build_parser
from edgedet.config import build_config
from edgedet.errors import ConfigError
from edgedet.model.preprocess import InputQuantization, Preprocessor
from edgedet.publish import uncertain
from edgedet.publish.config import SaveUncertainConfig
from edgedet.publish.uncertain import UncertainSink
from edgedet.results import Class, FrameResult

MODEL = REPO / "models" / "pikachu_mobilenet_v2_0.35_96_int8.tflite"
FAKES = REPO / "tests" / "fakes"


def _collect(tmp_path: Path, source: dict[str, object], *extra: str, env: dict[str, str] | None = None,
             count: int = 3) -> tuple[list[Path], list[Path]]:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"model": {"path": str(MODEL)}, "source": source}))
    run = run_cli("collect", str(tmp_path / "data"), "--label", "pikachu", "--count", str(count), "--full",
                  "--config", str(config), *extra, env=env)
    assert run.code == 0, run.err
    said = [Path(line) for line in run.out.splitlines()]
    views = [p for p in said if p.parent == tmp_path / "data" / "pikachu"]
    fulls = [p for p in said if p.parent == tmp_path / "data" / ".full" / "pikachu"]
    assert len(views) == len(fulls) == count and len(said) == 2 * count
    # exactly the files it said, nothing else
    assert sorted(p for p in (tmp_path / "data").rglob("*") if p.is_file()) == sorted(said)
    assert [p.name for p in views] == [p.name for p in fulls]
    for path in views:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (96, 96) and image.mode == "RGB"
    assert f"{count} frame(s) of 96x96 saved" in run.err
    return views, fulls


def _sizes(paths: list[Path]) -> set[tuple[int, int]]:
    sizes = set()
    for path in paths:
        with Image.open(path) as image:
            sizes.add(image.size)
    return sizes


def test_collect_from_the_synthetic_source(tmp_path: Path) -> None:
    views, fulls = _collect(tmp_path, {"type": "synthetic", "width": 160, "height": 120, "fps": 0})
    assert _sizes(fulls) == {(160, 120)}
    # lossless and as the model sees it: the full frame through the model's view is the saved view
    pre = Preprocessor(96, 96, _raw(), backend="auto")
    for view, full in zip(views, fulls):
        assert np.array_equal(np.asarray(Image.open(view)), pre.view(np.asarray(Image.open(full))))


def test_collect_every_skips_the_frames_between(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--every 0.25 with a clock that advances 0.1 s per frame read: frames 0, 3 and 6 of ten are saved."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(10):
        Image.fromarray(np.full((48, 64, 3), 20 * i, np.uint8)).save(frames / f"{i:02d}.png")
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"model": {"path": str(MODEL)},
                                  "source": {"type": "images", "path": str(frames), "fps": 0, "loop": False}}))

    class Clock:
        now = 0.0
        strftime, gmtime = staticmethod(time.strftime), staticmethod(time.gmtime)

        @classmethod
        def monotonic(cls) -> float:
            cls.now += 0.1
            return cls.now

    monkeypatch.setattr(collect_module, "time", Clock)
    args = build_parser().parse_args(["collect", str(tmp_path / "data"), "--label", "x", "--every", "0.25",
                                      "--count", "3", "--config", str(config)])
    assert collect_module.main(args) == 0
    saved = sorted((tmp_path / "data" / "x").iterdir())
    assert [int(np.asarray(Image.open(p)).mean()) for p in saved] == [0, 60, 120]


def test_collect_from_a_video_file(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG/AVI"
    for value in (30, 90, 150, 210, 250):
        writer.write(np.full((48, 64, 3), value, np.uint8))
    writer.release()
    views, fulls = _collect(tmp_path, {"type": "opencv", "path": str(video), "loop": False, "fps": 0}, count=4)
    assert _sizes(fulls) == {(64, 48)}
    means = [float(np.asarray(Image.open(p)).mean()) for p in views]
    assert means == sorted(means) and means[-1] - means[0] > 100  # four successive frames of the file


def test_collect_from_the_pi_camera_with_a_roi(tmp_path: Path) -> None:
    """The fake picamera2 (this machine has none): the lores stream is sized so the ROI has the input size."""
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(FAKES)])}
    views, fulls = _collect(tmp_path, {"type": "picamera2", "width": 640, "height": 480, "fps": 30},
                            "--set", "model.preprocess.roi=[0.5,0,1,1]", env=env)
    assert _sizes(fulls) == {(192, 96)}  # the lores stream: twice the input width for the right half
    for view, full in zip(views, fulls):  # the right half of the lores frame, not upscaled
        assert np.array_equal(np.asarray(Image.open(view)), np.asarray(Image.open(full))[:, 96:])


def test_collect_refuses_a_label_that_is_not_a_folder_name(tmp_path: Path) -> None:
    run = run_cli("collect", str(tmp_path), "--label", "a/b", "--set", "source.type=synthetic")
    assert run.code == 2 and "--label" in run.err and "Traceback" not in run.err


# ---------------------------------------------------------------- save_uncertain


def _raw() -> InputQuantization:
    return InputQuantization(np.dtype(np.uint8), np.ones(3, np.float32), np.zeros(3, np.float32), raw=True)


def _result(frame_id: int, label: str, score: float) -> FrameResult:
    return FrameResult(frame_id, time.time(), time.monotonic(), [Class(0, score, label)], {}, 0.0, "m")


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_save_uncertain_keeps_hard_examples_by_predicted_label(tmp_path: Path) -> None:
    pre = Preprocessor(96, 96, _raw(), roi=(0.5, 0.0, 1.0, 1.0))
    sink = UncertainSink(SaveUncertainConfig(dir=tmp_path, below=0.6), lambda name: pre, queue_size=100)
    frame = np.random.default_rng(1).integers(0, 256, (120, 160, 3), np.uint8)
    rows = [("cat", 0.9), ("cat", 0.5), ("cat", 0.95), ("dog", 0.99), ("dog", 0.99), ("dog", 0.3)]
    for i, (label, score) in enumerate(rows):
        sink.handle(_result(i, label, score), frame)
    sink.close()
    # frame 1: uncertain; frame 3: the label flipped; frame 5: uncertain
    assert sorted(p.parent.name + "/" + p.stem.split("_")[-1] for p in tmp_path.rglob("*.png")) == \
        ["cat/00000001", "dog/00000003", "dog/00000005"]
    assert sink.counters()["save_uncertain"]["saved"] == 3
    for path in tmp_path.rglob("*.png"):
        assert np.array_equal(np.asarray(Image.open(path)), pre.view(frame))
    assert not list(tmp_path.rglob("*.tmp"))


def test_save_uncertain_stays_under_max_mb_over_a_long_run(tmp_path: Path) -> None:
    """A real run of 600 uncertain frames with a 0.1 MB budget: many times the budget is written, the folder
    never ends above it (checked after the run by counting the bytes on disk)."""
    out = tmp_path / "hard"
    old = out / "cat"
    old.mkdir(parents=True)
    leftover = old / "20000101T000000.000_00000000.png"  # from an earlier run: the oldest, deleted first
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(leftover)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "model": {"path": str(MODEL)},
        "source": {"type": "synthetic", "width": 160, "height": 120, "fps": 0, "pattern": "gradient"},
        "publish": {"console": False, "save_uncertain": {"dir": str(out), "below": 1.0, "max_mb": 0.1}},
    }))
    stats_file = tmp_path / "stats.json"
    run = run_cli("run", "--config", str(config), "--max-frames", "600", "--stats-file", str(stats_file))
    assert run.code == 0, run.err
    counters = json.loads(stats_file.read_text())["save_uncertain"]
    budget = int(0.1 * 1024 * 1024)
    on_disk = _disk_bytes(out)
    assert counters["bytes_written"] > 3 * budget, counters  # many times the budget went through the folder
    assert counters["deleted"] > 0 and not leftover.exists()
    assert on_disk <= budget and on_disk == counters["bytes_on_disk"]
    assert counters["saved"] + counters["skipped"] == 600 and counters["errors"] == 0


def test_save_uncertain_encodes_and_writes_only_on_its_own_thread(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real_save = uncertain.save_png

    def spy(path: Path, rgb: np.ndarray) -> int:
        threads.append(threading.get_ident())
        return real_save(path, rgb)

    monkeypatch.setattr(uncertain, "save_png", spy)
    pre = Preprocessor(96, 96, _raw())
    sink = UncertainSink(SaveUncertainConfig(dir=tmp_path, below=1.0), lambda name: pre, queue_size=2)
    frame = np.zeros((120, 160, 3), np.uint8)
    for i in range(50):
        sink.handle(_result(i, "cat", 0.1), frame)
    sink.close()
    counters = sink.counters()["save_uncertain"]
    assert threads and threading.get_ident() not in threads
    assert counters["saved"] == len(threads) and counters["saved"] + counters["skipped"] == 50


def test_save_uncertain_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"publish\.save_uncertain\.max_mb: must be greater than 0"):
        build_config({"publish": {"save_uncertain": {"dir": "/tmp/x", "max_mb": 0}}}, "cfg.yaml")
