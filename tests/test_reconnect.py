"""Reconnecting: the backoff follows the outage (not the count of failed attempts), is jittered, the network
loop survives an exception paho does not catch, and the real daemon rides out a flapping broker."""

from __future__ import annotations

import logging
import random
import signal
import statistics
import threading
import time
from pathlib import Path

import pytest
from mosquitto import Mosquitto, available
from test_daemon_mqtt import Daemon, Subscriber, finished, wait_until

from edgedet.publish.config import MqttConfig
from edgedet.publish.mqtt import MqttPublisher

needs_broker = pytest.mark.skipif(available() is not None, reason=available() or "")


def client_of(jitter: float = 0.0) -> object:
    publisher = MqttPublisher(MqttConfig(enabled=True, reconnect_min_s=1.0, reconnect_max_s=60.0,
                                         reconnect_jitter=jitter), "cam1")
    return publisher._client


def test_backoff_is_half_the_outage_however_many_attempts_failed() -> None:
    client = client_of()
    # paho doubles its delay per failed attempt (1, 2, 4, 8, 16, 32, 60 s): a flapping broker that fails six
    # attempts in a row within ~10 s left it asleep for a minute. Here: half the time since the loss.
    delays = [client.next_delay(now) for now in (100.0, 101.0, 102.5, 104.0, 106.0, 110.0)]  # type: ignore[attr-defined]
    assert delays == [1.0, 1.0, 1.25, 2.0, 3.0, 5.0]
    assert client.next_delay(1000.0) == 60.0  # type: ignore[attr-defined]  # a long outage backs off fully
    client._reconnect_delay = None  # type: ignore[attr-defined]  # what paho does on an accepted CONNACK
    assert client.next_delay(1001.0) == 1.0  # type: ignore[attr-defined]


def test_backoff_jitter_spreads_the_delays() -> None:
    client = client_of(jitter=0.5)
    client.random = random.Random(7)  # type: ignore[attr-defined]
    draws = []
    for _ in range(500):
        client._reconnect_delay = None  # type: ignore[attr-defined]
        draws.append(client.next_delay(50.0))  # type: ignore[attr-defined]
    assert 0.5 <= min(draws) < 0.6 and 1.4 < max(draws) <= 1.5
    assert statistics.pstdev(draws) > 0.25


@needs_broker
def test_network_loop_restarts_after_an_exception_paho_does_not_catch(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        publisher = MqttPublisher(MqttConfig(enabled=True, host="127.0.0.1", port=broker.port,
                                             reconnect_min_s=0.1, reconnect_max_s=0.2), "cam1")
        calls = []

        def boom_once(client: object, userdata: object) -> None:
            calls.append(threading.current_thread().name)
            if len(calls) == 1:
                raise RuntimeError("a callback bug")

        # paho re-raises a callback's exception (suppress_exceptions is False); from on_pre_connect it leaves
        # loop_forever, which ends paho's own thread for good.
        publisher._client.on_pre_connect = boom_once
        with caplog.at_level(logging.ERROR, logger="edgedet.mqtt"):
            publisher.start()
            assert wait_until(lambda: publisher.connected, 20), caplog.text
        publisher.stop()
    assert "the network loop stopped on RuntimeError: a callback bug; restarting it" in caplog.text
    assert len(calls) >= 2


@needs_broker
def test_daemon_rides_out_a_flapping_broker(tmp_path: Path) -> None:
    """Down and up every 0.5 to 2 s for ~20 s with the default backoff bounds (1..60 s): afterwards the daemon
    reconnects, delivers every seq, and its memory stays flat."""
    rng = random.Random(3)
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    sub = Subscriber(broker, "edgedet/flap/detection", client_id="flap-sub", persistent=True)
    daemon = Daemon(tmp_path, broker.port, "flap", fps=100,
                    config={"mqtt": {"reconnect_min_s": 1.0, "reconnect_max_s": 60.0},
                            "publish": {"stats_interval_s": 60}})
    flaps = 0
    try:
        assert wait_until(lambda: len(sub.seqs()) >= 50, 60), daemon.stderr()[-3000:]
        rss_start = daemon.rss_kb()
        end = time.monotonic() + 20.0
        while time.monotonic() < end:
            broker.stop()
            time.sleep(rng.uniform(0.5, 2.0))
            broker.start()
            flaps += 1
            time.sleep(rng.uniform(0.5, 2.0))
        back_at, frames_then = time.monotonic(), daemon.frames_written()
        # Waiting, not timing: it must catch up; the old backoff could sleep up to reconnect_max_s (60 s).
        assert wait_until(lambda: max(sub.seqs(), default=0) >= frames_then, 120, 0.1), daemon.stderr()[-3000:]
        caught_up_s = time.monotonic() - back_at
        rss_end = daemon.rss_kb()
        daemon.proc.send_signal(signal.SIGTERM)
        stats = finished(daemon)
        total = stats["frames_processed"]
        assert wait_until(lambda: len(sub.seqs()) >= total, 30)
    finally:
        daemon.kill()
        sub.close()
        broker.stop()
    missing = sorted(set(range(1, total + 1)) - sub.seqs())
    print(f"{flaps} flaps in 20 s; caught up {caught_up_s:.1f} s after the last start; {total} seqs, "
          f"{len(missing)} missing; RSS {rss_start} -> {rss_end} kB; reconnects {stats['mqtt']['reconnects']}")
    assert missing == []
    assert rss_end - rss_start < 4096
    err = daemon.stderr()
    assert "ACL" not in err and "tls" not in err.lower(), err[-3000:]  # the broker went away, nothing else
