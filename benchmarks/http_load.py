#!/usr/bin/env python3
"""What the HTTP endpoint costs the frame loop while someone watches: `edgedet run` with http on and polled
against http off, side by side.

    python benchmarks/http_load.py [--pairs 8] [--duration 8] [--interval 0] [--interval 1]

Each round runs two real `edgedet run` processes one after the other (synthetic 640x480 frames read as fast as
the model takes them, console and MQTT off): one with `http.enabled: false`, one with `http.enabled: true`
and a client that polls as the page does (GET `/`, then `/frame.jpg` and `/input.png` of the frame it names),
every ``--interval`` seconds (0 = back to back, the worst case; 1 = the page's own refresh). The fps is the
loop's (frames processed / loop uptime, from `--stats-file`); the CPU per frame is the daemon's user + system
time after a warm-up (/proc/PID/stat) over the frames of that time. Rounds are paired, the order alternates,
and the verdict is the median of the per-pair ratios on/off, with its range.

    python benchmarks/http_load.py --windows 3 [--pairs 12] [--interval 1]

The same question inside one run, where the machine's drift between processes (the main noise here) cancels:
one `edgedet run` with `http.enabled: true`, and windows of ``--windows`` seconds in pairs, one with the client
polling and one without, the order alternating; each window's fps is the growth of
`edgedet_frames_processed_total` (one `/metrics` scrape at each window's edge, in both kinds) over its length.
The verdict is the median of the per-pair ratios polled/unpolled; beside it the same for the daemon's CPU time
per frame (/proc/PID/stat), which the neighbours move much less than the fps. What the endpoint costs while
nobody polls (a reference kept per frame) is what separates this from on/off.

    python benchmarks/http_load.py --toggle 1 [--pairs 40]

That cost alone, inside one process: one `Pipeline` (the daemon's, the same frames, console and MQTT off)
runs on and is reloaded between two frames with `http.enabled` true or false (the reload starts or stops only
the endpoint); windows of ``--toggle`` seconds in pairs, order alternating; fps from the loop's frame
counter, CPU from this process's time (no client runs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from paired import alternating, checkout_env, cpu_seconds, free_port

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EDGEDET_SHARED_MODELS", HERE.parents[1] / "shared" / "models"))
BUNDLED = HERE.parent / "models" / "pikachu_mobilenet_v2_0.35_96_int8.tflite"
FRAME_ID = re.compile(rb"frame\.jpg\?frame=(\d+)")


class Poller(threading.Thread):
    """A watcher of the page: `/`, then both images of the frame it shows; counts what it fetched."""

    def __init__(self, port: int, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.port, self.interval_s = port, interval_s
        self.stop = threading.Event()
        self.requests = 0
        self.images = 0
        self.polling = threading.Event()
        self.polling.set()

    def _get(self, connection: http.client.HTTPConnection, path: str) -> bytes:
        connection.request("GET", path)
        reply = connection.getresponse()
        body = reply.read()
        self.requests += 1
        if reply.status == 200 and path.startswith(("/frame", "/input")):
            self.images += 1
        return body

    def run(self) -> None:
        connection = None
        while not self.stop.is_set():
            if not self.polling.wait(0.05):
                continue
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                page = self._get(connection, "/")
                found = FRAME_ID.search(page)
                if found:
                    self._get(connection, f"/frame.jpg?frame={found.group(1).decode()}")
                    self._get(connection, f"/input.png?frame={found.group(1).decode()}")
            except OSError:  # not listening yet, or the run ended
                connection = None
                time.sleep(0.05)
                continue
            if self.interval_s:
                self.stop.wait(self.interval_s)


WARM_UP_S = 2.0  # model loaded, first frames done: the steady CPU window starts after this


def ratios(runs: list[dict[bool, float]]) -> list[float]:
    return [run[True] / run[False] for run in runs]


def column(runs: list[dict[bool, Any]], index: int) -> list[dict[bool, float]]:
    """One measure of every pair (``index`` into what ``measure`` returned)."""
    return [{flag: run[flag][index] for flag in run} for run in runs]


def spread(values: list[float]) -> str:
    """The median and the range of per-pair ratios, as the tables print them."""
    return f"{statistics.median(values):.3f} | {min(values):.3f}-{max(values):.3f}"


def start_daemon(model: Path, port: int, http_on: bool, folder: str, *extra: str) -> subprocess.Popen[bytes]:
    """``edgedet run`` on synthetic 640x480 frames as fast as the model takes them, console and MQTT off."""
    env = checkout_env(HERE.parent)
    env.pop("EDGEDET_CONFIG", None)
    args = [sys.executable, "-m", "edgedet", "--log-level", "warning", "run", *extra, "--set", f"model.path={model}",
            "--set", "source.type=synthetic", "--set", "source.fps=0", "--set", "publish.console=false",
            "--set", "mqtt.enabled=false", "--set", f"http.enabled={'true' if http_on else 'false'}",
            "--set", f"http.port={port}"]
    return subprocess.Popen(args, cwd=folder, env=env, stdout=subprocess.DEVNULL)


def loop_fps(model: Path, duration_s: float, http_on: bool, interval_s: float) -> tuple[float, int, float]:
    """The loop's fps, the requests the client made, and the daemon's steady CPU seconds per frame (user +
    system over the run after ``WARM_UP_S``, start-up excluded, per frame at the run's fps): on a shared,
    loaded machine the fps follows the neighbours, the CPU per frame much less."""
    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp) / "stats.json"
        port = free_port()
        poller = Poller(port, interval_s) if http_on else None
        if poller is not None:
            poller.start()
        try:
            daemon = start_daemon(model, port, http_on, tmp, "--duration", str(duration_s),
                                  "--stats-file", str(stats_file))
            time.sleep(WARM_UP_S)
            cpu_began, began = cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(max(0.5, duration_s - WARM_UP_S))
            cpu_used, span = cpu_seconds(daemon.pid) - cpu_began, time.monotonic() - began
            if daemon.wait(60 + duration_s) != 0:
                raise SystemExit(f"edgedet run exited with {daemon.returncode}")
        finally:
            if poller is not None:
                poller.stop.set()
                poller.polling.set()
                poller.join(15)
        stats = json.loads(stats_file.read_text())
    fps = int(stats["frames_processed"]) / float(stats["uptime_s"])
    return fps, poller.requests if poller else 0, cpu_used / max(1.0, fps * span)


FRAMES = re.compile(rb"^edgedet_frames_processed_total (\S+)$", re.M)


def scrape_frames(port: int) -> Optional[float]:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/metrics")
        found = FRAMES.search(connection.getresponse().read())
        connection.close()
    except OSError:
        return None
    return float(found.group(1)) if found else None


def windowed(model: Path, window_s: float, pairs: int, interval_s: float) -> list[dict[bool, tuple[float, float]]]:
    """(fps, CPU seconds per frame) of each window, polled (True) and not, from one run with the endpoint on."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        daemon = start_daemon(model, port, True, tmp)
        poller = Poller(port, interval_s)
        poller.polling.clear()
        poller.start()

        def window(polling: bool) -> tuple[float, float]:
            if polling:
                poller.polling.set()
            start, began, cpu_began = scrape_frames(port), time.monotonic(), cpu_seconds(daemon.pid)
            time.sleep(window_s)
            end, ended, cpu_ended = scrape_frames(port), time.monotonic(), cpu_seconds(daemon.pid)
            poller.polling.clear()
            assert start is not None and end is not None
            return (end - start) / (ended - began), (cpu_ended - cpu_began) / max(1.0, end - start)

        try:
            deadline = time.monotonic() + 60
            while scrape_frames(port) is None:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit("the daemon did not serve /metrics")
                time.sleep(0.2)
            time.sleep(2.0)  # past start-up
            return alternating(pairs, window)
        finally:
            poller.stop.set()
            poller.polling.set()
            poller.join(15)
            daemon.terminate()
            daemon.wait(30)


def toggled(model: Path, window_s: float, pairs: int) -> list[dict[bool, tuple[float, float]]]:
    """(fps, CPU seconds per frame) of each window with the endpoint on (True, unpolled) and off, in one
    process."""
    sys.path.insert(0, str(HERE.parent))
    from edgedet.config import build_config
    from edgedet.pipeline import Pipeline

    def config(http_on: bool) -> Any:
        return build_config({"model": {"path": str(model)}, "source": {"type": "synthetic", "fps": 0},
                             "publish": {"console": False}, "mqtt": {"enabled": False},
                             "http": {"enabled": http_on, "port": port}}, "http_load --toggle")

    port = free_port()
    pipeline = Pipeline.build(config(False), "http-toggle")
    wanted: list[Any] = []
    switched = threading.Event()

    def between_frames() -> None:
        if wanted:
            pipeline.reload(wanted.pop())
            switched.set()

    def window(http_on: bool) -> tuple[float, float]:
        switched.clear()
        wanted.append(config(http_on))
        switched.wait(10)
        frames0, cpu0, t0 = pipeline.loop_stats().frames_processed, time.process_time(), time.monotonic()
        time.sleep(window_s)
        frames1, cpu1, t1 = pipeline.loop_stats().frames_processed, time.process_time(), time.monotonic()
        return (frames1 - frames0) / (t1 - t0), (cpu1 - cpu0) / max(1, frames1 - frames0)

    runner = threading.Thread(target=pipeline.run, kwargs={"between_frames": between_frames,
                                                          "between_frames_due": lambda: bool(wanted)})
    runner.start()
    try:
        time.sleep(2.0)  # past start-up
        return alternating(pairs, window)
    finally:
        pipeline.stop.set()
        runner.join(30)
        pipeline.close()


HEADERS = {
    "toggle": ["model", "endpoint on (nobody polling) / off: fps, median of pairs", "range",
               "CPU per frame on/off, median of pairs", "pairs of windows"],
    "windows": ["model", "polling", "unpolled fps (median)", "polled fps (median)", "polled/unpolled, median of pairs",
                "range", "CPU per frame polled/unpolled, median of pairs", "pairs of windows"],
    "pairs": ["model", "polling", "off fps (median)", "on+polled fps (median)", "on/off, median of pairs", "range",
              "CPU per frame on/off, median of pairs", "CPU ms per frame off / on (medians)", "requests/s", "pairs"],
}


def toggled_row(model: Path, args: argparse.Namespace) -> str:
    runs = toggled(model, args.toggle, args.pairs)
    fps, cpu = column(runs, 0), column(runs, 1)
    return f"{spread(ratios(fps))} | {statistics.median(ratios(cpu)):.3f} | {args.pairs} x {args.toggle:g} s"


def windowed_row(model: Path, interval: float, args: argparse.Namespace) -> str:
    runs = windowed(model, args.windows, args.pairs, interval)
    fps, cpu = column(runs, 0), column(runs, 1)
    return (f"{statistics.median(run[False] for run in fps):.1f} | {statistics.median(run[True] for run in fps):.1f}"
            f" | {spread(ratios(fps))} | {statistics.median(ratios(cpu)):.3f} | {args.pairs} x {args.windows:g} s")


def pairs_row(model: Path, interval: float, args: argparse.Namespace) -> str:
    runs = alternating(args.pairs, lambda http_on: loop_fps(model, args.duration, http_on, interval))
    fps, cpu = column(runs, 0), column(runs, 2)
    rates = [run[True][1] / args.duration for run in runs]
    return (f"{statistics.median(run[False] for run in fps):.1f} | {statistics.median(run[True] for run in fps):.1f}"
            f" | {spread(ratios(fps))} | {statistics.median(ratios(cpu)):.3f} | "
            f"{statistics.median(run[False] for run in cpu) * 1e3:.3f} / "
            f"{statistics.median(run[True] for run in cpu) * 1e3:.3f} | {statistics.median(rates):.0f} | {args.pairs}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--interval", type=float, action="append",
                        help="seconds between page polls (repeatable; default: 0 and 1)")
    parser.add_argument("--models", type=Path, default=SHARED)
    parser.add_argument("--windows", type=float, default=0.0, metavar="SECONDS",
                        help="polled and unpolled windows of this length inside one run (see above)")
    parser.add_argument("--toggle", type=float, default=0.0, metavar="SECONDS",
                        help="endpoint on (unpolled) and off, windows of this length in one process (see above)")
    args = parser.parse_args()
    models = [BUNDLED, args.models / "mobilenet_v2_1.0_224_quant.tflite"]
    load_before = os.getloadavg()
    header = HEADERS["toggle" if args.toggle else "windows" if args.windows else "pairs"]
    print(f"| {' | '.join(header)} |\n|{'---|' * len(header)}")
    for model in models:
        if not model.is_file():
            print(f"skip {model.name}: not found")
            continue
        if args.toggle:
            print(f"| {model.stem} | {toggled_row(model, args)} |", flush=True)
            continue
        for interval in args.interval or [0.0, 1.0]:
            polling = "back to back" if interval == 0 else f"every {interval:g} s"
            row = windowed_row(model, interval, args) if args.windows else pairs_row(model, interval, args)
            print(f"| {model.stem} | {polling} | {row} |", flush=True)
    print(f"\nload average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in load_before)} before, "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
