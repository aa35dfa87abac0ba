"""The bounded frame loop: latest-frame policy, bounds, failures and reopen, bad frames, signals, stats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tflite_builder
from helpers import REPO, assert_one_line_error, run_cli
from PIL import Image

from edgedet.config import build_config
from edgedet.frames import open_source
from edgedet.frames.base import Frame, FrameSource
from edgedet.loop import Captured, FrameLoop, LatestSlot, ReadChooser, RollingStats, auto_threads, percentiles
from edgedet.model.classifier import Classifier
from edgedet.model.config import ModelConfig
from edgedet.publish.jsonl import JsonlSink
from edgedet.results import FrameResult


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    (folder / "tiny_labels.txt").write_text("red\ngreen\nblue\n")
    (folder / "slow_labels.txt").write_text("red\ngreen\nblue\n")
    (folder / "empty.yaml").write_text("# every key at its default\n")
    return {"config": folder / "empty.yaml",
            "tiny": tflite_builder.write(folder / "tiny.tflite", tflite_builder.tiny_classifier()),
            "slow": tflite_builder.write(folder / "slow.tflite", tflite_builder.slow_classifier())}


def classifier(path: Path) -> Classifier:
    return Classifier.from_config(ModelConfig(path=path, num_threads=1))


def synthetic(width: int = 160, height: int = 120, fps: float = 0) -> FrameSource:
    cfg = build_config({"source": {"type": "synthetic", "width": width, "height": height, "fps": fps}}, "test")
    return open_source(cfg.source)


class Collect:
    def __init__(self) -> None:
        self.results: list[FrameResult] = []
        self.frame_shapes: list[tuple[int, ...]] = []

    def handle(self, result: FrameResult, frame: Any = None) -> None:
        self.results.append(result)
        self.frame_shapes.append(frame.shape if frame is not None else ())

    def close(self, flush_timeout_s: float | None = None) -> None:
        pass


def test_on_demand_source_is_read_just_in_time_without_drops(models):
    sink = Collect()
    stats = FrameLoop(classifier(models["slow"]), synthetic(fps=0), [sink], max_frames=15).run()
    assert stats.frames_processed == 15 and stats.frames_dropped <= 1
    # read shortly before the model was free: the age is about one inference, not two
    ages = sorted(r.frame_age_ms - r.latency_ms["inference"] for r in sink.results)
    assert ages[len(ages) // 2] < 50


@pytest.mark.parametrize("count", [1, 2, 5, 1000, 1024])
def test_percentiles_are_numpys_linear_percentiles(count):
    values = list(np.random.default_rng(count).gamma(2.0, 3.0, size=count))
    expected = {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (0, 50, 90, 99, 100)}
    assert percentiles(values, (0, 50, 90, 99, 100)) == expected
    assert percentiles([], (50, 90)) == {"p50": None, "p90": None}


def test_stats_snapshot_holds_the_loop_lock_only_to_copy(monkeypatch):
    """A stats message must not stall the frame loop: the loop's lock is free while percentiles are computed."""
    stats = RollingStats()
    for i in range(1024):
        stats.processed({"inference": float(i), "total": float(i) + 1.0})
    locked_during_sort = []
    original_sort = np.sort

    def recording_sort(array, *args, **kwargs):
        locked_during_sort.append(stats._lock.locked())
        return original_sort(array, *args, **kwargs)

    monkeypatch.setattr(np, "sort", recording_sort)
    snapshot = stats.snapshot(frames_dropped=3)
    assert locked_during_sort and not any(locked_during_sort)
    assert snapshot.latency_ms["inference"] == {"p50": 511.5, "p90": 920.7, "p99": 1012.77}
    assert snapshot.frames_processed == 1024 and snapshot.frames_dropped == 3


def test_latest_slot_replaces_unread_and_counts():
    slot = LatestSlot()
    frames = [Captured(Frame(i, np.zeros((1, 1, 3), np.uint8), 0.0, 0.0), i) for i in range(3)]
    for item in frames:
        slot.put(item)
    assert slot.replaced == 2
    assert slot.take(0.01).frame_id == 2  # the newest
    assert slot.take(0.01) is None


def test_latest_slot_hands_over_across_threads_and_wakes() -> None:
    slot = LatestSlot()
    item = Captured(Frame(0, np.zeros((1, 1, 3), np.uint8), 0.0, 0.0), 7)
    got: list = []
    waiting = threading.Thread(target=lambda: got.append(slot.take(30)))
    waiting.start()
    slot.put(item)
    waiting.join(30)
    assert got == [item]
    assert slot.take(0) is None  # taken once only
    waiting = threading.Thread(target=lambda: got.append(slot.take(30)))
    waiting.start()
    slot.wake()  # an empty slot: the waiting take ends with None
    waiting.join(30)
    assert not waiting.is_alive() and got[1:] == [None]
    slot.wake()
    slot.wake()  # a second wake before any take must not fail (the lock is released once)
    assert slot.take(30) is None  # ends at once: a wake is pending
    assert slot.take(0) is None


def test_latest_slot_under_a_racing_producer_loses_no_count() -> None:
    """Every item put is either taken or counted as replaced, and each take gets a newer item than the last."""
    slot = LatestSlot()
    count = 20000

    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(count):
                slot.put(Captured(Frame(i, np.zeros((1, 1, 3), np.uint8), 0.0, 0.0), i))
                if i % 3 == 0:
                    slot.wake()  # wakes racing the puts, as a source switch does
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    taken: list[int] = []
    while True:
        alive = producer.is_alive()
        item = slot.take(0.05)
        if item is not None:
            taken.append(item.frame_id)
        elif not alive:  # the producer had ended before this take found the slot empty
            break
    producer.join()
    assert errors == []
    assert taken == sorted(set(taken)) and taken[-1] == count - 1
    assert len(taken) + slot.replaced == count


def test_slow_model_fast_source_drops_frames_and_takes_the_newest(models):
    sink = Collect()
    # a paced 1000 fps source (like a camera, not on demand) in front of a ~12 ms model
    loop = FrameLoop(classifier(models["slow"]), synthetic(fps=1000), [sink], max_frames=15)
    stats = loop.run()
    assert stats.frames_processed == 15 and len(sink.results) == 15
    assert stats.frames_dropped > 15 * 5, stats  # the source is far faster than the model
    assert stats.frames_captured >= stats.frames_processed + stats.frames_dropped
    ids = [r.frame_id for r in sink.results]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    gaps = np.diff(ids)
    assert gaps.mean() > 3  # skipped over dropped frames rather than queueing them
    # each result is fresh: its age is about one inference, not a backlog
    assert all(r.frame_age_ms < 2000 for r in sink.results)


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_memory_stays_flat_over_many_frames(models):
    marks: dict[int, int] = {}

    def on_frame(result: FrameResult) -> None:
        if result is not None and loop.stats.frames_processed in (1000, 6000):
            marks[loop.stats.frames_processed] = _rss_kb()

    loop = FrameLoop(classifier(models["tiny"]), synthetic(320, 240), [JsonlSink(os.devnull)],
                     max_frames=6000, on_frame=on_frame)
    stats = loop.run()
    assert stats.frames_processed == 6000
    growth_kb = marks[6000] - marks[1000]
    assert growth_kb < 2048, f"RSS grew {growth_kb} kB over 5000 frames"


def test_max_frames_and_duration_bound_a_run(models):
    stats = FrameLoop(classifier(models["tiny"]), synthetic(), [], max_frames=7).run()
    assert stats.frames_processed == 7
    started = time.monotonic()
    stats = FrameLoop(classifier(models["tiny"]), synthetic(fps=50), [], duration_s=0.6).run()
    assert 0.5 <= time.monotonic() - started < 5
    assert 1 <= stats.frames_processed <= 31  # 50 fps for 0.6 s: never more than the source gave


def test_max_fps_throttles(models):
    started = time.monotonic()
    stats = FrameLoop(classifier(models["tiny"]), synthetic(), [], max_fps=20, max_frames=10).run()
    assert time.monotonic() - started >= 0.4  # 10 frames at 20 fps need at least 9 periods
    assert stats.frames_processed == 10


class FlakySource(FrameSource):
    """Our own FrameSource that fails after a few frames per open, or hands out bad frames."""

    def __init__(self, fail_after: int = 3, bad_every: int = 0, stall: bool = False) -> None:
        super().__init__()
        self.fail_after, self.bad_every, self.stall = fail_after, bad_every, stall
        self.opens = 0
        self._count = 0

    def open(self) -> None:
        self.opens += 1
        self._count = 0
        self._closed.clear()

    def read(self, timeout_s: float) -> Frame | None:
        if self.closed:
            return None
        self._count += 1
        if self.fail_after and self._count > self.fail_after:
            if self.stall:
                if self._closed.wait(timeout_s):
                    return None
                raise TimeoutError(f"no frame within {timeout_s} s")
            raise OSError("camera cable wiggled")
        time.sleep(0.002)
        if self.bad_every and self._count % self.bad_every == 0:
            return self._make_frame(np.zeros((4, 4, 2), np.uint8))  # two channels: unusable
        return self._make_frame(np.full((16, 16, 3), 100, np.uint8))

    def describe(self) -> dict[str, Any]:
        return {"type": "flaky"}


def test_read_chooser_reads_inline_only_while_the_work_leaves_most_of_the_interval_idle():
    chooser = ReadChooser(window=4)
    decisions = []

    def window(work_s: float, first_id: int, step: int = 1) -> None:
        for n in range(4):
            frame_id = first_id + n * step
            chooser.taken(frame_id, frame_id / 30)  # a 30 fps camera: 33.3 ms between frames
            decisions.append(chooser.worked(work_s))

    window(0.005, 0, step=3)  # two of every three frames replaced in the slot: the interval is still 33 ms
    assert decisions == [None, None, None, True] and chooser.inline
    assert chooser.interval_s == pytest.approx(1 / 30)
    decisions.clear()
    window(0.022, 100)  # 0.66 of the interval: between the bounds, no flapping
    window(0.024, 200)  # 0.72
    assert decisions == [None] * 8 and chooser.inline
    window(0.026, 300)  # 0.78: above 0.75, the capture thread again
    assert decisions[-1] is False and not chooser.inline
    decisions.clear()
    window(0.017, 400)  # 0.51: not below 0.5
    assert decisions == [None] * 4 and not chooser.inline
    window(0.015, 500)
    assert decisions[-1] is True


def test_read_chooser_decides_on_the_upper_quartile_and_needs_an_interval():
    def decide(slow: int) -> bool | None:
        chooser = ReadChooser(window=8)
        result = None
        for n in range(8):
            chooser.taken(n, n / 30)
            result = chooser.worked(0.030 if n < slow else 0.001)
        return result

    assert decide(slow=1) is True  # one slow frame of eight: the upper quartile is fast
    assert decide(slow=2) is None  # two: it is slow, the capture thread stays
    blind = ReadChooser(window=2)
    assert [blind.worked(0.001), blind.worked(0.001)] == [None, None]  # no frame taken: no interval known


class Flipping(ReadChooser):
    """Switches between inline reads and the capture thread every few frames, whatever the timing."""

    def __init__(self, every: int = 5) -> None:
        super().__init__()
        self.every, self.calls, self.switches = every, 0, 0

    def worked(self, seconds: float) -> bool | None:
        self.calls += 1
        if self.calls % self.every:
            return None
        self.inline = not self.inline
        self.switches += 1
        return self.inline


def test_switching_between_inline_reads_and_the_capture_thread_loses_and_repeats_no_frame(models):
    sink, choosers, modes = Collect(), [], []

    def chooser() -> ReadChooser:
        choosers.append(Flipping())
        return choosers[-1]

    loop = FrameLoop(classifier(models["tiny"]), synthetic(fps=200), [sink], max_frames=120, read_chooser=chooser)

    def on_frame(result: FrameResult) -> None:
        capture = loop.capture
        modes.append("inline" if loop.inline and capture is None else
                     "thread" if not loop.inline and capture is not None and capture.is_alive() else "other")

    loop.on_frame = on_frame
    stats = loop.run()
    assert stats.frames_processed == 120 and choosers[0].switches >= 8
    assert modes.count("inline") >= 30 and modes.count("thread") >= 30, modes
    ids = [r.frame_id for r in sink.results]
    assert ids == sorted(set(ids))  # in order, none twice
    # every frame read was classified or counted as replaced in the slot; at the end at most the one in the slot
    # and the one the capture thread was reading are neither (the capture thread's last frame before it hands
    # the source back is classified, not lost)
    assert 0 <= stats.frames_captured - stats.frames_processed - stats.frames_dropped <= 2, stats
    assert loop.capture is None or not loop.capture.is_alive()


def test_the_capture_threads_last_frame_before_it_hands_back_is_the_next_one_classified(models):
    loop = FrameLoop(classifier(models["tiny"]), synthetic(fps=200), [])
    capture = loop.capture
    assert capture is not None and not loop.inline
    capture.start()
    try:
        assert loop._chooser is not None
        loop._chooser.inline = True  # as after a window of frames that left most of each interval idle
        capture.give_back()
        assert capture.handed_back.wait(30) and not capture.exhausted.is_set()
        read = loop.stats.frames_captured
        assert read >= 1  # it was reading when asked: that frame is in the slot, and the source is still open
        item = loop._next_item()
        assert item is not None and item.frame_id == read - 1 and loop.stats.frames_captured == read
        assert loop.inline and loop.capture is None
        following = loop._next_item()  # read inline now, from the same open source
        assert following is not None and following.frame_id == read and loop.stats.source_reopens == 0
    finally:
        loop._detach(2.0)


class BlockingSource(FlakySource):
    """Delivers a few frames, then its read waits until the source is closed (a camera that stalled)."""

    def __init__(self, frames: int) -> None:
        super().__init__(fail_after=frames, stall=True)
        self.blocked = threading.Event()

    def read(self, timeout_s: float) -> Frame | None:
        if self._count >= self.fail_after:
            self.blocked.set()
        return super().read(timeout_s)


class Inline(ReadChooser):
    def worked(self, seconds: float) -> bool | None:
        if self.inline:
            return None
        self.inline = True
        return True


def test_stop_ends_an_inline_read_that_waits_on_a_stalled_camera(models):
    source = BlockingSource(frames=6)
    loop = FrameLoop(classifier(models["tiny"]), source, [], timeout_s=300.0, read_chooser=Inline)
    done: list[Any] = []
    runner = threading.Thread(target=lambda: done.append(loop.run()), daemon=True)
    runner.start()
    assert source.blocked.wait(60)
    assert loop.inline and loop.capture is None  # the loop's own thread is in the read
    loop.stop.set()
    runner.join(60)  # without the source closed under it, the read would wait its 300 s
    assert not runner.is_alive() and done and done[0].frames_processed >= 2


def test_failing_source_is_reopened_with_backoff_and_counted(models):
    source = FlakySource(fail_after=3)
    started = time.monotonic()
    stats = FrameLoop(classifier(models["tiny"]), source, [], max_frames=9, timeout_s=0.5).run()
    elapsed = time.monotonic() - started
    assert stats.frames_processed == 9
    assert source.opens >= 3 and stats.source_errors >= 2 and stats.source_reopens >= 2
    assert elapsed >= 1.0 + 2.0 * 0.9  # backoff 1 s then 2 s between the reopens


def test_stalled_source_times_out_and_reopens(models):
    source = FlakySource(fail_after=2, stall=True)
    stats = FrameLoop(classifier(models["tiny"]), source, [], max_frames=4, timeout_s=0.3).run()
    assert stats.frames_processed == 4 and stats.source_errors >= 1 and source.opens >= 2


def test_bad_frames_are_dropped_counted_and_do_not_stop_the_loop(models):
    source = FlakySource(fail_after=0, bad_every=3)
    stats = FrameLoop(classifier(models["tiny"]), source, [], max_frames=12).run()
    assert stats.frames_processed == 12 and stats.frames_invalid >= 3


def test_a_failing_sink_does_not_stop_the_loop(models):
    class Broken:
        def handle(self, result: FrameResult, frame: Any = None) -> None:
            raise ConnectionError("broker went away")

        def close(self, flush_timeout_s: float | None = None) -> None:
            pass

    good = Collect()
    stats = FrameLoop(classifier(models["tiny"]), synthetic(), [Broken(), good], max_frames=20).run()
    assert stats.frames_processed == 20 and stats.sink_errors == 20 and len(good.results) == 20


def test_sinks_get_the_frame_image_for_snapshots(models):
    sink = Collect()
    FrameLoop(classifier(models["tiny"]), synthetic(160, 120), [sink], max_frames=3).run()
    assert sink.frame_shapes == [(120, 160, 3)] * 3


def test_results_carry_ids_times_and_stages(models):
    sink = Collect()
    FrameLoop(classifier(models["tiny"]), synthetic(), [sink], max_frames=5).run()
    r = sink.results[-1]
    assert set(r.latency_ms) == {"capture_wait", "preprocess", "inference", "postprocess", "total", "frame_age"}
    assert abs(r.captured_wall - time.time()) < 30 and r.captured_mono <= time.monotonic()
    assert r.frame_age_ms >= r.latency_ms["inference"]
    assert r.top_k[0].label in {"red", "green", "blue"}


def test_auto_threads_uses_every_core():
    assert auto_threads(1) == 1 and auto_threads(2) == 2 and auto_threads(4) == 4


def test_images_source_through_the_loop(models, tmp_path):
    for i in range(3):
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    cfg = build_config({"source": {"type": "images", "path": str(tmp_path), "fps": 0, "loop": False}}, "t")
    sink = Collect()
    stats = FrameLoop(classifier(models["tiny"]), open_source(cfg.source), [sink]).run()
    assert stats.frames_captured == 3  # the text file was skipped, and the run ended with the images


def test_picamera2_source_through_the_loop_with_the_fake(models):
    code = (
        "import sys; sys.path.insert(0, 'tests/fakes'); sys.path.insert(0, 'tests')\n"
        "from test_loop import classifier, Collect\n"
        "from edgedet.config import build_config\nfrom edgedet.frames import open_source\n"
        "from edgedet.loop import FrameLoop\nfrom pathlib import Path\n"
        f"c = classifier(Path({str(models['tiny'])!r}))\n"
        "cfg = build_config({'source': {'type': 'picamera2', 'width': 640, 'height': 480, 'fps': 30}}, 't')\n"
        "src = open_source(cfg.source, c.input_size)\nsink = Collect()\n"
        "stats = FrameLoop(c, src, [sink], max_frames=5).run()\n"
        "print(stats.frames_processed, src.describe()['type'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["5", "picamera2"]


# --- the `edgedet run` command -------------------------------------------------------------------------


def run_args(model: Path, *extra: str) -> list[str]:
    return ["run", "--config", str(model.parent / "empty.yaml"), "--set", f"model.path={model}",
            "--set", "source.type=synthetic",
            "--set", "source.width=96", "--set", "source.height=72", *extra]


def test_run_writes_the_stats_file(models, tmp_path):
    stats_file = tmp_path / "stats.json"
    jsonl = tmp_path / "results.jsonl"
    run = run_cli(*run_args(models["tiny"], "--max-frames", "25", "--stats-file", str(stats_file),
                            "--set", f"publish.jsonl_path={jsonl}"))
    assert run.code == 0, run.err
    stats = json.loads(stats_file.read_text())
    for key in ("frames_captured", "frames_processed", "frames_dropped", "fps_in", "fps_out", "uptime_s"):
        assert key in stats
    assert stats["frames_processed"] == 25
    for stage in ("preprocess", "inference", "postprocess", "total", "frame_age"):
        assert set(stats["latency_ms"][stage]) == {"p50", "p90", "p99"}
        assert stats["latency_ms"][stage]["p50"] is not None
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 25 and lines[0]["label"] in {"red", "green", "blue"}


def test_sigterm_exits_zero_within_two_seconds(models, tmp_path):
    args = run_args(models["slow"], "--set", "source.fps=30")
    proc = subprocess.Popen([sys.executable, "-m", "edgedet", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        seen = ""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            seen += line
            if "edgedet.results" in line or not line:
                break
        assert "edgedet.results" in seen, seen
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert took <= 2.0, f"exit took {took:.2f} s"


@pytest.mark.parametrize(("sets", "needles"), [
    (["source.type=webcam"], ["source.type", "webcam"]),
    (["source.width=0"], ["source.width"]),
    (["source.height=-5"], ["source.height"]),
    (["source.fps=-1"], ["source.fps"]),
])
def test_bad_source_config_is_one_line(models, sets, needles):
    extra = [x for s in sets for x in ("--set", s)]
    assert_one_line_error(run_cli(*run_args(models["tiny"], *extra)), *needles)


def test_empty_image_directory(models, tmp_path):
    run = run_cli(*run_args(models["tiny"], "--set", "source.type=images", "--set", f"source.path={tmp_path}"))
    assert_one_line_error(run, str(tmp_path), "no readable images")


def test_camera_index_that_does_not_exist(models):
    pytest.importorskip("cv2", reason="the opencv extra (opencv-python-headless) is not installed")
    run = run_cli(*run_args(models["tiny"], "--set", "source.type=opencv", "--set", "source.path=7"))
    assert_one_line_error(run, "camera 7 does not exist")


def test_unreachable_stream_retries_then_fails(models):
    pytest.importorskip("cv2", reason="the opencv extra (opencv-python-headless) is not installed")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = run_cli(*run_args(models["tiny"], "--set", "source.type=opencv", "--set",
                            f"source.path=http://127.0.0.1:{port}/stream.mjpg", "--set", "source.max_retries=1"))
    # retries are logged as warnings; the failure itself is one error line, and nothing from OpenCV/FFmpeg
    assert run.code == 2 and "Traceback" not in run.err
    errors = [line for line in run.error_lines() if "WARNING" not in line]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "2 attempts" in errors[0], run.err
    assert "retrying" in run.err


def test_negative_max_frames_flag(models):
    assert_one_line_error(run_cli(*run_args(models["tiny"], "--max-frames", "-3")), "--max-frames")
