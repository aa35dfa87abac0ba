"""``/metrics``: the pipeline's counters in the Prometheus text format, read when Prometheus scrapes.

Only the stage-latency histogram counts frames, and not on the frame loop's thread: the endpoint queues each
frame's latencies and folds them in batches (``StageHistogram.observe_many``, vectorised) on its own thread and
before every scrape. Everything else is read from the pipeline's own statistics at scrape time by
``PipelineCollector``.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any, Callable, Optional

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from edgedet import __version__
from edgedet.loop import STAGES
from edgedet.results import LoopStats

# Seconds, as Prometheus wants durations: from a sub-millisecond Edge TPU invoke to a stalled camera.
BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BOUNDS_MS = tuple(b * 1e3 for b in BUCKETS_S)


class StageHistogram:
    """Per-stage latency histograms. Writers and ``family`` hold one lock, so a scrape never sees a batch half
    counted (a bucket ahead of the count would break ``histogram_quantile``)."""

    def __init__(self, stages: tuple[str, ...] = STAGES) -> None:
        self.stages = stages
        self._counts = {stage: [0] * (len(_BOUNDS_MS) + 1) for stage in stages}
        self._sums = dict.fromkeys(stages, 0.0)
        self._lock = threading.Lock()
        self._row = itemgetter(*stages) if len(stages) > 1 else lambda latency: (latency[stages[0]],)
        self._bounds = np.array(_BOUNDS_MS)

    def observe(self, latency_ms: dict[str, float]) -> None:
        with self._lock:
            self._observe(latency_ms)

    def _observe(self, latency_ms: dict[str, float]) -> None:
        counts, sums = self._counts, self._sums
        for stage, value in latency_ms.items():
            bucket = counts.get(stage)
            if bucket is not None:
                bucket[bisect.bisect_left(_BOUNDS_MS, value)] += 1
                sums[stage] += value

    def observe_many(self, latencies: Sequence[dict[str, float]]) -> None:
        """The same counts as ``observe`` on each, in one ``searchsorted`` per batch when every frame carries
        every stage (as the frame loop's do), else through ``observe``."""
        if not latencies:
            return
        width = len(self.stages)
        try:
            values = np.fromiter(chain.from_iterable(map(self._row, latencies)), np.float64,
                                 len(latencies) * width).reshape(len(latencies), width)
        except KeyError:
            with self._lock:
                for latency in latencies:
                    self._observe(latency)
            return
        index = np.searchsorted(self._bounds, values, side="left")  # = bisect_left
        added = [np.bincount(index[:, column], minlength=len(_BOUNDS_MS) + 1).tolist() for column in range(width)]
        totals = values.sum(axis=0).tolist()
        with self._lock:
            for stage, counts, total in zip(self.stages, added, totals):
                self._counts[stage] = [a + b for a, b in zip(self._counts[stage], counts)]
                self._sums[stage] += total

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily("edgedet_stage_latency_seconds",
                                       "Time of each frame-loop stage (frame_age: capture to result)",
                                       labels=["stage"])
        with self._lock:
            taken = {stage: (list(self._counts[stage]), self._sums[stage]) for stage in self.stages}
        for stage in self.stages:
            counts, total_ms = taken[stage]
            cumulative, running = [], 0
            for bound, count in zip((*(repr(b) for b in BUCKETS_S), "+Inf"), counts):
                running += count
                cumulative.append((bound, running))
            family.add_metric([stage], cumulative, total_ms / 1e3)
        return family


class PipelineCollector(Collector):
    """Reads the loop's statistics, the MQTT counters and the model facts when ``collect`` is called."""

    def __init__(self, loop_stats: Callable[[], LoopStats], mqtt_counters: Callable[[], dict[str, Any]],
                 info: Callable[[], dict[str, Any]], histogram: StageHistogram,
                 before: Optional[Callable[[], None]] = None) -> None:
        self._loop_stats, self._mqtt, self._info, self._histogram = loop_stats, mqtt_counters, info, histogram
        self._before = before

    def collect(self) -> Iterator[Metric]:
        if self._before is not None:
            self._before()  # the latencies queued since the last fold, so the histogram is up to date
        stats = self._loop_stats()
        counters = (
            ("frames_captured", stats.frames_captured, "Frames read from the source"),
            ("frames_processed", stats.frames_processed, "Frames classified"),
            ("frames_dropped", stats.frames_dropped, "Frames a newer one replaced before the model was free"),
            ("frames_invalid", stats.frames_invalid, "Frames preprocessing refused"),
            ("source_errors", stats.source_errors, "Failed source reads"),
            ("source_reopens", stats.source_reopens, "Times the source was reopened after a failure"),
            ("sink_errors", stats.sink_errors, "Results a sink failed to take"),
        )
        for name, value, text in counters:
            yield CounterMetricFamily(f"edgedet_{name}", text, value=value)
        yield GaugeMetricFamily("edgedet_fps_in", "Frames captured per second (last 30 s)", value=stats.fps_in)
        yield GaugeMetricFamily("edgedet_fps_out", "Frames classified per second (last 30 s)", value=stats.fps_out)
        yield GaugeMetricFamily("edgedet_uptime_seconds", "Seconds since the frame loop started",
                                value=stats.uptime_s)
        if stats.classifiers:  # models: each classifier's own count, rate and inference latency
            processed = CounterMetricFamily("edgedet_classifier_frames_processed",
                                            "Frames each classifier of models: classified", labels=["classifier"])
            rate = GaugeMetricFamily("edgedet_classifier_fps_out", "Frames each classifier classified per second "
                                     "(last 30 s)", labels=["classifier"])
            latency = GaugeMetricFamily("edgedet_classifier_inference_ms_p50", "Median inference time of each "
                                        "classifier (last 1024 frames)", labels=["classifier"])
            for name, own in stats.classifiers.items():
                processed.add_metric([name], own["frames_processed"])
                rate.add_metric([name], own["fps_out"])
                p50 = own["latency_ms"]["inference"]["p50"]
                latency.add_metric([name], float("nan") if p50 is None else p50)
            yield from (processed, rate, latency)
        mqtt = self._mqtt()
        yield GaugeMetricFamily("edgedet_mqtt_connected", "1 while connected to the broker (0 also when MQTT is "
                                "off)", value=1.0 if mqtt.get("connected") else 0.0)
        yield GaugeMetricFamily("edgedet_mqtt_queued_messages", "Messages in the outbox or awaiting their ack",
                                value=mqtt.get("queued", 0))
        yield CounterMetricFamily("edgedet_mqtt_dropped_messages", "Messages evicted from a full outbox",
                                  value=mqtt.get("dropped", 0))
        yield CounterMetricFamily("edgedet_mqtt_reconnects", "Connections re-established to the broker",
                                  value=mqtt.get("reconnects", 0))
        yield self._histogram.family()
        yield info_family(self._info())


def info_family(info: dict[str, Any]) -> InfoMetricFamily:
    """``edgedet_info``: the running model, runtime, delegate and version as labels (value 1)."""
    runtime, delegate, model = info.get("runtime", {}), info.get("delegate", {}), info.get("model", {})
    labels = {
        "version": str(info.get("edgedet_version", __version__)),
        "device_id": str(info.get("device_id", "")),
        "run_id": str(info.get("run_id", "")),
        "model": str(model.get("name", "")),
        "model_sha256": str(model.get("sha256", "")),
        "runtime": str(runtime.get("name", "")),
        "runtime_version": str(runtime.get("version", "")),
        "threads": str(runtime.get("threads", "")),
        "delegate": str(delegate.get("active", "")),
        "delegate_requested": str(delegate.get("requested", "")),
        "source": str(info.get("source", {}).get("type", "")),
    }
    family = InfoMetricFamily("edgedet", "The running model, runtime, delegate and edgedet version")
    family.add_metric([], labels)
    return family
