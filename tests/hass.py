"""A real Home Assistant Core for tests: its own venv (scripts/install-homeassistant), a free loopback port, a
temporary config folder, onboarded and given the MQTT integration over its REST API, as a user would.

Not named homeassistant.py: that would shadow the real package for anything importing it from tests/.

What the tests read is what Home Assistant itself says: ``/api/states``, ``/api/history/period``, and its
device registry through ``/api/template`` (``device_attr``, ``device_entities``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml
from mosquitto import HOST, Collector, Mosquitto, free_port

REPO = Path(__file__).resolve().parents[1]
HA_PYTHON = Path(os.environ.get("EDGEDET_HA_PYTHON", REPO / ".venv-ha" / "bin" / "python"))
USER, PASSWORD = "edgedet", "edgedet-test-password"


def available() -> str | None:
    """None when Home Assistant is installed for the tests, else the reason to skip."""
    if not HA_PYTHON.is_file():
        return (f"Home Assistant not installed ({HA_PYTHON}); scripts/test installs it "
                "(scripts/install-homeassistant), or set EDGEDET_HA_PYTHON")
    return None


def ha_version() -> tuple[int, int]:
    out = subprocess.run([str(HA_PYTHON), "-c", "import homeassistant.const as c; print(c.__version__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    year, month = out.split(".")[:2]
    return int(year), int(month)


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(step_s)


class HomeAssistant:
    """One Home Assistant process. ``start()`` (the first one onboards and adds MQTT), ``stop()`` (SIGTERM),
    ``restart()``; ``states()``, ``state()``, ``template()``, ``history()``."""

    def __init__(self, workdir: Path, broker: Mosquitto, *, extra_config: dict[str, Any] | None = None) -> None:
        self.workdir = Path(workdir)
        self.config_dir = self.workdir / "config"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.broker = broker
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.client_id = f"{self.url}/"
        self.log_path = self.workdir / "ha.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._access_token: str | None = None
        self._refresh_token: str | None = None
        self.started_wall = 0.0
        self.birth_wall = 0.0  # when Home Assistant's MQTT birth message (homeassistant/status) arrived
        # The minimum that gives the REST and template API (api), config entries over REST (config),
        # onboarding, history (with the recorder): Home Assistant adds its default integrations (frontend,
        # automation, counter, ...) itself, and MQTT comes as a config entry. No default_config: it pulls in
        # integrations with more requirements (bluetooth, zeroconf, ...).
        config: dict[str, Any] = {
            "homeassistant": {"name": "edgedet test", "latitude": 0, "longitude": 0, "elevation": 0,
                              "unit_system": "metric", "time_zone": "UTC", "currency": "EUR", "country": "DE"},
            "http": {"server_host": HOST, "server_port": self.port},
            "api": {}, "config": {}, "onboarding": {}, "history": {},
            # Commit every state at once: /api/history reads what the recorder committed.
            "recorder": {"commit_interval": 0},
            "logger": {"default": "warning"},
            **(extra_config or {}),
        }
        (self.config_dir / "configuration.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self._births = Collector(broker, "homeassistant/status")

    # ------------------------------------------------------------------ process
    def start(self, timeout_s: float = 120.0) -> HomeAssistant:
        births = len(self._births.payloads("homeassistant/status"))
        self._log = self.log_path.open("ab")
        self.started_wall = time.time()
        self.proc = subprocess.Popen([str(HA_PYTHON), "-m", "homeassistant", "-c", str(self.config_dir),
                                      "--skip-pip", "--log-no-color"], stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._http_up, timeout_s, f"Home Assistant's HTTP server on {self.url}\n{self.log_tail()}", 0.2)
        if self._access_token is None:
            self._onboard()
        else:
            self._refresh()
        if not self.api("GET", "/api/config/config_entries/entry?domain=mqtt"):
            self._add_mqtt()
        wait_for(lambda: len(self._births.payloads("homeassistant/status")) > births, timeout_s,
                 f"Home Assistant's MQTT birth message\n{self.log_tail()}")
        self.birth_wall = time.time()
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._births.close()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def errors(self) -> list[str]:
        """ERROR lines of Home Assistant's log (a discovery config it refused shows here)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if " ERROR " in line]

    # ------------------------------------------------------------------ HTTP
    def _http_up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"Home Assistant exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/api/onboarding", timeout=2):
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _request(self, method: str, path: str, body: Any = None, *, form: dict[str, str] | None = None,
                 auth: bool = True, raw: bool = False) -> Any:
        headers = {}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self._access_token}"
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                content = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
        if raw:
            return content
        return json.loads(content) if content.strip().startswith((b"{", b"[")) else content.decode()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self._request(method, path, body)

    def _onboard(self) -> None:
        created = self._request("POST", "/api/onboarding/users", {
            "client_id": self.client_id, "name": "edgedet test", "username": USER, "password": PASSWORD,
            "language": "en"}, auth=False)
        tokens = self._request("POST", "/auth/token", form={
            "grant_type": "authorization_code", "code": created["auth_code"], "client_id": self.client_id},
            auth=False)
        self._access_token, self._refresh_token = tokens["access_token"], tokens["refresh_token"]

    def _refresh(self) -> None:
        assert self._refresh_token is not None
        tokens = self._request("POST", "/auth/token", form={
            "grant_type": "refresh_token", "refresh_token": self._refresh_token, "client_id": self.client_id},
            auth=False)
        self._access_token = tokens["access_token"]

    def _add_mqtt(self) -> None:
        flow = self.api("POST", "/api/config/config_entries/flow", {"handler": "mqtt",
                                                                    "show_advanced_options": False})
        assert flow.get("step_id") == "broker", flow
        result = self.api("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                          {"broker": self.broker.host, "port": self.broker.port})
        assert result.get("type") == "create_entry", result

    # ------------------------------------------------------------------ what Home Assistant says
    def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in self.api("GET", "/api/states")}

    def state(self, entity_id: str) -> dict[str, Any] | None:
        return self.states().get(entity_id)

    def value(self, entity_id: str) -> str | None:
        state = self.state(entity_id)
        return None if state is None else state["state"]

    def template(self, template: str) -> str:
        return self._request("POST", "/api/template", {"template": template}, raw=True).decode()

    def device(self, entity_id: str) -> dict[str, Any]:
        """The device registry entry of the device ``entity_id`` belongs to, as Home Assistant renders it."""
        text = self.template(
            "{% set d = device_id('" + entity_id + "') %}"
            "{{ {'id': d, 'name': device_attr(d, 'name'), 'manufacturer': device_attr(d, 'manufacturer'),"
            " 'model': device_attr(d, 'model'), 'sw_version': device_attr(d, 'sw_version'),"
            " 'identifiers': device_attr(d, 'identifiers') | list,"
            " 'entities': device_entities(d) | sort} | tojson }}")
        return json.loads(text)

    def history(self, entity_id: str, since_wall: float) -> list[tuple[str, float]]:
        """``(state, last_changed)`` of every state ``entity_id`` had since ``since_wall`` (the one it had
        then first), from the recorder."""
        start = datetime.fromtimestamp(since_wall, tz=timezone.utc).isoformat()
        query = urllib.parse.urlencode({"filter_entity_id": entity_id, "minimal_response": "",
                                        "no_attributes": ""})
        rows = self.api("GET", f"/api/history/period/{urllib.parse.quote(start)}?{query}")
        return [(row["state"], parse_time(row["last_changed"])) for row in (rows[0] if rows else [])]

    def image(self, entity_id: str) -> bytes:
        return self._request("GET", f"/api/image_proxy/{entity_id}", raw=True)
