"""What the MQTT publisher says when something is wrong: one clear line per kind of problem.

A problem (wrong credentials, ACL denial, TLS mismatch, unreachable host) is logged once, then at most every
``REPEAT_LOG_S`` while it persists, with the count of repeats in between; paho retries far more often than
anyone wants to read about it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from typing import Callable

from paho.mqtt.reasoncodes import ReasonCode

from edgedet.publish.config import PASSWORD_ENV, MqttConfig

REPEAT_LOG_S = 300.0  # a persisting connection problem is logged again at most this often
# Problems that a successful connect proves solved; the others (ACL denials, drops right after connecting)
# can persist across connects and stay rate-limited.
CONNECT_PROBLEMS = frozenset({"tls", "dns", "refused", "timeout", "unreachable", "unknown", "closed", "auth"})


def describe_connect_error(exc: BaseException | None, cfg: MqttConfig) -> tuple[str, str]:
    """(kind, one-line explanation with the fix) for an exception raised while connecting."""
    where = f"{cfg.host}:{cfg.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls", (f"MQTT TLS: the certificate of {where} is not trusted ({exc.verify_message}); "
                       "check mqtt.tls.ca_file and that mqtt.host matches the certificate name")
    if isinstance(exc, ssl.SSLError):
        detail = getattr(exc, "reason", None) or exc
        return "tls", (f"MQTT TLS handshake with {where} failed ({detail}); is the port a TLS listener, and "
                       "are mqtt.tls.ca_file/cert_file/key_file the right ones?")
    if isinstance(exc, socket.gaierror):
        return "dns", f"MQTT: cannot resolve host {cfg.host!r} ({exc.strerror}); check mqtt.host"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", f"MQTT: connection to {where} refused; is the broker running, is mqtt.port right?"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout", f"MQTT: connecting to {where} timed out; is the host reachable (network, firewall)?"
    if isinstance(exc, OSError):
        return "unreachable", f"MQTT: cannot connect to {where} ({exc.strerror or exc}); check the network"
    return "unknown", f"MQTT: cannot connect to {where}; retrying"


def describe_refused(reason: ReasonCode, cfg: MqttConfig) -> tuple[str, str]:
    """(kind, one line) for a CONNACK that refused the connection."""
    name = str(reason)
    value = reason.value
    # 4/134 = bad user name or password; 5/135 = not authorized (mosquitto answers a wrong password so).
    if value in (4, 5, 134, 135):
        user = "no user name (anonymous)" if cfg.username is None else f"user {cfg.username!r}"
        return "auth", (f"MQTT: {cfg.host}:{cfg.port} refused the login of {user} ({name}); check "
                        f"mqtt.username and the password (mqtt.password_file or ${PASSWORD_ENV})")
    return f"connack{value}", f"MQTT: {cfg.host}:{cfg.port} refused the connection ({name})"


class ProblemLog:
    """Rate-limited problem lines, keyed by kind. Thread-safe; its lock is never held while logging."""

    def __init__(self, logger: logging.Logger, *, clock: Callable[[], float] = time.monotonic,
                 repeat_s: float = REPEAT_LOG_S) -> None:
        self._logger = logger
        self._clock = clock
        self._repeat_s = repeat_s
        self._lock = threading.Lock()
        # kind -> [clock time it was last logged, times seen since then]
        self._seen: dict[str, list[float]] = {}

    def report(self, kind: str, line: str, level: int = logging.ERROR) -> None:
        """Log a problem once, then at most every ``repeat_s`` while it persists (no per-retry spam)."""
        now = self._clock()
        with self._lock:
            entry = self._seen.get(kind)
            if entry is None:
                self._seen[kind] = [now, 0]
                repeat = None
            elif now - entry[0] >= self._repeat_s:
                repeat = int(entry[1])
                entry[0], entry[1] = now, 0
            else:
                entry[1] += 1
                return
        suffix = "; retrying with backoff" if repeat is None else f" (again, {repeat} more times); retrying"
        self._logger.log(level, "%s%s", line, suffix)

    def clear(self, kinds: Iterable[str]) -> bool:
        """Forget these kinds (they are solved: the next one is news again). True if any was active."""
        found = False
        with self._lock:
            for kind in kinds:
                found = self._seen.pop(kind, None) is not None or found
        return found
