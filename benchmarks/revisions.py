#!/usr/bin/env python3
"""Frame-loop throughput of two checkouts of edgedet, side by side: did a change make `edgedet run` slower?

    git worktree add /tmp/base <commit>
    python benchmarks/revisions.py --base /tmp/base [--head .] [--pairs 10] [--frames-v2 600] [--frames-v1 4000]

Each round runs one real `edgedet run` process per checkout (its own package first on PYTHONPATH, the same
interpreter and venv), synthetic 640x480 frames read as fast as the model takes them, console and MQTT off,
and reads the loop's fps (frames processed / loop uptime) from `--stats-file`. Rounds are paired, the order
alternates, and the verdict is the median of the per-pair ratios head/base, with its range.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EDGEDET_SHARED_MODELS", HERE.parents[1] / "shared" / "models"))


def loop_fps(checkout: Path, model: Path, frames: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp) / "stats.json"
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        env.pop("EDGEDET_CONFIG", None)
        subprocess.run([sys.executable, "-m", "edgedet", "--log-level", "warning", "run", "--max-frames", str(frames),
                        "--stats-file", str(stats_file), "--set", f"model.path={model}",
                        "--set", "source.type=synthetic", "--set", "source.fps=0", "--set", "publish.console=false",
                        "--set", "mqtt.enabled=false"], cwd=tmp, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stats = json.loads(stats_file.read_text())
    return float(stats["frames_processed"] / stats["uptime_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--head", type=Path, default=HERE.parent)
    parser.add_argument("--models", type=Path, default=SHARED)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--frames-v2", type=int, default=600)
    parser.add_argument("--frames-v1", type=int, default=4000)
    args = parser.parse_args()
    runs = [("mobilenet_v2_1.0_224_quant.tflite", args.frames_v2),
            ("mobilenet_v1_0.25_128_quant.tflite", args.frames_v1)]
    print("| model | base fps (median) | head fps (median) | head/base, median of pairs | range | pairs |")
    print("|---|---|---|---|---|---|")
    for name, frames in runs:
        model = args.models / name
        if not model.is_file():
            print(f"skip {name}: not in {args.models}")
            continue
        base, head, ratios = [], [], []
        for i in range(args.pairs):
            order = [("base", args.base), ("head", args.head)]
            if i % 2:
                order.reverse()
            fps = {label: loop_fps(checkout.resolve(), model, frames) for label, checkout in order}
            base.append(fps["base"])
            head.append(fps["head"])
            ratios.append(fps["head"] / fps["base"])
        print(f"| {model.stem} | {statistics.median(base):.1f} | {statistics.median(head):.1f} | "
              f"{statistics.median(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f} | {args.pairs} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
