"""Home Assistant MQTT discovery: one device with the entities a Home Assistant user expects.

Follows https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery (per-component discovery): config
topic ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``; entities join the device registry only
with a ``unique_id`` and a ``device`` carrying ``identifiers``; ``origin`` needs ``name``. Availability
follows our ``status`` topic. Configs are retained and re-sent when Home Assistant's birth message
(``<prefix>/status`` = ``online``) arrives.

The entities read one retained, rate-limited state message (``<topic_prefix>/<device_id>/state``, built by
``state_payload``; edgedet/publish/hastate.py decides when): retained so that a Home Assistant that starts
or restarts later gets the current state on subscribing, rate-limited so that its recorder does not write
30 rows a second. The snapshot (retained JPEG) feeds an ``image`` entity.

Keys newer Home Assistant releases read and 2024.3 drops silently (its discovery schemas remove unknown
keys): ``options`` of the enum sensor (read since 2024.9) and ``default_entity_id`` (2025.10; replaces
``object_id``, which is deprecated and not sent: 2024.3 derives the same entity id from the device and
entity names).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from edgedet import __version__
from edgedet.publish import messages
from edgedet.results import FrameResult

ORIGIN_NAME = "edgedet"
PAYLOAD_AVAILABLE, PAYLOAD_NOT_AVAILABLE = messages.STATUS_ONLINE, messages.STATUS_OFFLINE  # the status topic
SUPPORT_URL = "https://github.com/edgedet/edgedet"


class SensorSpec(NamedTuple):
    object_id: str
    name: str
    value_template: str
    unit: str | None
    state_class: str | None
    icon: str
    extra: dict[str, Any]


# Attributes: the label sensor carries the top-k classes, the latency sensor every stage.
LABEL_ATTRIBUTES = "{{ {'class_id': value_json.class_id, 'top_k': value_json.top_k} | tojson }}"
LATENCY_ATTRIBUTES = "{{ value_json.latency_ms | tojson }}"

# A numeric sensor ignores an empty result: before the first stats message the fps stays as it was.
SENSORS = (
    SensorSpec("score", "Score", "{{ value_json.score }}", None, "measurement", "mdi:percent",
               {"suggested_display_precision": 3}),
    SensorSpec("inference_ms", "Inference latency", "{{ value_json.latency_ms.inference }}", "ms",
               "measurement", "mdi:timer-outline",
               {"device_class": "duration", "suggested_display_precision": 1,
                "json_attributes_template": LATENCY_ATTRIBUTES}),
    SensorSpec("fps", "Frames per second", "{{ value_json.fps | default('') }}", "fps", "measurement",
               "mdi:speedometer", {"suggested_display_precision": 1}),
)


def status_topic(ha_prefix: str) -> str:
    """Home Assistant's birth/last-will topic (``homeassistant.prefix`` has no trailing ``/``)."""
    return f"{ha_prefix}/status"


def binary_sensor_template(label: str, threshold: float) -> str:
    """``ON`` while ``label`` is the top class with a score >= ``threshold``; the same rule as ``binary_on``."""
    return (f"{{{{ 'ON' if value_json.label == {json.dumps(label)} and value_json.score >= {threshold!r} "
            "else 'OFF' }}")


def binary_on(label: str | None, score: float, cls: str, threshold: float) -> bool:
    """What the binary sensor of ``cls`` shows for a state message with this label and (rounded) score."""
    return label == cls and score >= threshold


def state_payload(result: FrameResult, *, run_id: str, fps: float | None) -> dict[str, Any]:
    """The retained ``state`` message: the newest frame's classes and latencies, the loop's fps once known."""
    payload: dict[str, Any] = {"run_id": run_id, **messages.frame_fields(result)}
    if fps is not None:
        payload["fps"] = round(float(fps), 2)
    return payload


def _slug(text: str) -> str:
    """Home Assistant's slugify for ASCII names: lower case, every run of other characters one ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unnamed"


def discovery_configs(*, device_id: str, base_topic: str, ha_prefix: str = "homeassistant",
                      model_name: str | None = None, labels: Sequence[str] = (),
                      binary_sensors: dict[str, float] | None = None, enum_max_labels: int = 100,
                      expire_after_s: int = 0, snapshot: bool = False, classifier: str = "",
                      version: str = __version__) -> list[tuple[str, dict[str, Any]]]:
    """``(config topic, payload)`` for every entity. ``base_topic`` is ``<topic_prefix>/<device_id>``.

    ``classifier``: one of several classifiers (``models:``): its entities read ``<base_topic>/<classifier>/``
    and are named after it (``door Label``), on the same device as the others'."""
    node_id = f"edgedet_{device_id}"
    prefix = ha_prefix
    device: dict[str, Any] = {
        "identifiers": [node_id],
        "name": f"edgedet {device_id}",
        "manufacturer": "edgedet",
        "model": model_name or "TFLite classifier",
        "sw_version": version,
    }
    origin = {"name": ORIGIN_NAME, "sw_version": version, "support_url": SUPPORT_URL}
    own_topic = f"{base_topic}/{classifier}" if classifier else base_topic
    state_topic = f"{own_topic}/state"
    # What Home Assistant names the entity (device name + entity name, slugified) is also its default id.
    entity_base = _slug(device["name"])

    def entity(component: str, object_id: str, name: str, fields: dict[str, Any],
               expire: bool = True) -> tuple[str, dict[str, Any]]:
        if classifier:
            object_id, name = f"{classifier}_{object_id}", f"{classifier} {name}"
        payload: dict[str, Any] = {
            "name": name,
            "unique_id": f"{node_id}_{object_id}",
            "default_entity_id": f"{component}.{entity_base}_{_slug(name)}",
            **fields,
            "availability_topic": f"{base_topic}/status",
            "payload_available": PAYLOAD_AVAILABLE,
            "payload_not_available": PAYLOAD_NOT_AVAILABLE,
            "device": device,
            "origin": origin,
        }
        if expire and expire_after_s > 0:
            payload["expire_after"] = expire_after_s
        return f"{prefix}/{component}/{node_id}/{object_id}/config", payload

    label_fields: dict[str, Any] = {
        "state_topic": state_topic,
        "value_template": "{{ value_json.label }}",
        "json_attributes_topic": state_topic,
        "json_attributes_template": LABEL_ATTRIBUTES,
        "icon": "mdi:tag-text",
    }
    if labels and len(labels) <= enum_max_labels:
        label_fields["device_class"] = "enum"
        label_fields["options"] = list(dict.fromkeys(labels))  # Home Assistant refuses repeated options
    configs = [entity("sensor", "label", "Label", label_fields)]
    for spec in SENSORS:
        fields: dict[str, Any] = {"state_topic": state_topic, "value_template": spec.value_template,
                                  "icon": spec.icon}
        if spec.unit is not None:
            fields["unit_of_measurement"] = spec.unit
        if spec.state_class is not None:
            fields["state_class"] = spec.state_class
        fields.update(spec.extra)
        if "json_attributes_template" in fields:
            fields["json_attributes_topic"] = state_topic
        configs.append(entity("sensor", spec.object_id, spec.name, fields))
    for label, threshold in (binary_sensors or {}).items():
        configs.append(entity("binary_sensor", f"class_{_slug(label)}", label, {
            "state_topic": state_topic,
            "value_template": binary_sensor_template(label, threshold),
            "payload_on": "ON",
            "payload_off": "OFF",
            "icon": "mdi:eye",
        }))
    if snapshot:
        configs.append(entity("image", "snapshot", "Snapshot", {
            "image_topic": f"{own_topic}/snapshot",
            "content_type": "image/jpeg",
        }, expire=False))  # image entities have no expire_after
    return configs
