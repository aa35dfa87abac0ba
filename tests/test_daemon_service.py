"""The service side against the real daemon: ``python -m edgedet run`` processes, real sockets and signals.

Each test starts the daemon from this checkout with the bundled model, a real AF_UNIX datagram socket as
``$NOTIFY_SOCKET`` (the systemd side) and, where it matters, a real mosquitto. Only the Pi camera is fake
(``tests/fakes/picamera2``, stalled from outside the process through its stall file). No speed is asserted;
the 2 s stop is the service's functional requirement (systemd's stop timeout budget).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from mosquitto import Collector, Mosquitto, available
from test_mqtt_broker import wait_until
from test_service import NotifyListener, listener  # noqa: F401  (listener: the path/abstract fixture)

REPO = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "fakes"
MODEL = REPO / "models" / "pikachu_mobilenet_v2_0.35_96_int8.tflite"
STALL_FILE_ENV = "EDGEDET_FAKE_PICAMERA2_STALL_FILE"  # tests/fakes/picamera2/fake.py
STOP_BUDGET_S = 2.0
# WatchdogSec=0.4 s: the daemon must ping every 0.2 s (sd_watchdog_enabled(3): half the interval).
WATCHDOG_USEC = 400_000
PING_PERIOD_S = WATCHDOG_USEC / 2e6
STARTUP_S = 60.0  # model load + first frame on a busy shared machine; only a bound for waiting
STATUS_LINE = re.compile(r"^STATUS=(\d+\.\d) fps, (\d+\.\d) ms per frame$")

pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason=f"bundled model {MODEL} missing")


def write_config(path: Path, **sections: Any) -> Path:
    """A daemon config: the bundled model, light synthetic frames, no console spam; ``sections`` merge in."""
    config: dict[str, Any] = {
        "device_id": "e2e",
        "model": {"path": str(MODEL), "top_k": 1},
        "source": {"type": "synthetic", "width": 160, "height": 120, "fps": 20},
        "publish": {"console": True},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def daemon_env(extra: dict[str, str], *, fake_camera: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "EDGEDET_CONFIG")}
    # This checkout's package first (the venv holds an editable install of another checkout).
    paths = [str(REPO), *([str(FAKES)] if fake_camera else [])]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra)
    return env


class Daemon:
    """``python -m edgedet run --config FILE``; stdout/stderr go to files, so at the moment a datagram
    arrives everything the daemon logged before sending it can be read back (no pipe-reader race)."""

    def __init__(self, workdir: Path, config: Path, env: dict[str, str]) -> None:
        self.stdout_path = workdir / "daemon.stdout"
        self.stderr_path = workdir / "daemon.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgedet", "--log-format", "plain", "run",
                                          "--config", str(config)], cwd=REPO, env=env, stdout=out,
                                         stderr=err)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout_s: float = 20.0, count: int = 1) -> str:
        assert wait_until(lambda: self.log().count(needle) >= count or self.proc.poll() is not None,
                          timeout_s), f"{needle!r} not logged within {timeout_s} s:\n{self.log()[-3000:]}"
        text = self.log()
        assert text.count(needle) >= count, f"daemon exited ({self.proc.returncode}):\n{text[-3000:]}"
        return text

    def stop(self, signum: int = signal.SIGTERM) -> float:
        """Send ``signum``; return the seconds until the process is gone (waits at most 10 s)."""
        sent = time.monotonic()
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daemon still running 10 s after signal {signum}:\n{self.log()[-3000:]}")
        return time.monotonic() - sent

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(config: Path, env_extra: dict[str, str], *, fake_camera: bool = False) -> Daemon:
        daemon = Daemon(tmp_path, config, daemon_env(env_extra, fake_camera=fake_camera))
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[NotifyListener]:
    """One socket form for the longer tests (both forms are covered by the READY/WATCHDOG test)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify.sock")
    sock.bind(address)
    yield NotifyListener(sock, address)
    sock.close()


def pings(messages: list[list[str]]) -> list[list[str]]:
    return [m for m in messages if "WATCHDOG=1" in m]


def jsonl_records(path: Path) -> list[dict[str, Any]]:
    """Complete lines only: the sink flushes about once a second, a read may catch half a line."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def test_subprocess_runs_this_checkout() -> None:
    """The daemon processes below import this worktree's edgedet, not the venv's editable install."""
    result = subprocess.run([sys.executable, "-c", "import edgedet; print(edgedet.__file__)"], cwd="/",
                            env=daemon_env({}), capture_output=True, text=True, timeout=60)
    assert Path(result.stdout.strip()) == REPO / "edgedet" / "__init__.py", result.stderr


def test_ready_after_first_frame_then_watchdog_cadence_status_and_stopping(
        listener: NotifyListener, tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:  # noqa: F811
    config = write_config(tmp_path / "config.yaml")
    daemon = start_daemon(config, {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": str(WATCHDOG_USEC)})

    # The very first datagram is READY=1, and when it arrives the model is loaded and a frame was processed
    # (the console sink logs every first result before on_frame sends READY).
    first = listener.receive(timeout=STARTUP_S)
    logged_before_ready = daemon.log()
    assert first == ["READY=1", "STATUS=model pikachu_mobilenet_v2_0.35_96_int8 loaded, first frame processed"]
    model_line = logged_before_ready.find("edgedet.daemon: edgedet ")
    frame_line = logged_before_ready.find("edgedet.results: frame 0: ")
    assert 0 <= model_line < frame_line, logged_before_ready

    # Cadence: at most one ping per half interval, and they keep coming while frames flow.
    listener.drain()
    window_start = time.monotonic()
    time.sleep(2.0)
    messages = listener.drain()
    window_s = time.monotonic() - window_start
    watchdog = pings(messages)
    most = int(window_s / PING_PERIOD_S) + 2  # +1 for a fence post, +1 for a ping sent just before draining
    assert 3 <= len(watchdog) <= most, (len(watchdog), window_s, messages)
    for message in watchdog:
        assert len(message) == 2, message
        status = STATUS_LINE.match(message[1])
        assert status is not None, message
        assert float(status.group(1)) > 0 and float(status.group(2)) > 0, message
    assert all(m[0] == "WATCHDOG=1" for m in messages), messages  # nothing else while running

    took = daemon.stop(signal.SIGTERM)
    after = listener.drain()
    assert daemon.proc.returncode == 0, daemon.log()[-2000:]
    assert took < STOP_BUDGET_S, f"SIGTERM -> exit took {took:.2f} s"
    stopping = [i for i, m in enumerate(after) if "STOPPING=1" in m]
    assert len(stopping) == 1, after
    assert not pings(after[stopping[0]:]), after  # no ping once stopping
    assert re.search(r"stopped: \d+ frames processed", daemon.log())


def test_no_watchdog_while_the_camera_stalls_and_back_after(
        path_listener: NotifyListener, tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    """The fake Pi camera stops delivering (a dislodged ribbon cable): captures time out, the loop closes
    and reopens the camera with backoff, and no WATCHDOG=1 goes out, so systemd would restart us."""
    stall_file = tmp_path / "camera-stalled"
    config = write_config(tmp_path / "config.yaml",
                          source={"type": "picamera2", "width": 320, "height": 240, "fps": 20,
                                  "timeout_s": 0.5})
    daemon = start_daemon(config, {"NOTIFY_SOCKET": path_listener.env_value,
                                   "WATCHDOG_USEC": str(WATCHDOG_USEC), STALL_FILE_ENV: str(stall_file)},
                          fake_camera=True)
    assert path_listener.wait_for("READY=1", timeout=STARTUP_S)
    assert path_listener.wait_for("WATCHDOG=1")
    assert "picamera2 source: camera 0 (imx219)" in daemon.log()

    stall_file.touch()
    daemon.wait_log("source failed (TimeoutError: fake picamera2: no frame within the wait); reopening in 1 s")
    path_listener.drain()  # a ping for a frame processed before the stall took hold
    # Two failed reopen rounds (1 s, then 2 s backoff): about 2.5 s without a single frame.
    log = daemon.wait_log("; reopening in 2 s")
    assert "source reopened after 1 failure(s)" in log
    stalled = path_listener.drain()
    assert pings(stalled) == [], stalled

    stall_file.unlink()
    assert path_listener.wait_for("WATCHDOG=1", timeout=20.0)  # frames again after the next reopen
    assert re.search(r"source reopened after [2-9] failure\(s\)", daemon.log())
    assert daemon.stop(signal.SIGTERM) < STOP_BUDGET_S
    assert daemon.proc.returncode == 0, daemon.log()[-2000:]


@pytest.mark.skipif(available() is not None, reason=available() or "")
def test_sigterm_publishes_offline_and_exits_0_within_2_s(
        path_listener: NotifyListener, tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        collector = Collector(broker, "edgedet/e2e/#")
        try:
            config = write_config(tmp_path / "config.yaml",
                                  mqtt={"enabled": True, "host": broker.host, "port": broker.port})
            daemon = start_daemon(config, {"NOTIFY_SOCKET": path_listener.env_value})
            assert path_listener.wait_for("READY=1", timeout=STARTUP_S)
            assert wait_until(lambda: b"online" in collector.payloads("/status"), 20), collector.received
            assert wait_until(lambda: len(collector.payloads("/detection")) > 0, 20), collector.received

            took = daemon.stop(signal.SIGTERM)
            assert daemon.proc.returncode == 0, daemon.log()[-2000:]
            assert took < STOP_BUDGET_S, f"SIGTERM -> exit took {took:.2f} s"
            assert "STOPPING=1" in path_listener.wait_for("STOPPING=1", timeout=1.0)
            assert wait_until(lambda: collector.payloads("/status")[-1:] == [b"offline"], 5), collector.received
            # Published by the daemon on its clean stop, not the broker's Will for a dropped connection.
            assert wait_until(lambda: "Client edgedet-e2e disconnected" in broker.log_text(), 5), \
                broker.log_text()[-2000:]
        finally:
            collector.close()


def test_sighup_valid_config_replaces_the_pipeline_invalid_ones_keep_it(
        path_listener: NotifyListener, tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    config = write_config(tmp_path / "config.yaml", publish={"jsonl_path": str(first_out)})
    daemon = start_daemon(config, {"NOTIFY_SOCKET": path_listener.env_value,
                                   "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    pid = daemon.proc.pid
    assert path_listener.wait_for("READY=1", timeout=STARTUP_S)
    assert wait_until(lambda: len(jsonl_records(first_out)) > 0, 20)
    assert {len(r["top_k"]) for r in jsonl_records(first_out)} == {1}

    # 1. A valid new config: top_k 2 and another JSONL file, taken over in-process.
    write_config(config, model={"top_k": 2}, publish={"jsonl_path": str(second_out)})
    daemon.proc.send_signal(signal.SIGHUP)
    assert path_listener.wait_for("RELOADING=1")
    assert path_listener.wait_for("READY=1", timeout=STARTUP_S)
    daemon.wait_log("config reloaded: model.top_k, publish rebuilt")  # nothing else is rebuilt
    assert wait_until(lambda: len(jsonl_records(second_out)) >= 3, 20)
    assert {len(r["top_k"]) for r in jsonl_records(second_out)} == {2}
    first_count = len(jsonl_records(first_out))  # the old sink was closed: the first file stays as it is

    # 2. An invalid config (schema): logged, the running pipeline keeps processing.
    config.write_text(config.read_text().replace("top_k: 2", "top_k: lots"))
    daemon.proc.send_signal(signal.SIGHUP)
    assert path_listener.wait_for("RELOADING=1")
    log = daemon.wait_log("reload failed, keeping the running config")
    assert (f"reload failed, keeping the running config: {config}: model.top_k: must be a valid integer, "
            "got 'lots'") in log
    processed = len(jsonl_records(second_out))
    assert wait_until(lambda: len(jsonl_records(second_out)) >= processed + 3, 20)
    assert path_listener.wait_for("WATCHDOG=1")

    # 3. A config that validates but cannot be built (an empty image folder): the old config is rebuilt.
    empty = tmp_path / "no-images"
    empty.mkdir()
    write_config(config, model={"top_k": 2}, publish={"jsonl_path": str(second_out)},
                 source={"type": "images", "path": str(empty), "fps": 20})
    daemon.proc.send_signal(signal.SIGHUP)
    log = daemon.wait_log("reload failed, keeping the running config", count=2)
    assert "contains no readable images" in log.split("reload failed, keeping the running config")[-1]
    processed = len(jsonl_records(second_out))
    assert wait_until(lambda: len(jsonl_records(second_out)) >= processed + 3, 20)
    assert {len(r["top_k"]) for r in jsonl_records(second_out)} == {2}
    assert len(jsonl_records(first_out)) == first_count

    # Same process all along: one start, never exited, one stop at the end (SIGINT, like Ctrl-C).
    assert daemon.proc.poll() is None and daemon.proc.pid == pid
    path_listener.drain()
    took = daemon.stop(signal.SIGINT)
    assert daemon.proc.returncode == 0, daemon.log()[-2000:]
    assert took < STOP_BUDGET_S, f"SIGINT -> exit took {took:.2f} s"
    assert any("STOPPING=1" in m for m in path_listener.drain())
    log = daemon.log()
    assert log.count("edgedet.daemon: edgedet ") == 1 and log.count("edgedet.daemon: stopped: ") == 1
    assert "Traceback" not in log



def test_sigterm_while_a_camera_read_hangs_exits_0_within_2_s(
        path_listener: NotifyListener, tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    """With the default source.timeout_s (5 s) a stalled camera holds the capture thread in its read."""
    stall_file = tmp_path / "camera-stalled"
    config = write_config(tmp_path / "config.yaml",
                          source={"type": "picamera2", "width": 320, "height": 240, "fps": 20, "timeout_s": 5.0})
    daemon = start_daemon(config, {"NOTIFY_SOCKET": path_listener.env_value, STALL_FILE_ENV: str(stall_file)},
                          fake_camera=True)
    assert path_listener.wait_for("READY=1", timeout=STARTUP_S)
    stall_file.touch()
    time.sleep(0.5)  # the capture thread is now waiting for a frame that does not come
    took = daemon.stop(signal.SIGTERM)
    assert daemon.proc.returncode == 0, daemon.log()[-2000:]
    assert "STOPPING=1" in path_listener.wait_for("STOPPING=1", timeout=1.0)
    assert took < STOP_BUDGET_S, f"SIGTERM -> exit took {took:.2f} s:\n{daemon.log()[-1500:]}"
