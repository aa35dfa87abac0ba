"""Configuration of publishing (``publish:``, ``mqtt:`` and ``homeassistant:`` in config.yaml)."""


from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from edgedet.errors import ConfigError
from edgedet.model.config import Strict

PASSWORD_ENV = "EDGEDET_MQTT_PASSWORD"
log = logging.getLogger("edgedet.config")


def _no_trailing_slash(value: str) -> str:
    """A topic prefix is joined with ``/``: ``edgedet/`` and ``edgedet`` name the same topics."""
    return value.rstrip("/")


class PublishConfig(Strict):
    mode: Literal["every_frame", "on_change"] = "every_frame"
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    debounce_frames: int = Field(default=1, ge=1)
    republish_s: float = Field(default=60.0, ge=0)
    stats_interval_s: float = Field(default=30.0, gt=0)
    snapshot: bool = False
    snapshot_max_bytes: int = Field(default=100_000, ge=1000)
    jsonl_path: Optional[Path] = None
    console: bool = True


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


class HomeAssistantConfig(Strict):
    enabled: bool = False
    prefix: str = "homeassistant"

    _prefix = field_validator("prefix")(_no_trailing_slash)
