"""A stage that never returns (a hung USB Coral): the real daemon stops feeding systemd's watchdog, logs which
stage hung in one line and exits with code 3 (``model.invoke_timeout_s``). The interpreter is the real one,
wrapped by tests/hang_driver.py so that an invoke() blocks forever after a few frames."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_service import NotifyListener

from edgedet.stagewatch import EXIT_HUNG, HangMonitor, StageClock

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).resolve().parent / "hang_driver.py"
MODEL = REPO / "models" / "pikachu_mobilenet_v2_0.35_96_int8.tflite"
HANG_AFTER = 5  # frames processed normally first: READY=1 and watchdog pings go out
WAIT_S = 90.0  # model load on a busy machine plus the timeout; only a bound for waiting


def run_hanging_daemon(tmp_path: Path, mode: str, listener: NotifyListener) -> tuple[int, str, list[list[str]]]:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "device_id": "hang", "model": {"path": str(MODEL), "top_k": 1, "invoke_timeout_s": 2},
        "source": {"type": "synthetic", "width": 160, "height": 120, "fps": 20},
        "publish": {"console": False}}))
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "EDGEDET_CONFIG")}
    env.update(PYTHONPATH=str(REPO), NOTIFY_SOCKET=listener.env_value, WATCHDOG_USEC="400000")
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, str(DRIVER), str(HANG_AFTER), mode, "--log-format", "plain",
                                 "run", "--config", str(config)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        deadline = time.monotonic() + WAIT_S
        while "invoke hanging" not in stderr_path.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, stderr_path.read_text()[-3000:]
            time.sleep(0.05)
        # Every datagram sent before the hang is queued by now (a send to an AF_UNIX socket is synchronous).
        before = listener.drain()
        code = proc.wait(timeout=WAIT_S)
        after = listener.drain()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any("WATCHDOG=1" in message for message in before), f"never fed before the hang: {before}"
    return code, stderr_path.read_text(), after


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify.sock")
    sock.bind(address)
    yield NotifyListener(sock, address)
    sock.close()


@pytest.mark.skipif(not MODEL.is_file(), reason=f"bundled model {MODEL} missing")
@pytest.mark.parametrize("mode", ["cpu", "offcpu"])
def test_a_hung_invoke_starves_the_watchdog_and_exits_3_naming_the_stage(tmp_path, notify, mode):
    code, log, after = run_hanging_daemon(tmp_path, mode, notify)
    assert code == EXIT_HUNG == 3, log[-3000:]
    assert not any("WATCHDOG=1" in message for message in after), after  # the watchdog was not fed
    hung = [line for line in log.splitlines() if "hung" in line and "invoke hanging" not in line]
    assert len(hung) == 1, log[-3000:]
    assert "stage inference hung" in hung[0] and "model.invoke_timeout_s=2" in hung[0]
    assert "exiting with code 3" in hung[0]
    assert "Traceback" not in log


class Clock:
    now = 0.0


@pytest.fixture
def fake_time(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("edgedet.stagewatch.time.monotonic", lambda: clock.now)
    return clock


def test_the_monitor_names_the_stage_past_the_timeout_and_not_before(fake_time):
    loop, capture = StageClock("loop"), StageClock("capture")
    monitor = HangMonitor(lambda: [loop, capture], lambda: 10.0, lambda: 5.0)
    loop.enter("sink MqttSink")
    assert monitor.check(10.0) is None
    assert monitor.check(10.5) == "sink MqttSink"
    loop.idle()
    capture.enter("capture")  # a read has source.timeout_s of its own on top
    assert monitor.check(14.0) is None
    assert monitor.check(15.5) == "capture"


def test_idle_and_off_are_never_hung(fake_time):
    clock = StageClock("loop")
    timeout = [0.0]
    monitor = HangMonitor(lambda: [clock], lambda: timeout[0])
    clock.enter("inference")
    assert monitor.check(1e6) is None  # 0 = off
    timeout[0] = 1.0
    clock.idle()
    assert monitor.check(1e6) is None
    clock.enter("inference")
    assert monitor.check(1e6) == "inference"


def test_the_monitor_thread_calls_its_exit_once_on_a_hang():
    clock = StageClock("loop")
    clock.at = ("preprocess", time.monotonic() - 100)
    codes: list[int] = []
    monitor = HangMonitor(lambda: [clock], lambda: 0.01, on_hang=codes.append)
    monitor.start()
    monitor.join(timeout=30)
    assert not monitor.is_alive() and codes == [EXIT_HUNG]
