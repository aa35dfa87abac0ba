"""sd_notify, watchdog cadence and signals against real AF_UNIX datagram sockets and real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgedet.service import Notifier, ServiceSignals, Watchdog, notify_address, watchdog_interval

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("service_driver.py")


class NotifyListener:
    """The systemd side: a bound SOCK_DGRAM socket collecting the datagrams sent to $NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value
        sock.settimeout(5.0)

    def receive(self, timeout: float = 5.0) -> list[str]:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode().split("\n")

    def drain(self) -> list[list[str]]:
        messages = []
        self.sock.setblocking(False)
        try:
            while True:
                messages.append(self.sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        return messages

    def wait_for(self, field: str, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.receive(max(0.01, deadline - time.monotonic()))
            if field in message:
                return message
        raise AssertionError(f"{field} not received within {timeout} s")


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
        env_value = address
    else:
        name = f"edgedet-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env_value = "@" + name
    yield NotifyListener(sock, env_value)
    sock.close()


def test_notify_address_forms() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abc") == "\0abc"
    assert notify_address("vsock:2:1234") is None


def test_notifier_sends_each_message(listener: NotifyListener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.env_value)
    with Notifier() as notifier:
        assert notifier.enabled
        assert notifier.ready(status="model loaded\nfirst frame")
        assert listener.receive() == ["READY=1", "STATUS=model loaded first frame"]
        assert notifier.watchdog()
        assert listener.receive() == ["WATCHDOG=1"]
        assert notifier.status("12.0 fps")
        assert listener.receive() == ["STATUS=12.0 fps"]
        assert notifier.reloading()
        reloading = listener.receive()
        assert reloading[0] == "RELOADING=1"
        assert reloading[1].startswith("MONOTONIC_USEC=") and int(reloading[1].split("=")[1]) > 0
        assert notifier.stopping()
        assert listener.receive() == ["STOPPING=1"]


def test_notifier_without_socket_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready() is False


def test_notifier_survives_a_vanished_socket(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert notifier.enabled
    assert notifier.watchdog() is False
    assert notifier.watchdog() is False
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per frame


def test_watchdog_interval_from_environment() -> None:
    pid = str(os.getpid())
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": pid}) == 2.5
    assert watchdog_interval({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": "1"}) is None  # meant for another
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


class FakeClock:
    """A hand-advanced monotonic clock, so cadence tests do not depend on the machine's load."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_pings_at_half_interval_only_when_frames_flow(listener: NotifyListener) -> None:
    clock = FakeClock()
    notifier = Notifier(listener.env_value)
    watchdog = Watchdog(notifier, interval_s=2.0, clock=clock)
    assert watchdog.frame_processed(latency_ms=10.0)  # the first frame pings at once
    first = listener.receive()
    assert first[0] == "WATCHDOG=1" and first[1].startswith("STATUS=")
    # 10 frames at 10 fps span 0.9 s < interval/2: no ping
    for _ in range(9):
        clock.now += 0.1
        assert not watchdog.frame_processed(latency_ms=20.0)
    assert listener.drain() == []
    clock.now += 0.1  # 1.0 s since the last ping = interval/2
    assert watchdog.frame_processed(latency_ms=20.0)
    assert listener.receive() == ["WATCHDOG=1", "STATUS=10.0 fps, 20.0 ms per frame"]
    # The source stalls for 30 s: no frame, so no call and no ping, whatever the time.
    clock.now += 30.0
    assert listener.drain() == []
    assert watchdog.pings == 2


def test_watchdog_without_systemd_watchdog_sends_status_only(listener: NotifyListener) -> None:
    clock = FakeClock()
    watchdog = Watchdog(Notifier(listener.env_value), interval_s=None, status_every_s=5.0, clock=clock)
    watchdog.frame_processed()
    assert listener.receive() == ["STATUS=0.0 fps"]
    clock.now += 5.0
    watchdog.frame_processed()
    assert listener.receive() == ["STATUS=0.2 fps"]


def test_signals_set_events_in_process() -> None:
    with ServiceSignals() as signals:
        os.kill(os.getpid(), signal.SIGHUP)
        assert signals.reload.wait(2)
        assert signals.take_reload() and not signals.take_reload()
        assert not signals.stop.is_set()
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.wait(2)
        assert signals.last_signal == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def _write_config(path: Path, top_k: object) -> None:
    path.write_text(f"model:\n  top_k: {top_k}\n")


def _start_driver(config: Path, env_extra: dict[str, str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), proc.stderr.read() if proc.stderr else line
    return proc


def test_sigterm_stops_with_stopping_and_exit_0(listener: NotifyListener, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    _write_config(config, 3)
    proc = _start_driver(config, {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "200000"})
    try:
        assert listener.wait_for("READY=1")
        assert listener.wait_for("WATCHDOG=1")  # frames flow, so the watchdog is fed
        proc.send_signal(signal.SIGTERM)
        assert listener.wait_for("STOPPING=1")
        assert proc.wait(timeout=10) == 0
        assert proc.stdout is not None and proc.stdout.read().strip() == f"stopped {int(signal.SIGTERM)}"
    finally:
        proc.kill()
        proc.wait()


def test_sighup_reloads_valid_and_keeps_old_on_invalid(listener: NotifyListener, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    _write_config(config, 3)
    proc = _start_driver(config, {"NOTIFY_SOCKET": listener.env_value})
    assert proc.stdout is not None and proc.stderr is not None
    try:
        _write_config(config, 5)
        proc.send_signal(signal.SIGHUP)
        assert proc.stdout.readline().strip() == "reload ok 5"
        assert listener.wait_for("RELOADING=1")
        _write_config(config, "lots")
        proc.send_signal(signal.SIGHUP)
        assert proc.stdout.readline().strip() == "reload failed 5"  # the old config keeps running
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        stderr = proc.stderr.read()
        assert (f"reload failed, keeping the running config: {config}: model.top_k: must be a valid "
                "integer, got 'lots'") in stderr
    finally:
        proc.kill()
        proc.wait()


def test_no_watchdog_while_the_source_stalls(listener: NotifyListener, tmp_path: Path) -> None:
    """A real process with WatchdogSec=0.2 s: pings while frames flow, none while stalled, back after."""
    config = tmp_path / "config.yaml"
    _write_config(config, 3)
    proc = _start_driver(config, {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "200000"})
    assert proc.stdout is not None
    try:
        assert listener.wait_for("WATCHDOG=1")
        proc.send_signal(signal.SIGUSR1)
        assert proc.stdout.readline().strip() == "stalled"
        listener.drain()  # pings sent before the stall took effect
        time.sleep(1.0)  # 10 watchdog half-periods with no frame
        stalled_pings = [m for m in listener.drain() if "WATCHDOG=1" in m]
        assert stalled_pings == []
        proc.send_signal(signal.SIGUSR1)
        assert proc.stdout.readline().strip() == "flowing"
        assert listener.wait_for("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
