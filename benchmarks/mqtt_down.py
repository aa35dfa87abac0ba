"""Daemon fps with MQTT publishing to a broker that is down vs MQTT disabled (issue 5: "< 5 % change").

Each round is a real ``python -m edgedet run`` process (synthetic source at full speed, ``--max-frames``,
``--stats-file``): the whole frame loop with every sink as a service runs it. ``down`` enables MQTT towards a
free loopback port with nothing listening, so paho retries in the background and, once ``mqtt.outbox_max``
messages wait, the outbox drops its oldest at every frame. Rounds alternate (off, down, off, down, ...) so the
noise of a shared machine hits both modes alike. fps = the loop's ``fps_out`` from the stats file (model load
and start-up excluded); peak RSS of each process from ``wait4``.

    python benchmarks/mqtt_down.py [--rounds 4] [--frames 3000] [--v2-frames 150] [--outbox-max 1000]

Models: the bundled default model and, when ../shared/models exists, mobilenet_v2_1.0_224_quant.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "pikachu_mobilenet_v2_0.35_96_int8.tflite"
SHARED_V2 = Path(os.environ.get("EDGEDET_SHARED_MODELS", REPO.parent / "shared" / "models")) / \
    "mobilenet_v2_1.0_224_quant.tflite"
NOT_DELIVERED = re.compile(r"MQTT: stopping with (\d+) message\(s\) not delivered")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_daemon(folder: Path, model: Path, frames: int, mode: str, outbox_max: int) -> dict[str, Any]:
    """One daemon run; ``mode`` is ``off`` (mqtt.enabled false) or ``down`` (broker unreachable)."""
    config: dict[str, Any] = {
        "device_id": "bench",
        "model": {"path": str(model)},
        "source": {"type": "synthetic", "fps": 0},
        "publish": {"console": False, "stats_interval_s": 1.0},
        "mqtt": {"enabled": mode == "down", "host": "127.0.0.1", "port": free_port(), "outbox_max": outbox_max,
                 "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "logging": {"format": "plain"},
    }
    config_path, stats_path = folder / "config.yaml", folder / "stats.json"
    config_path.write_text(yaml.safe_dump(config))
    stats_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "edgedet", "run", "--config", str(config_path),
                             "--max-frames", str(frames), "--stats-file", str(stats_path)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"daemon exited {proc.returncode}:\n{err[-2000:]}")
    stats = json.loads(stats_path.read_text())
    kept = NOT_DELIVERED.search(err)
    return {"fps_out": stats["fps_out"], "frames": stats["frames_processed"],
            "frames_per_uptime": round(stats["frames_processed"] / stats["uptime_s"], 1),
            "inference_p50_ms": stats["latency_ms"]["inference"]["p50"],
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            # user+system CPU of the whole process (start-up included, the same in both modes): far less
            # sensitive than wall-clock fps to other processes on a shared machine.
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "outbox_not_delivered": int(kept.group(1)) if kept else None}


def compare(model: Path, frames: int, rounds: int, outbox_max: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "down": []}
    with tempfile.TemporaryDirectory(prefix="edgedet-mqtt-down-") as tmp:
        folder = Path(tmp)
        run_daemon(folder, model, min(frames, 200), "off", outbox_max)  # warm the page cache
        for round_index in range(rounds):
            order = ("off", "down") if round_index % 2 == 0 else ("down", "off")
            for mode in order:
                runs[mode].append(run_daemon(folder, model, frames, mode, outbox_max))
                print(f"  {model.name} round {round_index + 1} {mode}: {runs[mode][-1]}", file=sys.stderr)
    median = {mode: statistics.median(r["fps_out"] for r in rs) for mode, rs in runs.items()}
    mean = {mode: statistics.fmean(r["fps_out"] for r in rs) for mode, rs in runs.items()}
    return {
        "model": model.name, "frames_per_run": frames, "rounds": rounds, "outbox_max": outbox_max,
        "fps_out_runs": {mode: [r["fps_out"] for r in rs] for mode, rs in runs.items()},
        "fps_out_median": {mode: round(v, 1) for mode, v in median.items()},
        "change_pct_median": round(100 * (median["down"] - median["off"]) / median["off"], 2),
        "change_pct_mean": round(100 * (mean["down"] - mean["off"]) / mean["off"], 2),
        "inference_p50_ms_median": {mode: statistics.median(r["inference_p50_ms"] for r in rs)
                                    for mode, rs in runs.items()},
        "cpu_s_median": {mode: statistics.median(r["cpu_s"] for r in rs) for mode, rs in runs.items()},
        "extra_cpu_us_per_frame_down": round(1e6 * (statistics.median(r["cpu_s"] for r in runs["down"])
                                                    - statistics.median(r["cpu_s"] for r in runs["off"])) / frames,
                                             1),
        "peak_rss_mb": {mode: [r["peak_rss_mb"] for r in rs] for mode, rs in runs.items()},
        "outbox_not_delivered_at_exit": [r["outbox_not_delivered"] for r in runs["down"]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="runs per mode, alternating")
    parser.add_argument("--frames", type=int, default=3000, help="frames per run, default model")
    parser.add_argument("--v2-frames", type=int, default=150, help="frames per run, shared MobileNet v2 1.0 224")
    parser.add_argument("--outbox-max", type=int, default=1000,
                        help="mqtt.outbox_max (smaller than --frames: the outbox overflows in every run)")
    args = parser.parse_args()
    results = [compare(DEFAULT_MODEL, args.frames, args.rounds, args.outbox_max)]
    if SHARED_V2.is_file():
        results.append(compare(SHARED_V2, args.v2_frames, args.rounds, args.outbox_max))
    else:
        print(f"skipping {SHARED_V2.name}: not found in {SHARED_V2.parent}", file=sys.stderr)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
