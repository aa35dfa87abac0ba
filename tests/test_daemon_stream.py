"""A network camera that goes away for 10 s and comes back, against the real daemon: an MJPEG stream over
HTTP (multipart/x-mixed-replace, as IP cameras and mjpg-streamer serve it) written here with http.server,
read through OpenCV's FFmpeg backend. The daemon must reopen with backoff, go on classifying, and count
exactly one source error and one reopen."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml
from mosquitto import free_port

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed (pip install 'edgedet[opencv]')")

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "pikachu_mobilenet_v2_0.35_96_int8.tflite"
OUTAGE_S = 10.0
WAIT_S = 90.0  # only a bound for waiting on a busy machine


class MjpegServer:
    """Serves ``/stream.mjpg`` at 20 fps on a fixed port until ``stop()``, which also ends the open streams
    (the connection closes, as when the camera loses power). ``start()`` again on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        ok, jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8))
        assert ok
        self.jpeg = jpeg.tobytes()
        self.sent = 0
        self.server: http.server.ThreadingHTTPServer | None = None
        self.down = threading.Event()

    def start(self) -> None:
        owner = self
        self.down = down = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(owner.jpeg)
                try:
                    while not down.wait(0.05):
                        self.wfile.write(part + owner.jpeg + b"\r\n")
                        owner.sent += 1
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.down.set()
        self.server.shutdown()
        self.server.server_close()  # the port refuses connections until start()
        self.server = None


def wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.skipif(not MODEL.is_file(), reason=f"bundled model {MODEL} missing")
def test_a_stream_that_dies_for_10_s_is_reopened_and_counted_exactly(tmp_path: Path) -> None:
    port = free_port()
    server = MjpegServer(port)
    server.start()
    results, stats_file, stderr_path = tmp_path / "results.jsonl", tmp_path / "stats.json", tmp_path / "stderr"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "device_id": "stream", "model": {"path": str(MODEL), "top_k": 1},
        "source": {"type": "opencv", "path": f"http://127.0.0.1:{port}/stream.mjpg", "fps": 0, "timeout_s": 3},
        "publish": {"console": False, "jsonl_path": str(results)}}))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "EDGEDET_CONFIG")}
    env["PYTHONPATH"] = str(REPO)

    def records() -> int:
        return results.read_text().count("\n") if results.exists() else 0

    def log() -> str:
        return stderr_path.read_text(errors="replace")

    with stderr_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edgedet", "--log-format", "plain", "run", "--config",
                                 str(config), "--stats-file", str(stats_file)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert wait_until(lambda: records() >= 10 or proc.poll() is not None), log()[-3000:]
        server.stop()
        assert wait_until(lambda: "source failed" in log() or proc.poll() is not None), log()[-3000:]
        time.sleep(OUTAGE_S)  # the outage itself (nothing is timed: the daemon's retries are waited for below)
        assert proc.poll() is None, log()[-3000:]
        assert "open failed (attempt" in log()  # it kept retrying, with backoff, while the stream was gone
        sent_before = server.sent
        server.start()
        assert wait_until(lambda: "source reopened after 1 failure(s)" in log() or proc.poll() is not None), \
            log()[-3000:]
        after_reopen = records()
        assert wait_until(lambda: records() >= after_reopen + 10 or proc.poll() is not None), log()[-3000:]
        assert server.sent > sent_before
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if server.server is not None:
            server.stop()
    stats = json.loads(stats_file.read_text())
    assert stats["source_errors"] == 1 and stats["source_reopens"] == 1, stats
    assert stats["frames_processed"] == records()  # every classified frame was written, none twice
    assert "Traceback" not in log()
