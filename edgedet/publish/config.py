"""Configuration of publishing (``publish:``, ``mqtt:`` and ``homeassistant:`` in config.yaml)."""


from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, field_validator, model_validator

from edgedet.errors import ConfigError
from edgedet.model.config import Strict

PASSWORD_ENV = "EDGEDET_MQTT_PASSWORD"
log = logging.getLogger("edgedet.config")


def _no_trailing_slash(value: str) -> str:
    """A topic prefix is joined with ``/``: ``edgedet/`` and ``edgedet`` name the same topics."""
    return value.rstrip("/")


class ConsensusConfig(Strict):
    """on_change: a new top class is published once it wins ``frames`` of the last ``of`` frames."""

    frames: int = Field(ge=1)
    of: int = Field(ge=1)

    @model_validator(mode="after")
    def _majority(self) -> ConsensusConfig:
        if not (self.frames <= self.of and 2 * self.frames > self.of):
            raise ValueError(f"frames ({self.frames}) must be more than half of of ({self.of}) and at most of, "
                             "e.g. {frames: 3, of: 5}")
        return self


class SaveUncertainConfig(Strict):
    """Keep hard examples (the model's view, PNG) for retraining: ``dir/<predicted label>/``."""

    dir: Path
    below: float = Field(default=0.6, ge=0.0, le=1.0)  # a top score below this is uncertain
    max_mb: float = Field(default=200.0, gt=0)  # the oldest files go first beyond this


class PublishConfig(Strict):
    mode: Literal["every_frame", "on_change"] = "every_frame"
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    debounce_frames: int = Field(default=1, ge=1)
    # on_change: the score a class's frames need, per label, and `default` for the others (else min_score).
    thresholds: dict[str, float] = Field(default_factory=dict)
    # on_change: instead of debounce_frames' consecutive run, a majority of the last `of` frames.
    consensus: Optional[ConsensusConfig] = None
    republish_s: float = Field(default=60.0, ge=0)
    stats_interval_s: float = Field(default=30.0, gt=0)
    snapshot: bool = False
    snapshot_max_bytes: int = Field(default=100_000, ge=1000)
    jsonl_path: Optional[Path] = None
    console: bool = True
    save_uncertain: Optional[SaveUncertainConfig] = None

    @field_validator("thresholds")
    @classmethod
    def _scores(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [f"{k}={v}" for k, v in value.items() if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"each threshold must be a score in 0..1, got {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _one_change_rule(self) -> PublishConfig:
        if self.consensus is not None and self.debounce_frames != 1:
            raise ValueError("set debounce_frames or consensus, not both (consensus replaces the consecutive run)")
        return self


class TlsConfig(Strict):
    enabled: bool = False
    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    insecure: bool = False

    @model_validator(mode="after")
    def _cert_with_key(self) -> TlsConfig:
        if self.enabled and (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together (a client certificate) or neither")
        return self


class MqttConfig(Strict):
    enabled: bool = False
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    topic_prefix: str = "edgedet"
    qos: Literal[0, 1, 2] = 1
    client_id: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = None
    password_file: Optional[Path] = None
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    # Each reconnect delay is drawn within +- this fraction, and a backlog drains after a random 0..this x
    # reconnect_min_s: a fleet that lost its broker at once does not come back (and drain) at once. 0 = off.
    reconnect_jitter: float = Field(default=0.5, ge=0, lt=1)
    outbox_max: int = Field(default=10000, ge=1)
    # The outbox file (SQLite): what cannot be delivered survives a restart and a power cut. None: memory only.
    outbox_path: Optional[Path] = None
    # The longest a message waits in memory only while undeliverable (what a kill -9 or a power cut can lose).
    outbox_sync_s: float = Field(default=1.0, gt=0)
    # The most payload bytes the outbox file holds (the oldest are dropped first, like outbox_max).
    outbox_max_mb: float = Field(default=64.0, gt=0)
    # QoS>0 messages handed to paho and not yet acknowledged (PUBACK); bounds paho's own in-memory store.
    inflight_max: int = Field(default=100, ge=1, le=65000)
    # On a clean stop: how long to wait for the outbox to drain before publishing ``offline``.
    flush_timeout_s: float = Field(default=5.0, ge=0)
    tls: TlsConfig = Field(default_factory=TlsConfig)

    _prefix = field_validator("topic_prefix")(_no_trailing_slash)

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_min_s "
                             f"({self.reconnect_min_s})")
        return self

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("password and password_file are both set; keep only one of them")
        return self

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


Threshold = Annotated[float, Field(ge=0.0, le=1.0)]


class HomeAssistantConfig(Strict):
    enabled: bool = False
    prefix: str = "homeassistant"
    # The entities read one retained state message (<topic_prefix>/<device_id>/state): sent at once when the
    # label or a binary sensor changes, else at most (and, while frames flow, at least) this often.
    state_interval_s: float = Field(default=5.0, gt=0)
    # Entities go "unavailable" when no state message arrived for this long (a stalled stream); 0 = never.
    expire_after_s: int = Field(default=60, ge=0)
    # The label sensor is an enum with the model's labels as its options up to this many labels; above it,
    # a plain text sensor (Home Assistant sends the options with every state change to every open UI).
    enum_max_labels: int = Field(default=100, ge=0)
    # One binary sensor per class: on while that class is the top class with a score >= its threshold.
    binary_sensors: dict[str, Threshold] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _expire_after_the_heartbeat(self) -> HomeAssistantConfig:
        if self.expire_after_s and self.expire_after_s <= self.state_interval_s:
            raise ValueError(f"expire_after_s ({self.expire_after_s}) must be > state_interval_s "
                             f"({self.state_interval_s}) or 0 (never)")
        return self

    _prefix = field_validator("prefix")(_no_trailing_slash)
