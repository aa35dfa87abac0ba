"""MQTT publishing that never blocks the caller and never silently loses a message.

Design (why it looks like this):

* The caller (the frame loop) only appends to our own bounded outbox (``collections.deque`` with
  ``maxlen=mqtt.outbox_max``); when it is full the oldest message is dropped and counted. Appending is O(1)
  and takes one short lock, so a down broker cannot slow the loop.
* A sender thread drains the outbox in order, and only while connected. It hands at most
  ``mqtt.inflight_max`` unacknowledged QoS>0 messages to paho. paho keeps every QoS>0 message it was given
  until the PUBACK arrives and re-sends it after a reconnect (``_messages_reconnect_reset`` +
  CONNACK handling), so a broker restart loses nothing; we track the mids through ``on_publish`` to know
  when the window frees up and when a stop has flushed everything.
* ``status`` is ``online`` (retained) from the connect callback, so it follows every reconnect, and
  ``offline`` (retained, QoS 1) both as the Will and on a clean stop.
* Retained messages (info, Home Assistant discovery) and subscriptions are re-sent on every connect, so a
  broker that lost its state (no persistence) is repopulated.
* Connection problems (wrong credentials, ACL denial, TLS mismatch, unreachable host) give one clear log
  line per kind, repeated at most every ``problems.REPEAT_LOG_S`` while they persist (``ProblemLog``);
  paho keeps retrying, with the jittered backoff of ``_ErrorRecordingClient``.

Never call into paho while holding ``self._cond``: paho calls ``on_publish`` while holding its own
``_out_message_mutex``, and ``publish()`` takes that mutex, so the two locks would deadlock.
"""

from __future__ import annotations

import contextlib
import logging
import random as _random
import ssl
import threading
import time
from collections import deque
from itertools import chain
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edgedet.publish.config import MqttConfig
from edgedet.publish.messages import STATUS_OFFLINE, STATUS_ONLINE
from edgedet.publish.problems import CONNECT_PROBLEMS, ProblemLog, describe_connect_error, describe_refused

if TYPE_CHECKING:
    from edgedet.publish.outbox import OutboxStore

log = logging.getLogger("edgedet.mqtt")

STABLE_CONNECTION_S = 10.0  # a connection that lasted this long resets the "lost connection" log limit
# mosquitto drops a client whose publish its ACL denies at once (the retained status and info go out right
# after CONNACK); a broker that flaps drops connections at any time, so only drops this quick count.
QUICK_DROP_S = 0.5
# paho numbers messages 1..65535 and starts again; an acknowledgement that beats the sender to recording its
# message is for one of the last few numbers. Older unclaimed ones (the status and retained messages, which are
# not tracked, and QoS 0 messages, acknowledged when written) are forgotten: kept, such a number would be
# taken, one wrap later, as the acknowledgement of an outbox message that was never acknowledged.
EARLY_ACK_SPAN = 1024
MID_COUNT = 65535
# MQTT 5 reason code "Not authorized" (PUBACK/SUBACK) and MQTT 3.1.1 SUBACK failure.
RC_NOT_AUTHORIZED = 135
SUBACK_FAILURE_311 = 128

MessageHandler = Callable[[str, bytes], None]


Payload = Union[bytes, Callable[[], Optional[bytes]]]


class OutMessage:
    """One message in the outbox. ``payload``: bytes, or a function that builds them: encoding is deferred to
    the sender thread so the frame loop pays only for an append, and messages dropped while the broker is down
    are never encoded at all (None: the builder decided there is nothing to send). ``row``: its row in the
    outbox file once it has waited ``mqtt.outbox_sync_s`` there; ``queued_at``: ``time.monotonic()``."""

    __slots__ = ("payload", "qos", "queued_at", "retain", "row", "topic")

    def __init__(self, topic: str, payload: Payload | None, qos: int, retain: bool, row: int | None = None,
                 queued_at: float = 0.0) -> None:
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain
        self.row, self.queued_at = row, queued_at


class _ErrorRecordingClient(mqtt.Client):
    """paho's client, remembering why the last connection attempt raised, with a jittered backoff and a
    network thread that never ends while we want a connection.

    ``loop_forever`` swallows the ``OSError`` of a failed connect and only calls ``on_connect_fail``
    without arguments; the exception is what tells "refused" from "TLS mismatch" from "no such host".

    paho 2.x's backoff (``_reconnect_wait``) doubles after each failed attempt and is reset only by an
    accepted CONNACK. A broker that flaps (down and up every second or two) fails a chain of attempts now and
    then, each chain doubles the delay, and the client ends up asleep for 16, 32, 60 s (reconnect_max_s) while
    the broker has long been back: it seems to stop trying. Here the delay follows the time since the
    connection was lost instead (half of it, within reconnect_min_s..reconnect_max_s), so the client never
    sleeps longer than half the outage so far, and a long outage still backs off to the maximum. Each delay
    is drawn at random within +-``jitter`` of that (a fleet restarted together must not come back in
    lockstep). Also, paho's loop thread ends for good when anything but an ``OSError`` escapes it
    (``_thread_main`` has no ``except``): ours restarts it and says why.
    """

    last_connect_error: BaseException | None = None
    attempts = 0  # connection attempts so far; tells one connection's callbacks from the next one's
    keep_running = True  # False once we stop or hand over: the network loop may end then
    jitter = 0.0  # mqtt.reconnect_jitter
    random = _random.Random()
    lost_at: float | None = None  # when the current run of attempts began (the connection was lost)

    def _thread_main(self) -> None:
        while True:
            try:
                self.loop_forever(retry_first_connection=True)
            except Exception as exc:  # paho's loop died: without this, it never reconnects again
                if self._thread_terminate or not self.keep_running:
                    break
                log.error("MQTT: the network loop stopped on %s: %s; restarting it", type(exc).__name__, exc)
                self._reconnect_wait()
                continue
            if self._thread_terminate or not self.keep_running:
                break
            log.error("MQTT: the network loop ended without being stopped; restarting it")
            self._reconnect_wait()
        self._thread = None

    def next_delay(self, now: float) -> float:
        """The wait before the next attempt: half the time since the connection was lost, within
        reconnect_min_s..reconnect_max_s, times a random factor within 1 +- jitter."""
        with self._reconnect_delay_mutex:
            low, high = float(self._reconnect_min_delay), float(self._reconnect_max_delay)
            # paho sets _reconnect_delay to None on an accepted CONNACK: a new run of attempts begins.
            if self._reconnect_delay is None or self.lost_at is None:
                self.lost_at = now
            delay = min(high, max(low, 0.5 * (now - self.lost_at)))
            self._reconnect_delay = delay  # type: ignore[assignment]  # paho stores the float it is given
        if self.jitter > 0:
            delay *= self.random.uniform(1 - self.jitter, 1 + self.jitter)
        return delay

    def _reconnect_wait(self) -> None:
        deadline = time.monotonic() + self.next_delay(time.monotonic())
        while not self._thread_terminate and self.keep_running:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, 0.1))  # a stop must not wait out a long delay

    def reconnect(self) -> MQTTErrorCode:
        self.attempts += 1
        try:
            rc = super().reconnect()
        except OSError as exc:
            self.last_connect_error = exc
            raise
        self.last_connect_error = None
        return rc


class MqttPublisher:
    """A non-blocking, reconnecting, loss-free MQTT publisher for one device namespace."""

    def __init__(self, cfg: MqttConfig, device_id: str, *, client_id: str | None = None) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.base_topic = f"{cfg.topic_prefix}/{device_id}"
        self.status_topic = f"{self.base_topic}/status"
        password = cfg.effective_password()

        self._cond = threading.Condition()
        self._outbox: deque[OutMessage] = deque(maxlen=cfg.outbox_max)
        self._inflight: dict[int, OutMessage] = {}
        # mids acknowledged before the sender recorded them, oldest first (a dict as an ordered set)
        self._early_acks: dict[int, None] = {}
        self._retained: dict[str, tuple[bytes, int]] = {}  # topic -> (payload, qos)
        self._subscriptions: dict[str, tuple[int, MessageHandler]] = {}
        self._connected = False
        self._ever_connected = False
        self._connack_refused = False
        self._connected_since = 0.0
        # Connections in a row that dropped soon after connecting, each one accepted at the first attempt: the
        # mark of an ACL denial (mosquitto drops a client whose publish it denies). A failed attempt in between
        # means the broker itself went away (a restart, a flapping broker), and resets it.
        self._quick_drops = 0
        self._disconnect_seen_for_attempt = -1
        self._stopping = False
        self._sender: threading.Thread | None = None
        self._started = False
        # counters (read by stats())
        self._dropped = 0
        self._reconnects = 0
        self._sent = 0
        self._acked = 0
        self._denied = 0
        self._failed_attempts = 0
        self._problems = ProblemLog(log)
        # The outbox file (mqtt.outbox_path): opened by start() or handed over by a predecessor (_adopt).
        self._store: OutboxStore | None = None
        self._store_adopted = False
        # After a connect, a backlog waits until then (monotonic): a fleet back at once must not drain at once.
        self._drain_not_before = 0.0
        self._random = _random.Random()

        protocol = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
        self._protocol = protocol
        cid = client_id or cfg.client_id or f"edgedet-{device_id}"
        kwargs: dict[str, Any] = {}
        if protocol == mqtt.MQTTv311:
            kwargs["clean_session"] = True
        client = _ErrorRecordingClient(CallbackAPIVersion.VERSION2, client_id=cid, protocol=protocol,
                                       **kwargs)
        # 0 = unlimited: our own window (inflight_max) bounds it, and paho must never park a message in its
        # "queued" state, which its CONNACK handling resends less eagerly.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        # paho doubles the delay after each failed attempt up to the maximum (exponential backoff).
        client.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)  # type: ignore[arg-type]
        client.jitter = cfg.reconnect_jitter
        if cfg.username is not None:
            client.username_pw_set(cfg.username, password)
        if cfg.tls.enabled:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if cfg.tls.insecure else ssl.CERT_REQUIRED,
            )
            if cfg.tls.insecure:
                log.warning("MQTT TLS: mqtt.tls.insecure is set, the broker certificate is NOT verified")
                client.tls_insecure_set(True)
        client.will_set(self.status_topic, STATUS_OFFLINE, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        """Start connecting in the background; returns at once (the broker may be down)."""
        if self._started:
            return
        self._started = True
        self._open_store()
        self._sender = threading.Thread(target=self._sender_main, name="edgedet-mqtt-sender", daemon=True)
        self._sender.start()
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()

    def topic(self, leaf: str) -> str:
        return f"{self.base_topic}/{leaf}"

    def publish(self, topic: str, payload: bytes | str | Callable[[], bytes | None], qos: int | None = None,
                retain: bool = False) -> None:
        """Queue a message; never blocks. A full outbox drops (and counts) its oldest message.

        ``payload`` may be a function returning the bytes; the sender thread calls it when it sends."""
        data: Payload = payload.encode("utf-8") if isinstance(payload, str) else payload
        msg = OutMessage(topic, data, self.cfg.qos if qos is None else qos, retain, None, time.monotonic())
        with self._cond:
            if len(self._outbox) == self._outbox.maxlen:
                self._dropped += 1
            self._outbox.append(msg)
            if self._connected:
                # Waking the sender while disconnected would only cost the caller a thread switch per frame.
                self._cond.notify()

    def publish_retained(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        """Publish a retained message now (or on connect) and again after every reconnect."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        with self._cond:
            self._retained[topic] = (data, qos)
            connected = self._connected
        if connected:
            self._client.publish(topic, data, qos=qos, retain=True)

    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1) -> None:
        """Subscribe now (if connected) and again on every connect."""
        with self._cond:
            self._subscriptions[topic] = (qos, handler)
            connected = self._connected
        if connected:
            self._client.subscribe(topic, qos)

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    def stats(self) -> dict[str, Any]:
        """``queued`` = waiting in the outbox + sent but not yet acknowledged."""
        with self._cond:
            return {
                "connected": self._connected,
                "queued": len(self._outbox) + len(self._inflight),
                "dropped": self._dropped,
                "reconnects": self._reconnects,
                "sent": self._sent,
                "acked": self._acked,
                "denied": self._denied,
                "failed_attempts": self._failed_attempts,
            }

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty and every QoS>0 message is acknowledged (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._outbox or self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
        return True

    def stop(self, flush_timeout_s: float | None = None) -> None:
        """Flush (bounded), publish ``offline`` retained, disconnect cleanly, stop the threads."""
        if not self._started:
            return
        started = time.monotonic()
        timeout = self.cfg.flush_timeout_s if flush_timeout_s is None else flush_timeout_s
        # A short run may stop while its first connection is still being set up: give that attempt the
        # flush budget too, but do not wait for a broker that has already refused or not answered.
        connecting = not self._ever_connected and self._failed_attempts == 0
        flushed = self.flush(timeout) if self.connected or connecting else False
        with self._cond:
            left = len(self._outbox) + len(self._inflight)
            self._stopping = True
            self._cond.notify_all()
        self._client.keep_running = False
        if not flushed and left:
            kept = (f"; kept in {self.cfg.outbox_path} for the next start" if self._store is not None else
                    " (set mqtt.outbox_path to keep them for the next start)")
            log.warning("MQTT: stopping with %d message(s) not delivered (broker %s)%s",
                        left, "connected" if self.connected else "not connected", kept)
        # Only what is left of the stop budget (SIGTERM must exit within 2 s); a hung broker publishes the Will
        # after 1.5 x keepalive instead.
        self._leave(max(0.2, min(5.0, timeout - (time.monotonic() - started))))
        if self._sender is not None:
            self._sender.join(timeout=2.0)
        if self._store is not None:
            self._sync(everything=True)  # what is still undelivered waits in the file for the next start
            self._store.close()
            self._store = None
        self._started = False

    def hand_over(self, successor: MqttPublisher, timeout_s: float = 1.0) -> int:
        """Move what is not yet acknowledged, and the counters, to ``successor`` (not started yet), then leave
        this connection (``offline`` retained, disconnect). Used when a reload changes the MQTT settings: the
        queued messages are delivered on the new connection, in order, with their seq. Returns how many."""
        self._client.keep_running = False
        with self._cond:
            self._stopping = True  # the sender thread ends and sends nothing more
            self._cond.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=2.0)
        with self._cond:
            # Sent but unacknowledged first: they are older than anything still in the outbox. The old broker
            # may have some of them already; at-least-once delivery allows a duplicate, never a loss.
            pending = [*self._inflight.values(), *self._outbox]
            self._inflight.clear()
            self._outbox.clear()
            counters = (self._dropped, self._reconnects, self._sent, self._acked, self._denied,
                        self._failed_attempts)
        store, self._store = self._store, None
        if store is not None and successor.cfg.outbox_path != self.cfg.outbox_path:
            # Another file (or none): the successor keeps the messages (in memory, then in its own file);
            # this file must not deliver them a second time at the next start.
            for msg in pending:
                msg.row = None
            store.sync([], None)
            store.close()
            store = None
        successor._adopt(pending, counters, store)
        if self._started:
            self._leave(timeout_s)
            self._started = False
        return len(pending)

    def _leave(self, timeout_s: float) -> None:
        """``offline`` retained (waited for at most ``timeout_s``), a clean disconnect, the network loop ended."""
        if self.connected:
            info = self._client.publish(self.status_topic, STATUS_OFFLINE, qos=1, retain=True)
            # RuntimeError/ValueError: the connection dropped meanwhile; the Will says offline instead.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=timeout_s)
            # A clean DISCONNECT suppresses the Will, so the explicit offline above is what subscribers see.
            self._client.disconnect()
        self._client.loop_stop()

    def _put_first(self, older: list[OutMessage]) -> int:
        """Queue ``older`` before what is queued now; over ``outbox_max`` the oldest are dropped (as in
        publish()) and counted. Returns how many were dropped."""
        with self._cond:
            everything = [*older, *self._outbox]
            overflow = max(0, len(everything) - (self._outbox.maxlen or len(everything)))
            self._outbox.clear()
            self._outbox.extend(everything[overflow:])
            self._dropped += overflow
        return overflow

    def _adopt(self, pending: list[OutMessage], counters: tuple[int, int, int, int, int, int],
               store: OutboxStore | None = None) -> None:
        if store is not None:
            self._store, self._store_adopted = store, True  # its rows are the ones in ``pending``
        with self._cond:
            (dropped, self._reconnects, self._sent, self._acked, self._denied, self._failed_attempts) = counters
            self._dropped += dropped
        self._put_first(pending)

    # ------------------------------------------------------------------ sender thread

    def _sender_main(self) -> None:
        window = self.cfg.inflight_max
        sync_s = self.cfg.outbox_sync_s
        next_sync = time.monotonic() + sync_s
        while True:
            msg: OutMessage | None = None
            with self._cond:
                while not self._stopping:
                    if self._connected and self._outbox and len(self._inflight) < window:
                        hold_s = self._drain_not_before - time.monotonic()
                        if hold_s <= 0:
                            msg = self._outbox.popleft()
                            break
                        self._cond.wait(hold_s)
                        continue
                    if self._store is None:
                        self._cond.wait()
                        continue
                    wait_s = next_sync - time.monotonic()
                    if wait_s <= 0:
                        break
                    self._cond.wait(wait_s)
                if self._stopping:
                    return
            if self._store is not None and time.monotonic() >= next_sync:
                # Also while connected: a broker that does not keep up leaves messages waiting.
                self._sync()
                next_sync = time.monotonic() + sync_s
            if msg is None:
                continue
            if not self._build(msg):
                continue
            info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)  # type: ignore[arg-type]
            with self._cond:
                self._sent += 1
                # QoS 0 returning NO_CONN is lost by definition (at most once); QoS>0 stays in paho's store.
                if msg.qos > 0:
                    self._record(info.mid, msg)

    def _record(self, mid: int, msg: OutMessage) -> None:
        """Track ``msg`` as sent under ``mid`` until its acknowledgement, unless that came first; forget the early
        acknowledgements too old to be claimed. Under _cond."""
        if mid in self._early_acks:
            del self._early_acks[mid]
            self._acked += 1
        else:
            self._inflight[mid] = msg
        self._forget_early_acks(mid)

    def _forget_early_acks(self, newest: int) -> None:
        """Drop the early acknowledgements more than EARLY_ACK_SPAN ids before ``newest``. Under _cond."""
        early = self._early_acks
        while early:
            oldest = next(iter(early))
            if (newest - oldest) % MID_COUNT <= EARLY_ACK_SPAN:
                break
            del early[oldest]

    @staticmethod
    def _build(msg: OutMessage) -> bool:
        """Turn a payload builder into bytes (sender thread only); False: nothing to send."""
        if callable(msg.payload):
            try:
                msg.payload = msg.payload()
            except Exception:  # a payload that cannot be built must not stop the sender
                log.exception("MQTT: cannot build the payload for %s; message skipped", msg.topic)
                msg.payload = None
        return msg.payload is not None

    # ------------------------------------------------------------------ outbox file

    def _open_store(self) -> None:
        """Open mqtt.outbox_path, if set and not handed over, and put what the last run left first."""
        path = self.cfg.outbox_path
        if path is None or self._store is not None:
            return
        from edgedet.publish.outbox import OutboxStore  # here: SQLite (~1 MB) only for a configured outbox file

        store = OutboxStore.open(path, int(self.cfg.outbox_max_mb * 1_000_000))
        if store is None:
            return
        self._store = store
        left = store.load()
        if not left:
            return
        overflow = self._put_first([OutMessage(m.topic, m.payload, m.qos, m.retain, m.row) for m in left])
        log.info("MQTT outbox: %d message(s) left by the last run in %s are delivered first%s", len(left), path,
                 f" ({overflow} over mqtt.outbox_max dropped)" if overflow else "")

    def _sync(self, *, everything: bool = False) -> None:
        """Write the messages that have waited ``outbox_sync_s`` (``everything``: all undelivered ones) to the
        file and delete the delivered or dropped ones. No change, no write. Sender thread, or after it ended."""
        store = self._store
        if store is None:
            return
        with self._cond:
            waiting = list(chain(self._inflight.values(), self._outbox))
            connected = self._connected
        # Disconnected, everything waiting is undeliverable: written at every tick, so a kill -9 loses at most
        # outbox_sync_s. Connected, only what has waited that long (a broker that does not keep up); the aged
        # ones are a prefix of the unwritten ones, so the row ids follow the delivery order.
        cutoff = float("inf") if everything or not connected else time.monotonic() - self.cfg.outbox_sync_s
        new = [m for m in waiting if m.row is None and m.queued_at <= cutoff]
        rows = [m.row for m in waiting if m.row is not None]
        keep_from = min(rows) if rows else None  # None: every stored row was delivered or dropped
        for msg in new:
            self._build(msg)
        new = [m for m in new if m.payload is not None]
        ids = store.sync([(m.topic, m.payload, m.qos, m.retain) for m in new], keep_from)  # type: ignore[misc]
        if ids is None:
            return
        for msg, row in zip(new, ids):
            msg.row = row
        cut = store.rows_over_cap()
        if cut is not None:
            with self._cond:
                dropped = 0
                while self._outbox and self._outbox[0].row is not None and self._outbox[0].row < cut:
                    self._outbox.popleft()
                    dropped += 1
                self._dropped += dropped
            if dropped:
                self._problems.report("outbox_full", f"MQTT outbox: {store.path} is over mqtt.outbox_max_mb "
                                      f"({self.cfg.outbox_max_mb:g} MB); the oldest messages are dropped",
                                      level=logging.WARNING)

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        if reason.is_failure:
            self._report_refused(reason)
            return
        client.publish(self.status_topic, STATUS_ONLINE, qos=1, retain=True)
        with self._cond:
            retained = list(self._retained.items())
            subscriptions = [(t, q) for t, (q, _) in self._subscriptions.items()]
            if self._ever_connected:
                self._reconnects += 1
            was_problem = self._problems.clear(CONNECT_PROBLEMS)
            self._connack_refused = False
            self._connected_since = time.monotonic()
            self._ever_connected = True
        for topic, qos in subscriptions:
            client.subscribe(topic, qos)
        for topic, (payload, qos) in retained:
            client.publish(topic, payload, qos=qos, retain=True)
        log.info("MQTT: connected to %s:%d as %s (MQTT %s)%s", self.cfg.host, self.cfg.port,
                 self.status_topic.rsplit("/", 2)[1], self.cfg.protocol, " again" if was_problem else "")
        with self._cond:
            self._connected = True
            if len(self._outbox) > self.cfg.inflight_max and self.cfg.reconnect_jitter > 0:
                self._drain_not_before = time.monotonic() + self._random.uniform(
                    0, self.cfg.reconnect_jitter * self.cfg.reconnect_min_s)
            self._cond.notify_all()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        with self._cond:
            self._failed_attempts += 1
            self._quick_drops = 0
            self._connack_refused = False
        exc = getattr(client, "last_connect_error", None)
        kind, line = describe_connect_error(exc, self.cfg)
        self._problems.report(kind, line)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Any) -> None:
        attempt = getattr(client, "attempts", 0)
        with self._cond:
            # paho can report one lost connection (or one refused CONNACK) twice; handle it once.
            if attempt == self._disconnect_seen_for_attempt:
                return
            self._disconnect_seen_for_attempt = attempt
            was_connected = self._connected
            self._connected = False
            refused = self._connack_refused
            up_s = time.monotonic() - self._connected_since
            if was_connected and up_s >= STABLE_CONNECTION_S:
                self._problems.clear(["lost"])  # a long-lived connection: its loss is news again
                self._quick_drops = 0
            elif was_connected and up_s < QUICK_DROP_S:
                self._quick_drops += 1
            elif was_connected:
                self._quick_drops = 0
            quick_drops = self._quick_drops
            ever_connected = self._ever_connected
            self._cond.notify_all()
        if self._stopping:
            return
        if was_connected:
            hint = ""
            if up_s < QUICK_DROP_S and quick_drops >= 3:
                # mosquitto 2.0 closes the connection after a publish its ACL denies (MQTT 3.1.1 has no
                # other way to say so), which shows up as a drop right after every connect.
                hint = (f"; dropped {up_s:.1f} s after connecting, {quick_drops} times in a row with each "
                        f"reconnect accepted at once: check that the broker ACL lets user "
                        f"{self.cfg.username!r} write {self.base_topic}/#")
            # Its own kind: the ACL suspicion is news even while plain losses are rate-limited.
            self._problems.report("lost_acl" if hint else "lost", f"MQTT: lost the connection to "
                                  f"{self.cfg.host}:{self.cfg.port} ({reason}); messages wait in the outbox{hint}",
                                  level=logging.WARNING)
        elif not refused:
            with self._cond:
                self._failed_attempts += 1
                self._quick_drops = 0
            if ever_connected:
                # These settings were accepted before: the broker is shutting down or restarting.
                self._problems.report("closed", f"MQTT: {self.cfg.host}:{self.cfg.port} closed the connection "
                                      "before accepting it (it accepted these settings before: the broker is "
                                      "restarting or going down)", level=logging.WARNING)
                return
            # Closed before CONNACK: typically a TLS listener spoken to in plain text, or the reverse.
            self._problems.report("closed", f"MQTT: {self.cfg.host}:{self.cfg.port} closed the connection "
                                  "before accepting it; does mqtt.tls.enabled match the broker listener on this "
                                  "port?")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Any) -> None:
        with self._cond:
            msg = self._inflight.pop(mid, None)
            if msg is None:
                # Claimed by the sender's _record, or forgotten by it or by a later unclaimed one.
                self._early_acks[mid] = None
                self._forget_early_acks(mid)
            else:
                self._acked += 1
            if reason.value == RC_NOT_AUTHORIZED:
                self._denied += 1
            self._cond.notify_all()
        if reason.value == RC_NOT_AUTHORIZED:
            # msg is None when the PUBACK beat the sender to recording the mid: name our namespace then.
            topic = msg.topic if msg is not None else f"{self.base_topic}/..."
            self._problems.report("acl", f"MQTT: the broker refused a publish to {topic!r} (not authorized, "
                                  f"reason 135); allow user {self.cfg.username!r} to write {self.base_topic}/# "
                                  "in the broker ACL")
        elif reason.is_failure:
            self._problems.report(f"puback{reason.value}", f"MQTT: the broker refused a publish: {reason}")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                      properties: Any) -> None:
        for rc in reason_codes:
            if rc.is_failure or rc.value in (SUBACK_FAILURE_311, RC_NOT_AUTHORIZED):
                self._problems.report("suback", f"MQTT: the broker refused a subscription ({rc}); allow "
                                      f"user {self.cfg.username!r} to read it in the broker ACL")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            handlers = [h for t, (_, h) in self._subscriptions.items()
                        if mqtt.topic_matches_sub(t, message.topic)]
        for handler in handlers:
            try:
                handler(message.topic, bytes(message.payload))
            except Exception:  # a bad handler must not kill paho's network thread
                log.exception("MQTT: handler for %s failed", message.topic)

    # ------------------------------------------------------------------ helpers

    def _report_refused(self, reason: ReasonCode) -> None:
        with self._cond:
            self._connack_refused = True
            self._failed_attempts += 1
            self._quick_drops = 0
        self._problems.report(*describe_refused(reason, self.cfg))
