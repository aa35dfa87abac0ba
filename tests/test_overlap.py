"""The overlapped frame loop (next frame prepared during an off-CPU invoke) against the serial one.

The Edge TPU is absent here: edgedet.model.simulated wraps the real interpreter through the Classifier's
interpreter_factory seam; with ``compute=True`` every invoke also runs the real model on the frame it was
given, so a frame classified from the wrong staging buffer shows up as a wrong result.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from edgedet.frames.base import Frame, FrameSource
from edgedet.loop import FrameLoop
from edgedet.model.classifier import Classifier
from edgedet.model.config import ModelConfig
from edgedet.model.preprocess import FrameError, load_image
from edgedet.model.runtime import make_interpreter
from edgedet.model.simulated import SimulatedAccelerator, simulated_accelerator
from edgedet.results import FrameResult

V1 = "mobilenet_v1_0.25_128_quant.tflite"
IMAGES = ("cat.bmp", "bird.bmp", "grace_hopper.bmp")


class ListSource(FrameSource):
    """Real photographs, one after the other, then exhausted; ``bad`` frame numbers are unusable arrays."""

    def __init__(self, images: list[np.ndarray], count: int, on_demand: bool = True,
                 bad: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.images, self.count, self._on_demand, self.bad = images, count, on_demand, bad
        self.delivered: list[int] = []
        self._ready = threading.Semaphore(0)

    def open(self) -> None:
        pass

    def read(self, timeout_s: float) -> Optional[Frame]:
        n = self._next_frame_id
        if n >= self.count:
            return None
        if not self._on_demand:  # a camera: the next frame comes only once the loop has taken one
            self._ready.acquire(timeout=timeout_s)
        image = np.zeros((4, 4, 2), np.uint8) if n in self.bad else self.images[n % len(self.images)]
        self.delivered.append(n)
        return self._make_frame(image)

    def release(self) -> None:
        self._ready.release()

    @property
    def on_demand(self) -> bool:
        return self._on_demand

    def describe(self) -> dict[str, Any]:
        return {"type": "list"}


@pytest.fixture(scope="module")
def photos(shared_models: Path) -> list[np.ndarray]:
    return [np.asarray(load_image(shared_models / name)) for name in IMAGES]


def standin(shared_models: Path, invoke_s: float = 0.002) -> Classifier:
    return Classifier.from_config(ModelConfig(path=shared_models / V1, num_threads=1, top_k=5),
                                  interpreter_factory=simulated_accelerator(invoke_s, compute=True))


def run(classifier: Classifier, source: FrameSource, overlap: Optional[bool]) -> tuple[list[FrameResult], Any]:
    results: list[FrameResult] = []
    threads: set[str] = set()

    def on_frame(result: FrameResult) -> None:
        results.append(result)
        threads.update(t.name for t in threading.enumerate())
        if isinstance(source, ListSource) and not source.on_demand:
            source.release()

    if isinstance(source, ListSource) and not source.on_demand:
        source.release()
    stats = FrameLoop(classifier, source, [], overlap=overlap, on_frame=on_frame, timeout_s=5.0).run()
    return results, (stats, threads)


def test_overlapped_results_equal_the_serial_ones_frame_by_frame(shared_models, photos):
    serial, _ = run(standin(shared_models), ListSource(photos, 12), overlap=False)
    overlapped, (stats, threads) = run(standin(shared_models), ListSource(photos, 12), overlap=True)
    assert "edgedet-prepare" in threads
    assert [r.frame_id for r in overlapped] == list(range(12)) == [r.frame_id for r in serial]
    assert stats.frames_processed == 12
    for a, b in zip(serial, overlapped):
        assert a.top_k == b.top_k
    # the photos differ, so a frame classified from the other staging buffer would have changed the top class
    assert len({r.top_k[0].id for r in overlapped[:3]}) == 3


def test_a_classifier_that_leaves_the_cpu_free_is_overlapped_by_default(shared_models, photos):
    classifier = standin(shared_models)
    assert classifier.leaves_cpu_free
    _, (_, threads) = run(classifier, ListSource(photos, 4), overlap=None)
    assert "edgedet-prepare" in threads
    cpu = Classifier.from_config(ModelConfig(path=shared_models / V1, num_threads=1))
    assert not cpu.leaves_cpu_free
    _, (_, threads) = run(cpu, ListSource(photos, 4), overlap=None)
    assert "edgedet-prepare" not in threads


def test_camera_source_every_frame_once_in_order(shared_models, photos):
    source = ListSource(photos, 9, on_demand=False)
    results, (stats, _) = run(standin(shared_models), source, overlap=True)
    ids = [r.frame_id for r in results]
    assert ids == sorted(set(ids)) and len(ids) == stats.frames_processed
    assert ids == list(range(9)) and source.delivered == list(range(9))


def test_bad_frames_in_the_overlapped_loop_are_counted_not_classified(shared_models, photos):
    results, (stats, _) = run(standin(shared_models), ListSource(photos, 10, bad=frozenset({2, 5})), overlap=True)
    assert [r.frame_id for r in results] == [0, 1, 3, 4, 6, 7, 8, 9]
    assert stats.frames_invalid == 2 and stats.frames_processed == 8
    serial = Classifier.from_config(ModelConfig(path=shared_models / V1, num_threads=1, top_k=5))
    for r in results:
        assert r.top_k == serial.infer(photos[r.frame_id % len(photos)]).top_k


def test_a_bad_frame_does_not_take_an_interpreter(shared_models, photos):
    # The overlapped loop invokes a Prepared's interpreter while the next frame is prepared: a frame that fails to
    # prepare must leave the next one in the other interpreter, not in the one still holding the previous frame.
    classifier = standin(shared_models)
    assert classifier.double_buffered()
    first = classifier.prepare(photos[0])
    kept = classifier._slots[first.slot].input_view().copy()
    with pytest.raises(FrameError):
        classifier.prepare(np.zeros((4, 4, 2), np.uint8))
    second = classifier.prepare(photos[1])
    assert {first.slot, second.slot} == {0, 1}
    assert np.array_equal(classifier._slots[first.slot].input_view(), kept)
    assert not np.array_equal(classifier._slots[second.slot].input_view(), kept)


def test_an_invoked_frames_scores_stay_until_its_interpreter_invokes_again(shared_models, photos):
    # The Preparer ranks frame N during the invoke of frame N+1, on the other interpreter.
    classifier = standin(shared_models)
    assert classifier.double_buffered()
    serial = Classifier.from_config(ModelConfig(path=shared_models / V1, num_threads=1, top_k=5))
    first = classifier.invoke_staged(classifier.prepare(photos[0]))
    second = classifier.invoke_staged(classifier.prepare(photos[1]))
    assert first.slot != second.slot
    assert classifier.rank(first).top_k == serial.infer(photos[0]).top_k
    assert classifier.rank(second).top_k == serial.infer(photos[1]).top_k


def test_the_second_interpreter_gets_its_own_edge_tpu_delegate(shared_models, monkeypatch):
    # No Coral here: the delegate loader and the interpreter factory record what each interpreter was built with
    # (pycoral loads one delegate per interpreter as well; libedgetpu shares the device between them).
    delegates: list[object] = []
    built: list[list[object]] = []

    def fake_delegate(runtime: Any, device: str) -> object:
        delegates.append(object())
        assert device == "usb:0"
        return delegates[-1]

    def factory(path: Path, runtime: Any, threads: int, given: list[Any]) -> Any:
        built.append(list(given))
        return simulated_accelerator(0.001)(path, runtime, threads, [])

    monkeypatch.setattr("edgedet.model.classifier.load_edgetpu_delegate", fake_delegate)
    classifier = Classifier.from_config(ModelConfig(path=shared_models / V1, num_threads=1, delegate="edgetpu",
                                                    edgetpu_device="usb:0"), interpreter_factory=factory)
    assert classifier.delegate_info["active"] == "edgetpu" and classifier.double_buffered()
    assert built == [[delegates[0]], [delegates[1]]]


def test_without_a_second_interpreter_the_frames_go_in_series(shared_models, photos, caplog):
    calls = []

    def factory(path: Path, runtime: Any, threads: int, delegates: list[Any]) -> Any:
        calls.append(path)
        if len(calls) > 1:
            raise RuntimeError("out of device memory\nsecond line")
        return simulated_accelerator(0.001, compute=True)(path, runtime, threads, delegates)

    classifier = Classifier.from_config(ModelConfig(path=shared_models / V1, num_threads=1, top_k=5),
                                        interpreter_factory=factory)
    assert classifier.leaves_cpu_free and not classifier.double_buffered() and len(calls) == 2
    assert f"{V1}: a second interpreter could not be built (RuntimeError: out of device memory second line)" \
        in caplog.text
    results, (stats, threads) = run(classifier, ListSource(photos, 6), overlap=None)
    assert "edgedet-prepare" not in threads and stats.frames_processed == 6
    serial = Classifier.from_config(ModelConfig(path=shared_models / V1, num_threads=1, top_k=5))
    assert [r.top_k for r in results] == [serial.infer(photos[n % 3]).top_k for n in range(6)]


def test_max_frames_bound_is_exact_in_the_overlapped_loop(shared_models, photos):
    classifier = standin(shared_models)
    results: list[FrameResult] = []
    stats = FrameLoop(classifier, ListSource(photos, 100), [], overlap=True, max_frames=7,
                      on_frame=results.append).run()
    assert stats.frames_processed == 7 and [r.frame_id for r in results] == list(range(7))


class ListSink:
    """Records the frames it got; ``handle`` takes longer than an invoke, and a close while a frame is being handled (a
    reload racing the delivery on the Preparer's thread) is recorded."""

    def __init__(self, source: Optional[ListSource] = None) -> None:
        self.frame_ids: list[int] = []
        self.source = source
        self.frames_read_ahead: list[int] = []  # frames the source had given when each frame was handled, minus its id
        self.busy = self.closed = False
        self.closed_while_busy = self.handled_after_close = 0

    def handle(self, result: FrameResult, frame: Any = None) -> None:
        self.handled_after_close += self.closed
        self.busy = True
        if self.source is not None:
            self.frames_read_ahead.append(len(self.source.delivered) - result.frame_id)
        time.sleep(0.005)  # longer than an invoke: delivery is what holds the loop back
        self.frame_ids.append(result.frame_id)
        self.busy = False

    def on_stats(self, stats: Any) -> None:
        pass

    def counters(self) -> dict[str, Any]:
        return {}

    def close(self, flush_timeout_s: Optional[float] = None) -> None:
        self.closed_while_busy += self.busy
        self.closed = True


def test_a_reload_in_the_overlapped_loop_waits_for_the_frames_in_flight(shared_models, photos):
    """Ranking and delivery run on the Preparer's thread during the next invoke: a reload that closes the sinks
    between two frames finds none of them in use, and every frame reaches exactly one sink, in order."""
    count = 60
    sinks = [ListSink()]
    reloads = [10, 25, 26, 40]

    def due() -> bool:
        return bool(reloads) and loop.stats.frames_processed >= reloads[0]

    def between_frames() -> None:
        if due():
            reloads.pop(0)
            loop.sinks[0].close()
            sinks.append(ListSink())
            loop.sinks = [sinks[-1]]

    loop = FrameLoop(standin(shared_models, 0.003), ListSource(photos, count), [sinks[0]], overlap=True,
                     between_frames=between_frames, between_frames_due=due)
    stats = loop.run()
    assert stats.frames_processed == count and not reloads and len(sinks) == 5
    assert [f for sink in sinks for f in sink.frame_ids] == list(range(count))
    assert [(s.closed_while_busy, s.handled_after_close) for s in sinks] == [(0, 0)] * 5
    assert {t.name for t in threading.enumerate()} & {"edgedet-prepare"} == set()


def test_a_classifier_swapped_in_by_a_reload_takes_turns_on_two_interpreters_from_its_first_frame(shared_models,
                                                                                                   photos):
    """The frame prepared for the old classifier is prepared again for the new one, which gets its second
    interpreter only then (the loop asks for it): the frames after the swap are the new classifier's, each
    classified from the interpreter it was prepared in."""
    overwritten: list[int] = []

    class Guarded(SimulatedAccelerator):
        """Notes an input tensor written while its interpreter invokes."""

        def invoke(self) -> None:
            index = self._real.get_input_details()[0]["index"]
            before = self._real.get_tensor(index)
            super().invoke()
            if not np.array_equal(before, self._real.get_tensor(index)):
                overwritten.append(len(results))

    def guarded(path: Path, runtime: Any, threads: int, delegates: list[Any]) -> Guarded:
        return Guarded(make_interpreter(path, runtime, threads, delegates), 0.002, compute=True)

    new = Classifier.from_config(ModelConfig(path=shared_models / V1, num_threads=1, top_k=3),
                                 interpreter_factory=guarded)
    assert len(new._slots) == 1
    results: list[FrameResult] = []
    slots: list[int] = []  # the interpreter each frame was prepared in
    prepare = new.prepare

    def noted(frame: Any) -> Any:
        prepared = prepare(frame)
        slots.append(prepared.slot)
        return prepared

    new.prepare = noted  # type: ignore[method-assign]

    def due() -> bool:
        return len(results) >= 5 and loop.classifier is not new

    def between_frames() -> None:
        if due():
            loop.classifier = new

    loop = FrameLoop(standin(shared_models), ListSource(photos, 16), [], overlap=True, on_frame=results.append,
                     between_frames=between_frames, between_frames_due=due)
    stats = loop.run()
    assert stats.frames_processed == 16 and [r.frame_id for r in results] == list(range(16))
    assert len(new._slots) == 2 and overwritten == []
    # the first frame goes into the one interpreter there is; from then on they alternate
    assert slots == [n % 2 for n in range(len(slots))] and len(slots) >= 9, slots
    serial = Classifier.from_config(ModelConfig(path=shared_models / V1, num_threads=1, top_k=5))
    swapped = [n for n, r in enumerate(results) if len(r.top_k) == 3]
    assert swapped == list(range(swapped[0], 16)) and 5 <= swapped[0] <= 7
    for n, r in enumerate(results):
        assert r.top_k == serial.infer(photos[n % 3]).top_k[:len(r.top_k)], n


def test_a_slow_sink_holds_the_overlapped_loop_back_instead_of_queueing_frames(shared_models, photos):
    """Delivery runs before the next frame is read, so behind a sink slower than the invoke (5 ms against 1 ms)
    at most two frames are in flight: none is read, and held with its image, before the sink has taken the
    frame two before it. Frames queued behind a slow sink would be memory that grows for as long as it is slow."""
    source = ListSource(photos, 40)
    sink = ListSink(source)
    stats = FrameLoop(standin(shared_models, 0.001), source, [sink], overlap=True).run()
    assert stats.frames_processed == 40 and sink.frame_ids == list(range(40))
    assert max(sink.frames_read_ahead) <= 2, sink.frames_read_ahead


def test_the_stand_in_invoke_takes_its_set_time_at_the_median_although_sleep_wakes_late() -> None:
    """time.sleep wakes late; the stand-in's sleep, shortened by its head start, must make the median invoke
    the set time (an injected clock: a sleep here lasts 0.14 to 0.19 ms longer than asked, and one in fifty
    5 ms longer)."""
    from edgedet.model.config import default_model_path
    from edgedet.model.runtime import select_runtime

    model = default_model_path()
    assert model is not None
    rng = np.random.default_rng(3)
    now = [0.0]

    def late_sleep(seconds: float) -> None:
        now[0] += seconds + rng.uniform(0.14e-3, 0.19e-3) + (5e-3 if rng.random() < 0.02 else 0.0)

    standin = SimulatedAccelerator(make_interpreter(model, select_runtime("auto"), 1), 0.0025, compute=False,
                                   sleep=late_sleep, clock=lambda: now[0])

    def invokes(count: int) -> list[float]:
        durations = []
        for _ in range(count):
            started = now[0]
            standin.invoke()
            durations.append(now[0] - started)
        return durations

    first = invokes(1)[0]
    assert first > 0.0025 + 0.14e-3  # a plain sleep: late
    invokes(200)  # settling: about 35 steps of 5 us
    median = float(np.median(invokes(1001)))
    assert abs(median - 0.0025) <= 10e-6, median
    assert 0.14e-3 <= standin.head_start_s <= 0.19e-3


def test_the_preparer_starts_later_after_a_frame_in_time_and_earlier_after_a_late_one() -> None:
    """The start of the next frame follows the frames themselves: LATER_S after each frame that was ready when
    the invoke ended, EARLIER_S back after one the loop waited for, never below 0 nor above the shortest invoke."""
    from edgedet.loop import Preparer

    preparer = Preparer(None)  # type: ignore[arg-type]  # the estimate alone: no loop, never started
    assert preparer.lead_s() == 0.0  # nothing measured yet: at once
    for seconds in (0.0026, 0.0025, 0.0027):
        preparer.invoked(seconds)
    preparer._prepares.extend([0.0004, 0.0005, 0.0006, 0.0007])
    first = preparer.lead_s()
    assert first == pytest.approx(0.0025 - 0.0007 - Preparer.MARGIN_S)
    assert preparer.lead_s() == pytest.approx(first + Preparer.LATER_S)
    preparer._late = True
    assert preparer.lead_s() == pytest.approx(first + Preparer.LATER_S - Preparer.EARLIER_S)
    for _ in range(100):
        preparer.lead_s()
    assert preparer.lead_s() == 0.0
    preparer._late = False
    for _ in range(1000):
        preparer.lead_s()
    assert preparer.lead_s() == pytest.approx(0.0025)  # the shortest invoke
