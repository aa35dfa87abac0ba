"""MQTT, step by step so the first failing step names the fix: DNS, TCP, TLS (handshake and certificate),
login, a publish and subscribe round trip on ``<prefix>/<device>/doctor`` (what the ACL must allow), and the
Home Assistant discovery configs retained under its prefix."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import uuid
from typing import Any, Optional

from edgedet.doctor import Context, Item

G = "mqtt"
TIMEOUT_S = 3.0


def _tls_context(ctx: Context, verify: bool = True) -> ssl.SSLContext:
    tls = ctx.config.mqtt.tls
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.insecure or not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _speaks_tls(host: str, port: int) -> bool:
    """Whether the broker answers a TLS handshake on this port (unverified: only the protocol matters)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock, \
                context.wrap_socket(sock, server_hostname=host):
            return True
    except (OSError, ssl.SSLError):
        return False


class _Probe:
    def __init__(self) -> None:
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.received = threading.Event()
        self.reason: Any = None
        self.granted: list[Any] = []
        self.retained: list[str] = []


def _client(ctx: Context, probe: _Probe, password: Optional[str]) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    cfg = ctx.config.mqtt
    protocol = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgedet-doctor-{uuid.uuid4().hex[:8]}",
                         protocol=protocol)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, password)
    if cfg.tls.enabled:
        client.tls_set_context(_tls_context(ctx))

    def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        probe.reason = reason
        probe.connected.set()

    def on_subscribe(c: Any, u: Any, mid: Any, granted: Any, props: Any) -> None:
        probe.granted = list(granted)
        probe.subscribed.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    return client


def check(ctx: Context) -> list[Item]:
    cfg = ctx.config.mqtt
    if not cfg.enabled:
        return [Item(G, "broker", "skip", "mqtt.enabled is false")]
    host, port = cfg.host, cfg.port
    items: list[Item] = []
    try:
        addresses = sorted({str(a[4][0]) for a in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
    except socket.gaierror as exc:
        return [Item(G, "dns", "fail", f"mqtt.host {host}: {exc.strerror}",
                     "fix mqtt.host (a name this box resolves, or the broker's IP address)")]
    items.append(Item(G, "dns", "ok", f"{host} -> {', '.join(addresses)}"))
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        items.append(Item(G, "tcp", "fail", f"{host}:{port}: {why}",
                          f"start the broker (systemctl status mosquitto on {host}) and check mqtt.port "
                          "(1883 plain, 8883 TLS) and the firewall"))
        return items
    items.append(Item(G, "tcp", "ok", f"{host}:{port} accepts connections"))
    if cfg.tls.enabled:
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock, \
                    _tls_context(ctx).wrap_socket(sock, server_hostname=host) as tls:
                cert: dict[str, Any] = dict(tls.getpeercert() or {})
                subject = next((str(v) for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"),
                               "?")
                items.append(Item(G, "tls", "ok", f"{tls.version()}, certificate CN={subject}, valid until "
                                  f"{cert.get('notAfter', '?')}" if cert else f"{tls.version()} (not verified: "
                                  "mqtt.tls.insecure)"))
        except ssl.SSLCertVerificationError as exc:
            items.append(Item(G, "tls", "fail", f"{host}:{port}: certificate not trusted ({exc.verify_message})",
                              "set mqtt.tls.ca_file to the CA that signed the broker's certificate"))
            return items
        except (ssl.SSLError, OSError) as exc:
            items.append(Item(G, "tls", "fail", f"{host}:{port}: no TLS handshake ({exc})",
                              f"the broker does not speak TLS on port {port}: use its TLS listener (8883) or "
                              "set mqtt.tls.enabled: false"))
            return items
    elif _speaks_tls(host, port):
        items.append(Item(G, "tls", "fail", f"{host}:{port} speaks TLS but mqtt.tls.enabled is false",
                          "set mqtt.tls.enabled: true (and mqtt.tls.ca_file), or use the plain port 1883"))
        return items
    else:
        items.append(Item(G, "tls", "skip", "mqtt.tls.enabled is false (plain MQTT)"))
    return items + _session(ctx)


def _session(ctx: Context) -> list[Item]:
    from edgedet.errors import EdgedetError

    cfg = ctx.config.mqtt
    try:
        password = cfg.effective_password(where=str(ctx.config_path) if ctx.config_path else None)
    except EdgedetError as exc:
        return [Item(G, "login", "fail", str(exc).split("; ")[0], exc.fix or "fix mqtt.password_file")]
    probe = _Probe()
    client = _client(ctx, probe, password)
    device = ctx.config.resolved_device_id()
    topic = f"{cfg.topic_prefix}/{device}/doctor"
    token = uuid.uuid4().hex
    ha = ctx.config.homeassistant

    def on_message(c: Any, u: Any, message: Any) -> None:
        if message.topic == topic and message.payload.decode(errors="replace") == token:
            probe.received.set()
        elif message.retain and message.topic.endswith("/config"):
            probe.retained.append(message.topic)

    client.on_message = on_message
    items: list[Item] = []
    try:
        client.connect(cfg.host, cfg.port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        return [Item(G, "login", "fail", f"connect: {exc}", "see the tcp/tls lines above")]
    client.loop_start()
    try:
        if not probe.connected.wait(TIMEOUT_S):
            return [Item(G, "login", "fail", f"no CONNACK within {TIMEOUT_S:g} s",
                         "check that this port is an MQTT listener (and TLS on both sides or neither)")]
        if probe.reason is None or probe.reason.is_failure:
            who = f"user {cfg.username}" if cfg.username else "anonymous"
            return [Item(G, "login", "fail", f"refused for {who}: {probe.reason}",
                         "check mqtt.username and the password (mqtt.password_file / $EDGEDET_MQTT_PASSWORD) "
                         "against the broker's password file (mosquitto_passwd)")]
        items.append(Item(G, "login", "ok", f"as {cfg.username or 'anonymous'} (MQTT {cfg.protocol})"))
        client.subscribe(topic, qos=1)
        if ha.enabled:
            client.subscribe(f"{ha.prefix}/+/{device}/+/config", qos=0)
        if not probe.subscribed.wait(TIMEOUT_S):
            items.append(Item(G, "acl", "fail", f"no SUBACK for {topic}", "check the broker's log"))
            return items
        denied = [g for g in probe.granted if getattr(g, "is_failure", False) or g == 128]
        acl_fix = (f"allow {cfg.username or 'this client'} to read and write {cfg.topic_prefix}/# in the "
                   "broker's ACL (mosquitto acl_file: 'topic readwrite " + cfg.topic_prefix + "/#')")
        if denied and probe.granted and denied[0] is probe.granted[0]:
            items.append(Item(G, "acl", "fail", f"subscribe to {topic} refused ({denied[0]})", acl_fix))
            return items
        client.publish(topic, token, qos=1)
        if probe.received.wait(TIMEOUT_S):
            items.append(Item(G, "acl", "ok", f"publish + subscribe round trip on {topic}"))
        else:
            items.append(Item(G, "acl", "fail", f"published on {topic} but it did not come back within "
                              f"{TIMEOUT_S:g} s (the ACL drops it)", acl_fix))
        if ha.enabled:
            time.sleep(0.3)  # the retained configs arrive right after the SUBACK
            if probe.retained:
                items.append(Item(G, "homeassistant", "ok", f"{len(probe.retained)} retained discovery configs "
                                  f"under {ha.prefix}/"))
            else:
                items.append(Item(G, "homeassistant", "warn", f"no retained discovery config under {ha.prefix}/ "
                                  f"for {device}", "start the service once; check homeassistant.prefix matches "
                                  "Home Assistant's MQTT discovery prefix"))
        client.publish(topic, b"", qos=1, retain=False)
    finally:
        client.disconnect()
        client.loop_stop()
    return items
