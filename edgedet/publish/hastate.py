"""When to send the retained state message the Home Assistant entities read (``<base>/state``).

Retained, so that a Home Assistant that starts after edgedet, or restarts while it runs, gets the current
state the moment it subscribes, not ``unknown`` until the next detection (a non-retained state published
right after Home Assistant creates the entity is lost: it is not subscribed yet). Rate-limited, because
every state change is a row in Home Assistant's recorder: a change of what Home Assistant shows (the top
label, a binary sensor) is sent at once, but at most every ``MIN_CHANGE_INTERVAL_S``; the score, latencies
and fps otherwise every ``homeassistant.state_interval_s``, which is also the heartbeat that keeps
``expire_after`` from marking the entities unavailable while frames flow.

``MqttSink`` calls ``frame`` for every classified frame (frame loop thread), ``stats`` with the loop's
statistics, and ``request_republish`` from Home Assistant's birth message (paho's thread): the flag makes
the next frame send the state, so only the frame loop thread ever publishes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from edgedet.errors import ConfigError
from edgedet.publish import homeassistant, messages
from edgedet.publish.config import HomeAssistantConfig
from edgedet.publish.mqtt import MqttPublisher
from edgedet.results import FrameResult, LoopStats

MIN_CHANGE_INTERVAL_S = 0.25  # a flickering top class reaches Home Assistant at most 4 times a second


def check_binary_sensors(binary_sensors: Mapping[str, float], labels: Sequence[str],
                         key: str = "homeassistant.binary_sensors") -> None:
    """Every class named in ``binary_sensors`` (the config's ``key``) must be a label of the model."""
    if not labels:
        return
    known = set(labels)
    for name in binary_sensors:
        if name not in known:
            shown = ", ".join(repr(label) for label in list(labels)[:10])
            more = f" and {len(labels) - 10} more" if len(labels) > 10 else ""
            raise ConfigError(f"{key}: {name!r} is not a label of the model", fix=f"use one of {shown}{more}")


class HaState:
    def __init__(self, publisher: MqttPublisher, cfg: HomeAssistantConfig, *, run_id: str,
                 clock: Callable[[], float], topic: str | None = None,
                 binary_sensors: Mapping[str, float] | None = None) -> None:
        self.publisher = publisher
        self.topic = topic or publisher.topic("state")
        self.run_id = run_id
        self._interval_s = cfg.state_interval_s
        self._binary = tuple((cfg.binary_sensors if binary_sensors is None else binary_sensors).items())
        self._clock = clock
        self._last_key: tuple[Any, ...] | None = None
        self._last_sent = -math.inf
        self._republish = False
        self._fps: float | None = None
        self.sent = 0

    def frame(self, result: FrameResult) -> None:
        """Per frame, in the frame loop: a few comparisons, and a publish when one is due."""
        if not result.top_k:
            return
        top = result.top_k[0]
        score = messages.round_score(top.score)
        key = (top.label, *(homeassistant.binary_on(top.label, score, cls, threshold)
                            for cls, threshold in self._binary))
        now = self._clock()
        since = now - self._last_sent
        if not (self._republish or since >= self._interval_s
                or (key != self._last_key and since >= MIN_CHANGE_INTERVAL_S)):
            return
        self._republish = False
        self._last_key, self._last_sent = key, now
        payload = homeassistant.state_payload(result, run_id=self.run_id, fps=self._fps)
        # Encoded by the sender thread, like every payload (the Sink contract).
        self.publisher.publish(self.topic, lambda: json.dumps(payload, separators=(",", ":"),
                                                              ensure_ascii=False).encode("utf-8"),
                               qos=1, retain=True)
        self.sent += 1

    def stats(self, stats: LoopStats, fps: float | None = None) -> None:
        """The loop's statistics; ``fps``: this classifier's own rate, when several share the frames."""
        self._fps = float(stats.fps_out) if fps is None else fps

    def request_republish(self) -> None:
        """Home Assistant (re)started: send the state with the next frame."""
        self._republish = True
