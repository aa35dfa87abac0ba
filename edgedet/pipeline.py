"""The running daemon as one object: source, classifier, frame loop, sinks and MQTT publisher.

``Pipeline.build(config, run_id)`` loads the model and opens the source (start-up errors surface there, in
the main thread), ``run()`` runs the frame loop, ``reload(new_config)`` compares the new config with the
running one section by section and rebuilds only what changed, ``close()`` stops the sinks. A reload is not a
new run: ``run_id`` stays, MQTT ``seq`` counts on, unchanged MQTT settings keep the connection and its outbox,
an unchanged source stays open, and a new model is swapped in between two frames.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from edgedet import __version__
from edgedet.config import ClassifierConfig, EdgedetConfig
from edgedet.errors import EdgedetError
from edgedet.frames import open_source
from edgedet.frames.base import FrameSource
from edgedet.lanes import Lane
from edgedet.loop import FrameLoop, auto_threads
from edgedet.model.classifier import Classifier
from edgedet.publish import messages
from edgedet.publish.console import ConsoleSink
from edgedet.publish.jsonl import JsonlSink
from edgedet.publish.uncertain import UncertainSink
from edgedet.results import FrameResult, LoopStats, Sink

if TYPE_CHECKING:  # paho is imported only when MQTT is on, the HTTP server only when it is enabled
    from edgedet.http.server import HttpSink
    from edgedet.publish.sink import ChannelSpec, MqttSink

log = logging.getLogger("edgedet.pipeline")

# The config sections, and what a change in each one rebuilds (see Pipeline.reload).
SECTIONS = ("device_id", "model", "models", "source", "loop", "publish", "mqtt", "homeassistant", "logging",
            "http")
# What a classifier can change without a new interpreter: the classes reported, its schedule, its publishing.
LIGHT_KEYS = ("top_k", "every_n_frames", "interval_s", "publish", "binary_sensors", "name")


@dataclass(frozen=True)
class ModelStamp:
    """Identifies the model file's content cheaply: a reload after the file was replaced in place (same
    path, e.g. by ``models install``) loads the new one."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Optional[Path]) -> Optional[ModelStamp]:
        if path is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(str(path), st.st_size, st.st_mtime_ns)


def changed_sections(old: EdgedetConfig, new: EdgedetConfig) -> list[str]:
    """The top-level sections whose effective values differ."""
    before, after = old.as_dict(), new.as_dict()
    return [name for name in SECTIONS if before.get(name) != after.get(name)]


def _interpreter_part(entry: ClassifierConfig) -> dict[str, Any]:
    """The settings that need a new classifier (model file, runtime, delegate, preprocessing) when they change."""
    dump = entry.as_dict()
    for key in LIGHT_KEYS:
        dump.pop(key, None)
    return dump


def lane_name(config: EdgedetConfig, entry: ClassifierConfig) -> str:
    """A lane's name: the classifier's in ``models:``, "" for the one ``model:``."""
    return entry.name if config.models is not None else ""


class Pipeline:
    """Owns its parts; see the module docstring. Not thread-safe: ``reload`` runs on the loop's thread (from
    ``between_frames``) or while the loop is not running."""

    def __init__(self, config: EdgedetConfig, run_id: str, lanes: list[Lane], source: FrameSource,
                 *, stop: Optional[threading.Event] = None) -> None:
        self.config = config
        self.run_id = run_id
        self.source = source
        self.started_wall = time.time()
        # The configured files (an Edge TPU model that fell back runs its CPU twin, but a reload compares paths
        # as configured).
        self._model_stamps = {lane_name(config, entry): ModelStamp.of(entry.path) for entry in config.classifiers()}
        self.stop = stop or threading.Event()
        self.console: Optional[ConsoleSink] = None
        self.jsonl: Optional[JsonlSink] = None
        self.uncertain: Optional[UncertainSink] = None
        self.mqtt: Optional[MqttSink] = None
        self.http: Optional[HttpSink] = None
        # The seqs reached by an MQTT sink that a reload turned off, for the next one (by classifier).
        self._mqtt_seqs: dict[str, int] = {}
        self.source_opens = 1
        self.loop = FrameLoop(lanes[0].classifier, source, [], stop=self.stop, source_opened=True,
                              max_fps=config.loop.max_fps, timeout_s=config.source.timeout_s,
                              max_retries=config.source.max_retries,
                              invoke_timeout_s=_invoke_timeout(config), lanes=lanes)
        self._stats_done: Optional[threading.Event] = None
        self._closed_counters: dict[str, Any] = {}

    # ------------------------------------------------------------------ build / close

    @classmethod
    def build(cls, config: EdgedetConfig, run_id: str, *, stop: Optional[threading.Event] = None) -> Pipeline:
        """Load the model, open the source (fail fast: an empty folder or a missing camera is a start-up error)
        and start the sinks. Raises EdgedetError with nothing left open."""
        lanes = [_new_lane(config, entry) for entry in config.classifiers()]
        _check_binary_sensors(config, [lane.classifier for lane in lanes])  # before the camera: one line
        _warn_shared_edgetpu(config, lanes)
        source = _open(config, lanes)
        pipeline = cls(config, run_id, lanes, source, stop=stop)
        try:
            pipeline._build_local_sinks(config)
            pipeline._build_mqtt(config)
            pipeline._build_http(config)
        except BaseException:
            pipeline.close(flush_timeout_s=0.0)
            raise
        return pipeline

    def close(self, flush_timeout_s: Optional[float] = None) -> None:
        """Stop the sinks (MQTT flushes for at most ``flush_timeout_s``) and release the source."""
        for sink in self.sinks:
            try:
                sink.close(flush_timeout_s=flush_timeout_s)
            except Exception as exc:
                log.error("closing sink %s failed: %s", type(sink).__name__, exc)
            self._closed_counters.update(sink.counters())  # after the flush: what was delivered in the end
        self.console = self.jsonl = self.mqtt = self.http = None
        self.uncertain = None
        self._sync_sinks()
        self.loop.reader.close()

    @property
    def lanes(self) -> list[Lane]:
        """Every classifier that runs (one unless ``models:`` names several)."""
        return self.loop.lanes

    @property
    def classifier(self) -> Classifier:
        """The first (usually the only) classifier."""
        return self.loop.lanes[0].classifier

    def lane(self, name: str) -> Lane:
        return next((lane for lane in self.lanes if lane.name == name), self.lanes[0])

    @property
    def sinks(self) -> list[Sink]:
        return [s for s in (self.console, self.jsonl, self.uncertain, self.mqtt, self.http) if s is not None]

    def _sync_sinks(self) -> None:
        self.loop.sinks = self.sinks

    def _build_local_sinks(self, config: EdgedetConfig) -> None:
        self.console = ConsoleSink() if config.publish.console else None
        self.jsonl = JsonlSink(config.publish.jsonl_path) if config.publish.jsonl_path is not None else None
        saving = config.publish.save_uncertain
        self.uncertain = UncertainSink(saving, lambda name: self.lane(name).classifier.preprocessor) \
            if saving is not None else None
        self._sync_sinks()

    def _build_mqtt(self, config: EdgedetConfig) -> None:
        if not config.mqtt.enabled:
            self.mqtt = None
            self._sync_sinks()
            return
        from edgedet.publish.sink import MqttSink

        sink = MqttSink.from_config(config, model_name=self.classifier.name, run_id=self.run_id,
                                    info=self._info_sections(), start=False, labels=self.classifier.labels,
                                    channels=self._channel_specs(config))
        for name, seq in self._mqtt_seqs.items():
            if name in sink.channels:
                sink.channels[name].seq = seq
        sink.publisher.start()
        self.mqtt = sink
        self._sync_sinks()

    def _build_http(self, config: EdgedetConfig) -> None:
        """The HTTP endpoint (binds its port here: a port in use is a start-up error)."""
        if not config.http.enabled:
            self.http = None
        else:
            from edgedet.http.server import HttpSink

            self.http = HttpSink(config.http, self)
            self.http.start()
        self._sync_sinks()

    # ------------------------------------------------------------------ info

    def _channel_specs(self, config: EdgedetConfig) -> list[ChannelSpec]:
        """One MQTT channel per classifier; with one classifier its topics are the one-model topics."""
        from edgedet.publish.sink import ChannelSpec

        named = len(self.lanes) > 1
        return [ChannelSpec(lane.name if named else "", lane.classifier.name, list(lane.classifier.labels),
                            config.publish_for(entry), dict(entry.binary_sensors))
                for lane, entry in zip(self.lanes, config.classifiers())]

    def _classifier_sections(self) -> Optional[list[dict[str, Any]]]:
        """``info.classifiers``: every classifier of ``models:`` (None for the one ``model:``)."""
        if self.config.models is None:
            return None
        base = f"{self.config.mqtt.topic_prefix}/{self.config.resolved_device_id()}"
        named = len(self.lanes) > 1
        sections = []
        for lane in self.lanes:
            info = lane.classifier.info
            roi = lane.classifier.preprocessor.roi
            sections.append({"name": lane.name, "detection_topic": f"{base}/{lane.name}/detection" if named
                             else f"{base}/detection", "roi": list(roi) if roi is not None else None,
                             "every_n_frames": lane.every_n_frames, "interval_s": lane.interval_s,
                             "model": info["model"], "delegate": info["delegate"]})
        return sections

    def _info_sections(self) -> dict[str, Any]:
        info = self.classifier.info
        return {"model": info["model"], "runtime": info["runtime"], "delegate": info["delegate"],
                "source": self.source.describe(), "started_wall": self.started_wall,
                "classifiers": self._classifier_sections()}

    def info(self) -> dict[str, Any]:
        info = {"edgedet_version": __version__, "device_id": self.config.resolved_device_id(),
                "run_id": self.run_id, **self.classifier.info, "source": self.source.describe()}
        classifiers = self._classifier_sections()
        if classifiers is not None:
            info["classifiers"] = classifiers
        return info

    def info_message(self) -> dict[str, Any]:
        """The ``info`` message (docs/schemas/info.json) as MQTT publishes it."""
        return messages.info_payload(device_id=self.config.resolved_device_id(), run_id=self.run_id,
                                     **self._info_sections())

    def loop_stats(self) -> LoopStats:
        return self.loop.snapshot()

    def mqtt_counters(self) -> dict[str, Any]:
        return self.mqtt.publisher.stats() if self.mqtt is not None else {}

    def stats_message(self) -> dict[str, Any]:
        """The ``stats`` message (docs/schemas/stats.json) as of now."""
        return messages.stats_payload(self.loop_stats(), self.mqtt_counters(),
                                      device_id=self.config.resolved_device_id(), run_id=self.run_id,
                                      wall=time.time())

    # ------------------------------------------------------------------ run

    def run(self, *, max_frames: int = 0, duration_s: float = 0.0,
            on_frame: Optional[Callable[[FrameResult], None]] = None,
            between_frames: Optional[Callable[[], None]] = None,
            between_frames_due: Optional[Callable[[], bool]] = None) -> dict[str, Any]:
        """Run the frame loop until stopped, exhausted or bounded; returns the final statistics (the loop's,
        with every sink's counters). Stats go to the sinks every ``publish.stats_interval_s`` and at the end."""
        loop = self.loop
        loop.max_frames, loop.duration_s = max_frames, duration_s
        loop.on_frame, loop.between_frames, loop.between_frames_due = on_frame, between_frames, between_frames_due
        self._start_stats()
        try:
            loop.run()
        finally:
            self._stop_stats()
            self._stats_to_sinks()  # the final counters for subscribers
        return self.final_stats()

    def final_stats(self) -> dict[str, Any]:
        stats = self.loop.snapshot().as_dict()
        stats.update(self._closed_counters)
        for sink in self.sinks:
            stats.update(sink.counters())
        stats["model"] = self.classifier.name
        stats["runtime"] = self.classifier.info["runtime"]
        stats["preprocess"] = self.classifier.info["preprocess"]
        return stats

    def _stats_to_sinks(self) -> None:
        snapshot = self.loop.snapshot()
        for sink in self.sinks:
            try:
                sink.on_stats(snapshot)
            except Exception as exc:
                log.error("publishing stats failed: %s", exc)

    def _start_stats(self) -> None:
        done = threading.Event()
        self._stats_done = done

        def publish() -> None:
            while not done.wait(self.config.publish.stats_interval_s) and not self.stop.is_set():
                self._stats_to_sinks()

        threading.Thread(target=publish, name="edgedet-stats", daemon=True).start()

    def _stop_stats(self) -> None:
        if self._stats_done is not None:
            self._stats_done.set()
            self._stats_done = None

    # ------------------------------------------------------------------ reload

    def reload(self, new: EdgedetConfig) -> list[str]:
        """Apply ``new``: rebuild only what changed; returns what was rebuilt (empty: nothing changed).

        Classifiers are matched by name: one whose model settings (or model file) changed gets a new
        interpreter, the others run on untouched (their ``seq``, counters and rates go on). Everything new is
        built before anything old is let go, so a config that validates but cannot be built (a model that does
        not load, a folder with no images) raises EdgedetError and leaves the running pipeline as it was."""
        old = self.config
        sections = changed_sections(old, new)
        done: list[str] = []
        running = {lane.name: lane for lane in self.lanes}
        before = {lane_name(old, entry): entry for entry in old.classifiers()}
        plan: list[tuple[str, ClassifierConfig, Classifier, Optional[ModelStamp]]] = []
        for entry in new.classifiers():
            name = lane_name(new, entry)
            key = f"models.{name}" if name else "model"
            stamp = ModelStamp.of(entry.path)
            lane, previous = running.get(name), before.get(name)
            classifier: Optional[Classifier] = None
            if lane is not None and previous is not None and _interpreter_part(previous) == _interpreter_part(entry):
                if stamp == self._model_stamps.get(name):
                    classifier = lane.classifier
                else:
                    done.append(f"{key} (file replaced)")
            else:
                done.append(key)
            if classifier is None:
                classifier = Classifier.from_config(entry, auto_threads=auto_threads())
            elif previous is not None and previous.top_k != entry.top_k:
                done.append(f"{key}.top_k")
            plan.append((name, entry, classifier, stamp))
        removed = [name for name in running if name not in {name for name, *_ in plan}]
        done += [f"models.{name} (removed)" for name in removed]
        models_changed = any(n not in running or c is not running[n].classifier for n, _, c, _ in plan) \
            or bool(removed)
        _check_binary_sensors(new, [c for _, _, c, _ in plan])  # before anything running is touched
        # A picamera2 source is sized to the models' inputs: a new input size means a new source.
        input_changed = _frame_hint([c for _, _, c, _ in plan]) != _frame_hint([lane.classifier for lane in self.lanes])
        new_source: Optional[FrameSource] = None
        if "source" in sections or input_changed:
            new_source = self._switch_source(new, [c for _, _, c, _ in plan])
            done.append("source")

        # Nothing below can fail for a valid config: the parts are swapped in.
        lanes: list[Lane] = []
        for name, entry, classifier, stamp in plan:
            lane = running.get(name) or Lane(name, classifier)
            lane.classifier = classifier
            classifier.top_k = entry.top_k
            lane.every_n_frames, lane.interval_s = entry.every_n_frames, entry.interval_s
            self._model_stamps[name] = stamp
            lanes.append(lane)
        self.loop.lanes = lanes  # between two frames: the loop reads its lanes once per frame
        if new_source is not None:
            self.source = new_source
        self.loop.invoke_timeout_s = _invoke_timeout(new)
        if "loop" in sections or "source" in sections:
            self.loop.max_fps = new.loop.max_fps
            self.loop.timeout_s, self.loop.max_retries = new.source.timeout_s, new.source.max_retries
            self.loop.reader.timeout_s, self.loop.reader.max_retries = new.source.timeout_s, new.source.max_retries
            if "loop" in sections:
                done.append("loop")
        if "publish" in sections:
            for sink in (self.console, self.jsonl, self.uncertain):
                if sink is not None:
                    sink.close()
            self._build_local_sinks(new)
            done.append("publish")
        self.config = new
        done += self._reload_mqtt(old, new, sections, info_changed=models_changed or new_source is not None)
        if "logging" in sections:
            from edgedet.logsetup import setup_logging

            setup_logging(new.logging.level, new.logging.format)
            done.append("logging")
        if "http" in sections:
            done += self._reload_http(new)
        return done

    def _reload_http(self, new: EdgedetConfig) -> list[str]:
        """A new endpoint in place of the old one: the old one lets go of its port first (it may be the same),
        so a new port that cannot be bound leaves the endpoint off, with the error logged."""
        if self.http is not None:
            self.http.close()
            self.http = None
            self._sync_sinks()
        try:
            self._build_http(new)
        except EdgedetError as exc:
            log.error("HTTP endpoint not restarted: %s", exc)
        return ["http"]

    def _switch_source(self, new: EdgedetConfig, classifiers: list[Classifier]) -> FrameSource:
        """Open the new source in place of the running one; on failure the running one is reopened."""
        source = open_source(new.source, _frame_hint(classifiers))
        self.loop.replace_source(_ClosedSource(), opened=True)  # releases the camera the new one may need
        try:
            source.open()
        except BaseException:
            self.loop.replace_source(self.source, opened=False)  # the loop's reader reopens the old one
            raise
        self.source_opens += 1
        log.info("source opened: %s", source.describe())
        self.loop.replace_source(source, opened=True)
        return source

    def _reload_mqtt(self, old: EdgedetConfig, new: EdgedetConfig, sections: list[str], *,
                     info_changed: bool) -> list[str]:
        connection = "mqtt" in sections or "device_id" in sections
        sink = self.mqtt
        if sink is None:
            if new.mqtt.enabled:
                self._build_mqtt(new)
                return ["mqtt"]
            return []
        if not new.mqtt.enabled:
            self._mqtt_seqs = sink.seqs()
            sink.close()
            self.mqtt = None
            self._sync_sinks()
            return ["mqtt"]
        done: list[str] = []
        if connection:
            from edgedet.publish.mqtt import MqttPublisher

            publisher = MqttPublisher(new.mqtt, new.resolved_device_id())
            moved = sink.replace_publisher(publisher)
            log.info("MQTT settings changed: %d queued message(s) moved to %s:%d", moved, new.mqtt.host,
                     new.mqtt.port)
            done.append("mqtt")
        if "publish" in sections or "models" in sections or info_changed:
            # Names, models, labels and publish settings per classifier; each name keeps its seq.
            sink.cfg = new.publish
            sink.set_channels(self._channel_specs(new))
        if info_changed:
            sink.publish_info(**self._info_sections())
        if "homeassistant" in sections:
            sink.set_homeassistant(new.homeassistant)
            done.append("homeassistant")
        return done


class _ClosedSource(FrameSource):
    """Stands in for the source while a reload switches sources: it never delivers a frame."""

    def open(self) -> None:
        pass

    def read(self, timeout_s: float) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"type": "none"}

    @property
    def on_demand(self) -> bool:
        return True


def _new_lane(config: EdgedetConfig, entry: ClassifierConfig) -> Lane:
    classifier = Classifier.from_config(entry, auto_threads=auto_threads())
    return Lane(lane_name(config, entry), classifier, entry.every_n_frames, entry.interval_s)


def _warn_shared_edgetpu(config: EdgedetConfig, lanes: list[Lane]) -> None:
    """Several classifiers on one Edge TPU run one after the other on it; its on-chip RAM caches one model's
    parameters at a time unless the models were compiled together, so each switch reloads them."""
    by_device: dict[str, list[str]] = {}
    for lane, entry in zip(lanes, config.classifiers()):
        if lane.classifier.delegate_info.get("active") == "edgetpu":
            by_device.setdefault(entry.edgetpu_device, []).append(lane.name)
    for device, names in by_device.items():
        if len(names) > 1:
            log.warning("classifiers %s share the Edge TPU %s: they run one after the other on it, and unless "
                        "their models were compiled together (edgetpu_compiler %s) each switch reloads the "
                        "model's parameters into the TPU (README, Edge TPU)", ", ".join(names), device,
                        " ".join(f"{n}.tflite" for n in names))


def _invoke_timeout(config: EdgedetConfig) -> float:
    """The hang bound of the frame loop: the most lenient classifier's (0 = off wins)."""
    bounds = [entry.invoke_timeout_s for entry in config.classifiers()]
    return 0.0 if 0 in bounds else max(bounds)


def _frame_hint(classifiers: list[Classifier]) -> tuple[int, int]:
    """The frame size a source that scales for the model should deliver: big enough for every classifier's
    region at its input size."""
    hints = [c.preprocessor.frame_size_hint() for c in classifiers]
    return max(w for w, _ in hints), max(h for _, h in hints)


def _check_binary_sensors(config: EdgedetConfig, classifiers: list[Classifier]) -> None:
    """The binary sensors must name classes of the model that will run (each classifier its own)."""
    if config.mqtt.enabled and config.homeassistant.enabled:
        from edgedet.publish.hastate import check_binary_sensors

        for index, (classifier, entry) in enumerate(zip(classifiers, config.classifiers())):
            key = f"models[{index}].binary_sensors" if config.models is not None else "homeassistant.binary_sensors"
            check_binary_sensors(entry.binary_sensors, classifier.labels, key)


def _open(config: EdgedetConfig, lanes: list[Lane]) -> FrameSource:
    source = open_source(config.source, _frame_hint([lane.classifier for lane in lanes]))
    source.open()
    log.info("source opened: %s", source.describe())
    return source
