"""The MQTT sink of the frame loop: policy + payloads + the non-blocking publisher.

Wiring (frame loop)::

    sink = MqttSink.from_config(cfg, info=info_sections)   # starts connecting in the background
    ...  sink.handle(result, frame=rgb)                     # per frame, inference thread; never blocks
    ...  sink.on_stats(loop.snapshot())                     # every publish.stats_interval_s
    sink.close()                                            # flush (bounded), offline retained, disconnect
"""

from __future__ import annotations

import functools
import io
import json
import logging
import struct
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple

import numpy as np

from edgedet.publish import homeassistant, messages
from edgedet.publish.config import HomeAssistantConfig, PublishConfig
from edgedet.publish.hastate import HaState
from edgedet.publish.mqtt import MqttPublisher
from edgedet.publish.policy import PublishPolicy
from edgedet.results import Class, FrameResult, LoopStats

log = logging.getLogger("edgedet.mqtt")
# Discovery is re-sent on Home Assistant's "online" at most this often: a flood of them (a bridge loop, a
# misbehaving client) must not become a flood of retained re-publishes and log lines.
HA_RESEND_MIN_S = 5.0


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@functools.cache
def _detection_layout(count: int) -> struct.Struct:
    """frame_id, captured_wall, frame_age_ms, the four ``messages.LATENCY_KEYS`` latencies, ``count`` class ids
    and ``count`` scores."""
    return struct.Struct(f"<qdd4d{count}q{count}d")


class QueuedDetection:
    """A detection waiting in the outbox, its numbers packed into one bytes object; the sender thread calls it
    for the payload.

    While the broker is down the outbox holds up to ``mqtt.outbox_max`` of these and evicts the oldest at every
    frame: 3 small objects per message instead of the frame's whole ``FrameResult``, so the frame's objects are
    freed at once, as with MQTT off (README, performance: the broker-down benchmark).
    """

    __slots__ = ("classifier", "labels", "model", "packed", "run_id", "seq")

    def __init__(self, result: FrameResult, seq: int, run_id: str, model: str, classifier: str = "") -> None:
        # Runs in the frame loop at every frame: one struct.pack, no per-field loops.
        latency = result.latency_ms.get
        ids, scores, labels = zip(*result.top_k) if result.top_k else ((), (), ())
        self.packed = _detection_layout(len(labels)).pack(
            result.frame_id, result.captured_wall, result.frame_age_ms, latency("preprocess", 0.0),
            latency("inference", 0.0), latency("postprocess", 0.0), latency("total", 0.0), *ids, *scores)
        self.labels = labels
        self.seq, self.run_id, self.model = seq, run_id, model  # run_id and model: shared strings
        self.classifier = classifier

    def result(self) -> FrameResult:
        count = len(self.labels)
        numbers = _detection_layout(count).unpack(self.packed)
        frame_id, captured_wall, frame_age_ms = numbers[:3]
        latency_end = 3 + len(messages.LATENCY_KEYS)
        ids, scores = numbers[latency_end:latency_end + count], numbers[latency_end + count:]
        return FrameResult(frame_id=frame_id, captured_wall=captured_wall, captured_mono=0.0,
                           top_k=[Class(*fields) for fields in zip(ids, scores, self.labels)],
                           latency_ms=dict(zip(messages.LATENCY_KEYS, numbers[3:latency_end])),
                           frame_age_ms=frame_age_ms, model=self.model, classifier=self.classifier)

    def __call__(self) -> bytes:
        return _dumps(messages.detection_payload(self.result(), self.run_id, self.seq, self.model))


def encode_snapshot(frame: Any, max_bytes: int) -> bytes | None:
    """JPEG of an HxWx3 uint8 RGB array or PIL image, at most ``max_bytes`` (lower quality, then smaller)."""
    from PIL import Image  # only when snapshots are on

    image = frame if isinstance(frame, Image.Image) else Image.fromarray(frame)
    image = image.convert("RGB")
    for _ in range(6):
        for quality in (85, 70, 55, 40, 25):
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=quality)
            if buffer.tell() <= max_bytes:
                return buffer.getvalue()
        if min(image.size) <= 16:
            break
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)))
    return None


class SnapshotJob:
    """The newest frame waiting to become a snapshot JPEG; the sender thread encodes it (calls it).

    At most one frame is held: while a snapshot waits (the broker is down, or the sender is busy) a newer label
    change replaces its frame instead of queueing another 640x480 copy."""

    __slots__ = ("_frame", "_lock", "max_bytes")

    def __init__(self, frame: Any, max_bytes: int) -> None:
        self._lock = threading.Lock()
        self._frame: Any = frame
        self.max_bytes = max_bytes

    def replace(self, frame: Any) -> bool:
        """Put a newer frame in; False when this job was already encoded (queue a new one)."""
        with self._lock:
            if self._frame is None:
                return False
            self._frame = frame
            return True

    def __call__(self) -> bytes | None:
        with self._lock:
            frame, self._frame = self._frame, None
        jpeg = encode_snapshot(frame, self.max_bytes)
        if jpeg is None:
            log.warning("snapshot skipped: cannot fit the frame in publish.snapshot_max_bytes=%d", self.max_bytes)
        return jpeg


class ChannelSpec(NamedTuple):
    """What one classifier publishes under: its name ("" = the topics of a one-model setup), its model's name
    and labels, its publish settings and its Home Assistant binary sensors."""

    name: str
    model_name: str
    labels: Sequence[str]
    publish: PublishConfig
    binary_sensors: Mapping[str, float]


class Channel:
    """One classifier's detections: topics, publish policy, ``seq`` and Home Assistant state."""

    def __init__(self, spec: ChannelSpec, publisher: MqttPublisher, *, seq: int = 0) -> None:
        self.spec = spec
        self.seq = seq
        self.policy = PublishPolicy(spec.publish.mode, min_score=spec.publish.min_score,
                                    debounce_frames=spec.publish.debounce_frames,
                                    republish_s=spec.publish.republish_s, thresholds=spec.publish.thresholds,
                                    consensus=(spec.publish.consensus.frames, spec.publish.consensus.of)
                                    if spec.publish.consensus is not None else None)
        self.state_result: FrameResult | None = None
        self.snapshot_label: str | None = None
        self.snapshot: SnapshotJob | None = None
        self.ha_state: HaState | None = None
        self.attach(publisher)

    def topic(self, kind: str) -> str:
        return self.publisher.topic(f"{self.spec.name}/{kind}" if self.spec.name else kind)

    def attach(self, publisher: MqttPublisher) -> None:
        self.publisher = publisher
        self.detection_topic = self.topic("detection")
        self.snapshot_topic = self.topic("snapshot")


class MqttSink:
    """The MQTT ``Sink``: publish policy, payloads and a non-blocking publisher, one ``Channel`` per classifier.

    It outlives reloads: each classifier's ``seq`` counts on, and a reload hands it a new publisher
    (``replace_publisher``) or new classifiers, models and publish settings (``set_channels``)."""

    def __init__(self, publisher: MqttPublisher, publish_cfg: PublishConfig, *, model_name: str = "",
                 run_id: str | None = None, ha_cfg: HomeAssistantConfig | None = None,
                 clock: Callable[[], float] = time.monotonic, labels: Sequence[str] = (),
                 channels: Sequence[ChannelSpec] | None = None) -> None:
        self.publisher = publisher
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._clock = clock
        self._ha_lock = threading.Lock()
        self._ha_sent_at: float | None = None
        self._ha_skipped = 0
        self._info: dict[str, Any] | None = None
        self.cfg = publish_cfg
        self.ha_cfg: HomeAssistantConfig | None = ha_cfg
        self._discovery_topics: set[str] = set()  # the config topics sent last (a reload may drop some)
        self.channels: dict[str, Channel] = {}
        binary = dict(ha_cfg.binary_sensors) if ha_cfg is not None else {}
        self._set_channels(list(channels) if channels is not None else
                           [ChannelSpec("", model_name, list(labels), publish_cfg, binary)])
        self._topics()
        self.set_homeassistant(ha_cfg)

    def _topics(self) -> None:
        self.stats_topic = self.publisher.topic("stats")
        self.info_topic = self.publisher.topic("info")

    @property
    def _only(self) -> Channel:
        return next(iter(self.channels.values()))

    # The one-classifier view, as before ``models:``: the first (only) channel's.
    @property
    def seq(self) -> int:
        return self._only.seq

    @seq.setter
    def seq(self, value: int) -> None:
        self._only.seq = value

    def seqs(self) -> dict[str, int]:
        return {name: channel.seq for name, channel in self.channels.items()}

    @classmethod
    def from_config(cls, cfg: Any, *, model_name: str = "", info: dict[str, Any] | None = None,
                    run_id: str | None = None, start: bool = True, labels: Sequence[str] = (),
                    channels: Sequence[ChannelSpec] | None = None) -> MqttSink:
        """Build from an ``EdgedetConfig``; ``info`` = keyword arguments of ``messages.info_payload``
        except device_id/run_id (model, runtime, delegate, source, started_wall); ``labels``: the model's
        (Home Assistant's enum options and binary sensors); ``channels``: one per classifier of ``models:``."""
        publisher = MqttPublisher(cfg.mqtt, cfg.resolved_device_id())
        sink = cls(publisher, cfg.publish, model_name=model_name, run_id=run_id, ha_cfg=cfg.homeassistant,
                   labels=labels, channels=channels)
        if info is not None:
            sink.publish_info(**info)
        if start:
            publisher.start()
        return sink

    # -- what a reload changes --------------------------------------------------------------------------
    def _set_channels(self, specs: list[ChannelSpec]) -> None:
        old, self.channels = self.channels, {}
        for spec in specs:
            before = old.get(spec.name)
            if before is not None and before.spec == spec:
                self.channels[spec.name] = before  # unchanged: its policy state and snapshot go on
            else:
                self.channels[spec.name] = Channel(spec, self.publisher, seq=before.seq if before is not None else 0)

    def set_channels(self, specs: Sequence[ChannelSpec]) -> None:
        """A new set of classifiers (a reload of ``models:``): each name keeps its ``seq``; a channel whose
        spec is unchanged keeps its policy state too. The binary sensors were checked against the models'
        labels by the pipeline, before anything running was touched."""
        self._set_channels(list(specs))
        self._attach_ha()
        self._send_discovery()

    def set_homeassistant(self, ha_cfg: HomeAssistantConfig | None) -> None:
        self.ha_cfg = ha_cfg
        if ha_cfg is not None and ha_cfg.enabled and len(self.channels) == 1 and not self._only.spec.name:
            self._only.spec = self._only.spec._replace(binary_sensors=dict(ha_cfg.binary_sensors))
        self._attach_ha()
        if ha_cfg is not None and ha_cfg.enabled:
            self._send_discovery()
            self.publisher.subscribe(homeassistant.status_topic(ha_cfg.prefix), self._on_ha_status)

    def _attach_ha(self) -> None:
        enabled = self.ha_cfg is not None and self.ha_cfg.enabled
        for channel in self.channels.values():
            channel.ha_state = HaState(self.publisher, self.ha_cfg, run_id=self.run_id, clock=self._clock,
                                       topic=channel.topic("state"),
                                       binary_sensors=channel.spec.binary_sensors) \
                if enabled and self.ha_cfg is not None else None

    def replace_publisher(self, publisher: MqttPublisher, timeout_s: float = 1.0) -> int:
        """Move to a new connection (new MQTT settings): the queued messages go with it. Returns how many."""
        old, self.publisher = self.publisher, publisher
        self._topics()
        for channel in self.channels.values():
            channel.attach(publisher)
        if self._info is not None:
            self.publish_info(**self._info)
        self.set_homeassistant(self.ha_cfg)
        moved = old.hand_over(publisher, timeout_s)
        publisher.start()
        return moved

    # -- Sink protocol ------------------------------------------------------------------------------
    def handle(self, result: FrameResult, frame: Any = None) -> None:
        channel = self.channels.get(result.classifier)
        if channel is None:
            if len(self.channels) != 1:
                return  # a classifier a reload just removed: its last frame is not published
            channel = self._only
        if channel.ha_state is not None:
            channel.ha_state.frame(result)  # every frame, whatever publish.mode decides for the detections
        top = result.top_k[0] if result.top_k else None
        decision = channel.policy.decide(top.label if top else None, float(top.score) if top else 0.0,
                                         self._clock())
        if top is not None and top.label == channel.policy.state:
            channel.state_result = result  # the newest frame that agrees with the published state
        if not decision.publish:
            return
        republish = decision.reason == "republish" and channel.state_result is not None
        to_send = channel.state_result if republish else result
        assert to_send is not None
        channel.seq += 1
        # Encoded by the sender thread (the frame loop only appends): see MqttPublisher.publish.
        queued = QueuedDetection(to_send, channel.seq, self.run_id, channel.spec.model_name or to_send.model,
                                 channel.spec.name)
        self.publisher.publish(channel.detection_topic, queued)
        if self.cfg.snapshot and frame is not None and decision.label != channel.snapshot_label:
            channel.snapshot_label = decision.label
            # The frame is only valid during this call: copy it (a memcpy); the JPEG is encoded by the sender.
            image = np.array(frame, copy=True)
            if channel.snapshot is None or not channel.snapshot.replace(image):
                channel.snapshot = SnapshotJob(image, self.cfg.snapshot_max_bytes)
                # Retained: Home Assistant's image entity shows the last one after a restart.
                self.publisher.publish(channel.snapshot_topic, channel.snapshot, retain=True)

    def on_stats(self, stats: LoopStats) -> None:
        for name, channel in self.channels.items():
            if channel.ha_state is not None:
                own = stats.classifiers.get(name) if name else None
                channel.ha_state.stats(stats, None if own is None else float(own["fps_out"]))
        payload = messages.stats_payload(stats, self.publisher.stats(), device_id=self.publisher.device_id,
                                         run_id=self.run_id, wall=time.time())
        self.publisher.publish(self.stats_topic, _dumps(payload))

    def counters(self) -> dict[str, Any]:
        return {"mqtt": self.publisher.stats()}

    def close(self, flush_timeout_s: float | None = None) -> None:
        """Flush at most ``flush_timeout_s`` (default mqtt.flush_timeout_s), publish offline, disconnect."""
        self.publisher.stop(flush_timeout_s)

    # -- other messages -----------------------------------------------------------------------------
    def publish_info(self, *, model: dict[str, Any], runtime: dict[str, Any], delegate: dict[str, Any],
                     source: dict[str, Any], started_wall: float | None = None,
                     classifiers: list[dict[str, Any]] | None = None) -> None:
        """The retained ``info`` message (re-published by a reload that changes a model or the source)."""
        started = time.time() if started_wall is None else started_wall
        self._info = {"model": model, "runtime": runtime, "delegate": delegate, "source": source,
                      "started_wall": started, "classifiers": classifiers}
        payload = messages.info_payload(device_id=self.publisher.device_id, run_id=self.run_id,
                                        started_wall=started, model=model, runtime=runtime, delegate=delegate,
                                        source=source, classifiers=classifiers)
        self.publisher.publish_retained(self.info_topic, _dumps(payload))

    def _send_discovery(self) -> None:
        if self.ha_cfg is None or not self.ha_cfg.enabled:
            return
        names = list(dict.fromkeys(c.spec.model_name for c in self.channels.values() if c.spec.model_name))
        device_model = ", ".join(names) or None  # the same in every entity's config: one device
        sent: set[str] = set()
        for channel in self.channels.values():
            for config_topic, payload in homeassistant.discovery_configs(
                    device_id=self.publisher.device_id, base_topic=self.publisher.base_topic,
                    ha_prefix=self.ha_cfg.prefix, model_name=device_model, labels=channel.spec.labels,
                    binary_sensors=dict(channel.spec.binary_sensors), enum_max_labels=self.ha_cfg.enum_max_labels,
                    expire_after_s=self.ha_cfg.expire_after_s, snapshot=self.cfg.snapshot,
                    classifier=channel.spec.name):
                self.publisher.publish_retained(config_topic, _dumps(payload))
                sent.add(config_topic)
        # An entity a reload removed (a classifier, a binary sensor): an empty retained config deletes it.
        for gone in sorted(self._discovery_topics - sent):
            self.publisher.publish_retained(gone, b"")
        self._discovery_topics = sent

    def _on_ha_status(self, topic: str, payload: bytes) -> None:
        if payload.strip() != b"online":
            return
        now = self._clock()
        with self._ha_lock:  # paho's network thread; reloads call set_homeassistant from the loop thread
            skip = self._ha_sent_at is not None and now - self._ha_sent_at < HA_RESEND_MIN_S
            if skip:
                self._ha_skipped += 1
                first_skip = self._ha_skipped == 1
            else:
                self._ha_sent_at, self._ha_skipped, first_skip = now, 0, False
        if first_skip:
            log.warning("Home Assistant said online again within %g s: discovery is re-sent at most every %g s "
                        "(is something publishing %s in a loop?)", HA_RESEND_MIN_S, HA_RESEND_MIN_S, topic)
        if skip:
            return
        log.info("Home Assistant is online again: re-sending discovery and the state")
        self._send_discovery()
        for channel in self.channels.values():
            if channel.ha_state is not None:
                channel.ha_state.request_republish()
