"""Home Assistant MQTT discovery: one device with sensors for label, score, inference latency and fps.

Follows https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery: config topic
``<discovery_prefix>/<component>/<node_id>/<object_id>/config``; a sensor needs ``state_topic``; entities
join the device registry only with a ``unique_id`` and a ``device`` carrying ``identifiers`` (or
``connections``); ``origin`` needs ``name``. Availability follows our ``status`` topic. Configs are retained
and re-sent when Home Assistant's birth message (``<prefix>/status`` = ``online``) arrives.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from edgedet import __version__

ORIGIN_NAME = "edgedet"
SUPPORT_URL = "https://github.com/edgedet/edgedet"


class SensorSpec(NamedTuple):
    object_id: str
    name: str
    leaf: str  # our topic the value comes from
    value_template: str
    unit: str | None
    state_class: str | None
    icon: str


SENSORS = (
    SensorSpec("label", "Label", "detection", "{{ value_json.label }}", None, None, "mdi:tag-text"),
    SensorSpec("score", "Score", "detection", "{{ value_json.score }}", None, "measurement", "mdi:percent"),
    SensorSpec("inference_ms", "Inference latency", "detection", "{{ value_json.latency_ms.inference }}",
               "ms", "measurement", "mdi:timer-outline"),
    SensorSpec("fps", "Frames per second", "stats", "{{ value_json.fps_out }}", "fps", "measurement",
               "mdi:speedometer"),
)


def status_topic(ha_prefix: str) -> str:
    """Home Assistant's birth/last-will topic (``homeassistant.prefix`` has no trailing ``/``)."""
    return f"{ha_prefix}/status"


def discovery_configs(*, device_id: str, base_topic: str, ha_prefix: str = "homeassistant",
                      model_name: str | None = None,
                      version: str = __version__) -> list[tuple[str, dict[str, Any]]]:
    """``(config topic, payload)`` for every sensor. ``base_topic`` is ``<topic_prefix>/<device_id>``."""
    node_id = f"edgedet_{device_id}"
    device: dict[str, Any] = {
        "identifiers": [node_id],
        "name": f"edgedet {device_id}",
        "manufacturer": "edgedet",
        "model": model_name or "TFLite classifier",
        "sw_version": version,
    }
    origin = {"name": ORIGIN_NAME, "sw_version": version, "support_url": SUPPORT_URL}
    configs = []
    for spec in SENSORS:
        payload: dict[str, Any] = {
            "name": spec.name,
            "unique_id": f"{node_id}_{spec.object_id}",
            "state_topic": f"{base_topic}/{spec.leaf}",
            "value_template": spec.value_template,
            "availability_topic": f"{base_topic}/status",
            "payload_available": "online",
            "payload_not_available": "offline",
            "icon": spec.icon,
            "device": device,
            "origin": origin,
        }
        if spec.unit is not None:
            payload["unit_of_measurement"] = spec.unit
        if spec.state_class is not None:
            payload["state_class"] = spec.state_class
        configs.append((f"{ha_prefix}/sensor/{node_id}/{spec.object_id}/config", payload))
    return configs
