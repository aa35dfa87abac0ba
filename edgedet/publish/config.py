"""Configuration of publishing (``publish:``, ``mqtt:`` and ``homeassistant:`` in config.yaml)."""


from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Optional

from edgedet.errors import ConfigError
from edgedet.section import Check, Range, Section

PASSWORD_ENV = "EDGEDET_MQTT_PASSWORD"
log = logging.getLogger("edgedet.config")


def _no_trailing_slash(value: str) -> str:
    """A topic prefix is joined with ``/``: ``edgedet/`` and ``edgedet`` name the same topics."""
    return value.rstrip("/")


TopicPrefix = Annotated[str, Check(_no_trailing_slash)]
Threshold = Annotated[float, Range(ge=0.0, le=1.0)]


def _scores(value: dict[str, float]) -> dict[str, float]:
    bad = [f"{k}={v}" for k, v in value.items() if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"each threshold must be a score in 0..1, got {', '.join(bad)}")
    return value


Thresholds = Annotated[dict[str, float], Check(_scores)]


@dataclasses.dataclass(init=False)
class ConsensusConfig(Section):
    """on_change: a new top class is published once it wins ``frames`` of the last ``of`` frames."""

    frames: Annotated[int, Range(ge=1)]
    of: Annotated[int, Range(ge=1)]

    def _check(self) -> None:
        if not (self.frames <= self.of and 2 * self.frames > self.of):
            raise ValueError(f"frames ({self.frames}) must be more than half of of ({self.of}) and at most of, "
                             "e.g. {frames: 3, of: 5}")


@dataclasses.dataclass(init=False)
class SaveUncertainConfig(Section):
    """Keep hard examples (the model's view, PNG) for retraining: ``dir/<predicted label>/``."""

    dir: Path
    below: Annotated[float, Range(ge=0.0, le=1.0)] = 0.6  # a top score below this is uncertain
    max_mb: Annotated[float, Range(gt=0)] = 200.0  # the oldest files go first beyond this


@dataclasses.dataclass(init=False)
class PublishConfig(Section):
    mode: Literal["every_frame", "on_change"] = "every_frame"
    min_score: Annotated[float, Range(ge=0.0, le=1.0)] = 0.0
    debounce_frames: Annotated[int, Range(ge=1)] = 1
    # on_change: the score a class's frames need, per label, and `default` for the others (else min_score).
    thresholds: Thresholds = dataclasses.field(default_factory=dict)
    # on_change: instead of debounce_frames' consecutive run, a majority of the last `of` frames.
    consensus: Optional[ConsensusConfig] = None
    republish_s: Annotated[float, Range(ge=0)] = 60.0
    stats_interval_s: Annotated[float, Range(gt=0)] = 30.0
    snapshot: bool = False
    snapshot_max_bytes: Annotated[int, Range(ge=1000)] = 100_000
    jsonl_path: Optional[Path] = None
    console: bool = True
    save_uncertain: Optional[SaveUncertainConfig] = None

    def _check(self) -> None:
        if self.consensus is not None and self.debounce_frames != 1:
            raise ValueError("set debounce_frames or consensus, not both (consensus replaces the consecutive run)")


@dataclasses.dataclass(init=False)
class TlsConfig(Section):
    enabled: bool = False
    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    insecure: bool = False

    def _check(self) -> None:
        if self.enabled and (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together (a client certificate) or neither")


@dataclasses.dataclass(init=False)
class MqttConfig(Section):
    enabled: bool = False
    host: str = "localhost"
    port: Annotated[int, Range(ge=1, le=65535)] = 1883
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    topic_prefix: TopicPrefix = "edgedet"
    qos: Literal[0, 1, 2] = 1
    client_id: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = None
    password_file: Optional[Path] = None
    keepalive_s: Annotated[int, Range(ge=5, le=65535)] = 30
    reconnect_min_s: Annotated[float, Range(gt=0)] = 1.0
    reconnect_max_s: Annotated[float, Range(gt=0)] = 60.0
    # Each reconnect delay is drawn within +- this fraction, and a backlog drains after a random 0..this x
    # reconnect_min_s: a fleet that lost its broker at once does not come back (and drain) at once. 0 = off.
    reconnect_jitter: Annotated[float, Range(ge=0, lt=1)] = 0.5
    outbox_max: Annotated[int, Range(ge=1)] = 10000
    # The outbox file (SQLite): what cannot be delivered survives a restart and a power cut. None: memory only.
    outbox_path: Optional[Path] = None
    # The longest a message waits in memory only while undeliverable (what a kill -9 or a power cut can lose).
    outbox_sync_s: Annotated[float, Range(gt=0)] = 1.0
    # The most payload bytes the outbox file holds (the oldest are dropped first, like outbox_max).
    outbox_max_mb: Annotated[float, Range(gt=0)] = 64.0
    # QoS>0 messages handed to paho and not yet acknowledged (PUBACK); bounds paho's own in-memory store.
    inflight_max: Annotated[int, Range(ge=1, le=65000)] = 100
    # On a clean stop: how long to wait for the outbox to drain before publishing ``offline``.
    flush_timeout_s: Annotated[float, Range(ge=0)] = 5.0
    tls: TlsConfig = dataclasses.field(default_factory=TlsConfig)

    def _check(self) -> None:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_min_s "
                             f"({self.reconnect_min_s})")
        if self.password is not None and self.password_file is not None:
            raise ValueError("password and password_file are both set; keep only one of them")

    def effective_password(self, *, where: str | None = None,
                           environ: Mapping[str, str] | None = None) -> str | None:
        """The password to log in with: the first line of ``password_file``, else ``$EDGEDET_MQTT_PASSWORD``,
        else ``password`` (None: no password). ``where`` names the config file in errors.

        The file is read on every call, so a reload picks up a changed secret."""
        if self.password_file is not None:
            return _read_password_file(self.password_file, where)
        env = os.environ if environ is None else environ
        if env.get(PASSWORD_ENV) is not None:
            return env[PASSWORD_ENV]
        return self.password


def _read_password_file(path: Path, where: str | None) -> str:
    try:
        # The first line only: `echo pw > file` adds a newline that is not part of the password.
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"mqtt.password_file: file not found: {path}", where=where,
                          fix="check the path") from None
    except PermissionError:
        raise ConfigError(f"mqtt.password_file: cannot read {path} (permission denied)", where=where,
                          fix="make it readable by the service user") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"mqtt.password_file: cannot read {path} ({exc.__class__.__name__})",
                          where=where, fix="make it a readable UTF-8 text file") from None
    if not lines or not lines[0]:
        raise ConfigError(f"mqtt.password_file: {path} is empty", where=where,
                          fix="write the password on the file's first line")
    with contextlib.suppress(OSError):
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("mqtt.password_file %s is readable by %s (mode %03o); restrict it: chmod 600 %s", path,
                        "group and others" if mode & 0o044 == 0o044 else "others" if mode & 0o004 else "group",
                        mode, path)
    return lines[0]


@dataclasses.dataclass(init=False)
class HomeAssistantConfig(Section):
    enabled: bool = False
    prefix: TopicPrefix = "homeassistant"
    # The entities read one retained state message (<topic_prefix>/<device_id>/state): sent at once when the
    # label or a binary sensor changes, else at most (and, while frames flow, at least) this often.
    state_interval_s: Annotated[float, Range(gt=0)] = 5.0
    # Entities go "unavailable" when no state message arrived for this long (a stalled stream); 0 = never.
    expire_after_s: Annotated[int, Range(ge=0)] = 60
    # The label sensor is an enum with the model's labels as its options up to this many labels; above it,
    # a plain text sensor (Home Assistant sends the options with every state change to every open UI).
    enum_max_labels: Annotated[int, Range(ge=0)] = 100
    # One binary sensor per class: on while that class is the top class with a score >= its threshold.
    binary_sensors: dict[str, Threshold] = dataclasses.field(default_factory=dict)

    def _check(self) -> None:
        if self.expire_after_s and self.expire_after_s <= self.state_interval_s:
            raise ValueError(f"expire_after_s ({self.expire_after_s}) must be > state_interval_s "
                             f"({self.state_interval_s}) or 0 (never)")
