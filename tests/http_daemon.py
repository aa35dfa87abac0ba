"""A real ``python -m edgedet run`` with the HTTP endpoint on a free loopback port, and a small HTTP client."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import yaml
from helpers import stop_process
from mosquitto import free_port

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "pikachu_mobilenet_v2_0.35_96_int8.tflite"
LABELS = ("no-pikachu", "pikachu")
ENV = {k: v for k, v in os.environ.items() if k not in ("EDGEDET_CONFIG", "EDGEDET_MQTT_PASSWORD")}
ENV.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def get(port: int, path: str, *, token: Optional[str] = None, method: str = "GET",
        host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request(method, path, headers=headers)
        reply = connection.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        connection.close()


class HttpDaemon:
    """``with HttpDaemon(folder) as d:`` starts the daemon and waits until it has classified a frame."""

    def __init__(self, folder: Path, *, config: Optional[dict[str, Any]] = None, token: Optional[str] = None,
                 device_id: str = "web") -> None:
        self.folder = folder / device_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.token = token
        base: dict[str, Any] = {
            "device_id": device_id,
            "model": {"path": str(MODEL)},
            "source": {"type": "synthetic", "fps": 30, "width": 320, "height": 240},
            "publish": {"console": False},
            "http": {"enabled": True, "port": self.port, "token": token},
            "logging": {"format": "plain"},
        }
        self.config_path = self.folder / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(merge(base, config or {})))
        self.stderr_path = self.folder / "stderr.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def __enter__(self) -> HttpDaemon:
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "edgedet", "run", "--config", str(self.config_path)],
                                     cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=self._stderr)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}: {self.stderr()[-2000:]}"
            try:
                if self.stats()["frames_processed"] > 0:
                    return self
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"no frame served within 120 s: {self.stderr()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        stop_process(self.proc)
        self._stderr.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        kwargs.setdefault("token", self.token)
        return get(self.port, path, **kwargs)

    def stats(self) -> dict[str, Any]:
        status, _, body = self.get("/api/stats")
        if status != 200:
            raise ValueError(status)
        return dict(json.loads(body))

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")
