"""The HTTP endpoint read by real clients: Debian's Prometheus scrapes a running daemon, and a headless
Chromium loads its page (the DOM and a screenshot)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml
from helpers import stop_process
from http_daemon import LABELS, MODEL, HttpDaemon
from mosquitto import free_port
from PIL import Image


def wait_for(predicate: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


# ------------------------------------------------------------------------------------------------ Prometheus
class Prometheus:
    """``prometheus`` with a temporary config and storage, on a free loopback port, scraping every second."""

    def __init__(self, folder: Path, target_port: int, token: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus is not installed (scripts/test installs Debian's prometheus)")
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "edgedet", "scrape_interval": "1s", "scrape_timeout": "1s",
                                      "authorization": {"credentials": token},
                                      "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}]}
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (folder / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def query(self, expression: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.load(reply)
        except OSError:
            return []
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def close(self) -> None:
        stop_process(self.proc)
        self.log.close()


def test_prometheus_scrapes_the_daemon(tmp_path: Path) -> None:
    token = "scrape-token"
    with HttpDaemon(tmp_path, token=token) as daemon:
        prometheus = Prometheus(tmp_path / "prometheus", daemon.port, token)
        try:
            up = wait_for(lambda: [r for r in prometheus.query('up{job="edgedet"}') if r["value"][1] == "1"])
            assert up, (tmp_path / "prometheus" / "prometheus.log").read_text()[-3000:]

            def frames() -> float:
                result = prometheus.query('edgedet_frames_processed_total{job="edgedet"}')
                return float(result[0]["value"][1]) if result else 0.0

            first = wait_for(frames)
            assert first > 0
            assert wait_for(lambda: frames() > first), "the frame counter did not grow between scrapes"
            (info,) = prometheus.query("edgedet_info")
            labels = info["metric"]
            api_info = json.loads(daemon.get("/api/info")[2])
            assert labels["model"] == MODEL.stem and labels["delegate"] == "cpu"
            assert labels["runtime"] == api_info["runtime"]["name"]
            assert labels["runtime_version"] == api_info["runtime"]["version"]
            assert labels["version"] == api_info["edgedet_version"] and labels["device_id"] == "web"
            stages = {r["metric"]["stage"] for r in
                      wait_for(lambda: prometheus.query("edgedet_stage_latency_seconds_count"))}
            assert {"preprocess", "inference", "postprocess", "total"} <= stages
            # The histogram is usable as Prometheus users use it.
            p90 = wait_for(lambda: prometheus.query(
                'histogram_quantile(0.9, rate(edgedet_stage_latency_seconds_bucket{stage="inference"}[5s]))'))
            assert p90 and float(p90[0]["value"][1]) > 0
        finally:
            prometheus.close()


# ------------------------------------------------------------------------------------------------ Chromium
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium is not installed (scripts/test installs Debian's chromium)")
    profile = folder / f"profile-{len(list(folder.glob('profile-*')))}"
    profile.mkdir(parents=True)
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120)


def screenshot(png: Path) -> np.ndarray:
    return np.asarray(Image.open(png).convert("RGB")).astype(np.int16)


# The screenshot tests find the images by their strongly coloured columns: every column of every gradient frame
# is (checked below); one of the drawn scenes has a pale third, and a screenshot taken while it is on view would
# measure it instead of the image.
GEOMETRY_SOURCE: dict[str, Any] = {"width": 640, "height": 480, "pattern": "gradient"}


def test_every_column_of_the_geometry_source_is_strongly_coloured() -> None:
    from edgedet.frames.synthetic import SyntheticSource

    source = SyntheticSource(int(GEOMETRY_SOURCE["width"]), int(GEOMETRY_SOURCE["height"]), 0,
                             pattern=str(GEOMETRY_SOURCE["pattern"]))
    source.open()
    for _ in range(16):  # two cycles of its precomputed frames
        frame = source.read(1.0)
        assert frame is not None
        shown = Image.fromarray(frame.image).resize((480, 360))  # the frame as the page shows it
        model_input = Image.fromarray(frame.image).resize((96, 96)).resize((288, 288))  # the input, scaled 3x
        for image in (shown, model_input):
            assert saturated_columns(np.asarray(image)).all()
    source.close()


def saturated_columns(rgb: np.ndarray, min_rows: int = 60) -> np.ndarray:
    """Which screenshot columns hold at least ``min_rows`` strongly coloured pixels: the page itself is white,
    grey and black, so only the images (and no thin bar or line) make such columns."""
    return ((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum(axis=0) >= min_rows


def saturated_column_runs(png: Path, min_rows: int = 60) -> list[int]:
    """Widths of the runs of saturated columns (see saturated_columns): one per painted image."""
    columns = saturated_columns(screenshot(png), min_rows)
    runs, width = [], 0
    for on in [*columns.tolist(), False]:
        if on:
            width += 1
        elif width:
            runs.append(width)
            width = 0
    return runs


def test_chromium_shows_both_images_and_the_scores(tmp_path: Path) -> None:
    token = "page-token"
    with HttpDaemon(tmp_path, token=token, config={"source": GEOMETRY_SOURCE}) as daemon:
        url = f"{daemon.url}?token={token}"
        dom = chromium(tmp_path, "--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        assert 'id="scores"' in html and 'id="frame"' in html and 'id="input"' in html
        labels = {label for label in LABELS if f'<td class="label">{label}</td>' in html}
        assert labels == set(LABELS)  # top-k = every class of the bundled two-class model
        assert "frame.jpg?frame=" in html and "input.png?frame=" in html and "<svg" in html

        shot = tmp_path / "page.png"
        done = chromium(tmp_path, "--window-size=1280,900", "--hide-scrollbars", f"--screenshot={shot}", url)
        assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    runs = saturated_column_runs(shot)
    # The frame at 480 px wide and the model's 96x96 input scaled up to 288 px, each painted, not blank.
    assert len(runs) == 2, runs
    assert abs(runs[0] - 480) <= 4 and abs(runs[1] - 288) <= 4, runs


def test_chromium_draws_the_region_of_interest_where_the_model_looks(tmp_path: Path) -> None:
    # model.preprocess.roi [x1, y1, x2, y2] = the right half, middle half of the height: on the 480x360 frame
    # image the box is 240 x 180 px, its left edge at the image's middle.
    config = {"source": GEOMETRY_SOURCE, "model": {"preprocess": {"roi": [0.5, 0.25, 1.0, 0.75]}}}
    with HttpDaemon(tmp_path, config=config) as daemon:
        shot = tmp_path / "page.png"
        done = chromium(tmp_path, "--window-size=1280,900", "--hide-scrollbars", f"--screenshot={shot}",
                        daemon.url)
        assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    rgb = screenshot(shot)
    # The box's border is CSS #ffd400 exactly (the frame is a JPEG and never that exact for a long line).
    border = (np.abs(rgb - np.array([255, 212, 0])).max(axis=2) <= 2)
    columns = np.flatnonzero(border.sum(axis=0) >= 150)  # the two vertical edges, 2 px each
    rows = np.flatnonzero(border.sum(axis=1) >= 200)  # the two horizontal edges
    assert len(columns) >= 2 and len(rows) >= 2, (columns, rows)
    width, height = columns.max() - columns.min() + 1, rows.max() - rows.min() + 1
    assert abs(width - 240) <= 3 and abs(height - 180) <= 3, (width, height)
    frame_left = np.flatnonzero(saturated_columns(rgb)).min()
    assert abs(columns.min() - (frame_left + 240)) <= 3, (columns.min(), frame_left)
