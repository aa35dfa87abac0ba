#!/usr/bin/env python3
"""Frame-loop throughput of two checkouts of edgedet, side by side: did a change make `edgedet run` slower?

    git worktree add /tmp/base <commit>
    python benchmarks/revisions.py --base /tmp/base [--head .] [--pairs 10] [--frames-v2 600] [--frames-v1 4000]
                                   [--overlap] [--memory] [--cpu-per-frame]

Each round runs one real `edgedet run` process per checkout (its own package first on PYTHONPATH, the same
interpreter and venv), synthetic 640x480 frames read as fast as the model takes them, console and MQTT off,
and reads the loop's fps (frames processed / loop uptime) from `--stats-file`. Rounds are paired, the order
alternates, and the verdict is the median of the per-pair ratios head/base, with its range.

`--overlap` also compares the overlapped loop on a SIMULATED accelerator (edgedet.model.simulated, invoke =
a 2.5 ms and a 1.0 ms sleep, V2 scores; `run` cannot use it), each checkout's own `frame_loop.loop_run` in a
process of its own: fps head/base and the frame age p50 minus the invoke.

`--cpu-per-frame` compares, instead, the CPU time per frame of `edgedet run` at a 30 fps synthetic source as
`frame_loop.py cpu-per-frame` measures it (bundled model, MQTT off, 6 s windows after 3 s): head - base in ms.

`--memory` compares, instead, the steady RSS of `edgedet run` as `frame_loop.py memory` measures it (the bundled
model, MQTT on to a local mosquitto, backend numpy, 10,000 synthetic 640x480 frames at fps 0, the maximum
between 10 % and 90 % of the run): head - base in MB, median of the paired differences.
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

from paired import checkout_env, paired

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EDGEDET_SHARED_MODELS", HERE.parents[1] / "shared" / "models"))


def loop_fps(checkout: Path, model: Path, frames: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp) / "stats.json"
        env = checkout_env(checkout)
        env.pop("EDGEDET_CONFIG", None)
        subprocess.run([sys.executable, "-m", "edgedet", "--log-level", "warning", "run", "--max-frames", str(frames),
                        "--stats-file", str(stats_file), "--set", f"model.path={model}",
                        "--set", "source.type=synthetic", "--set", "source.fps=0", "--set", "publish.console=false",
                        "--set", "mqtt.enabled=false"], cwd=tmp, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stats = json.loads(stats_file.read_text())
    return float(stats["frames_processed"] / stats["uptime_s"])


OVERLAP_RUN = """
import sys
root, model, invoke_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
sys.path[:0] = [root + "/benchmarks", root]
import edgedet, frame_loop
from edgedet.model.classifier import Classifier
from edgedet.model.config import ModelConfig
from edgedet.model.simulated import simulated_accelerator
assert edgedet.__file__.startswith(root), edgedet.__file__
classifier = Classifier.from_config(ModelConfig(path=model, num_threads=1),
                                    interpreter_factory=simulated_accelerator(invoke_s))
frame_loop.loop_run(classifier, 0.5, overlap=True)
run = frame_loop.loop_run(classifier, 3.0, overlap=True)
print(run["fps"], run["frame_age"] - run["inference"])
"""


def overlapped(checkout: Path, model: Path, invoke_s: float) -> tuple[float, float]:
    """fps and frame age p50 - invoke of the checkout's overlapped loop on the simulated accelerator."""
    out = subprocess.run([sys.executable, "-c", OVERLAP_RUN, str(checkout), str(model), str(invoke_s)],
                         cwd=HERE, check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def compare_memory(base: Path, head: Path, pairs: int, frames: int = 10_000) -> None:
    import frame_loop

    with frame_loop.local_mosquitto() as port, tempfile.TemporaryDirectory() as tmp:
        config = frame_loop.mqtt_config(Path(tmp), port)

        def rss(checkout: Path) -> float:
            samples, code = frame_loop.daemon_rss(config, frames, ("--set", "model.preprocess.backend=numpy"),
                                                  env=checkout_env(checkout))
            assert code == 0, f"edgedet run of {checkout} exited {code}"
            return max(rss for _, rss, _ in frame_loop.steady(samples))

        runs = paired(pairs, lambda: rss(base), lambda: rss(head))
    diffs = [h - b for b, h in runs]
    print("| steady RSS, MQTT on, backend numpy | base MB (median) | head MB (median) | head - base, median of pairs "
          "| range | pairs |\n|---|---|---|---|---|---|")
    print(f"| {frames} frames at fps 0 | {statistics.median(b for b, _ in runs):.1f} | "
          f"{statistics.median(h for _, h in runs):.1f} | {statistics.median(diffs):+.1f} | "
          f"{min(diffs):+.1f} to {max(diffs):+.1f} | {pairs} |\n", flush=True)


def compare_cpu_per_frame(base: Path, head: Path, pairs: int, seconds: float = 6.0) -> None:
    import frame_loop

    with tempfile.TemporaryDirectory() as tmp:
        config = frame_loop.bundled_model_config(Path(tmp))
        runs = paired(pairs, lambda: frame_loop.daemon_cpu_per_frame(config, 30.0, seconds, checkout_env(base)),
                      lambda: frame_loop.daemon_cpu_per_frame(config, 30.0, seconds, checkout_env(head)))
    diffs = [h[0] - b[0] for b, h in runs]
    print("| CPU per frame, 30 fps source, bundled model, MQTT off | base ms (median) | head ms (median) "
          "| head - base, median of pairs | range | pairs |\n|---|---|---|---|---|---|")
    print(f"| {seconds:.0f} s windows | {statistics.median(b[0] for b, _ in runs):.3f} | "
          f"{statistics.median(h[0] for _, h in runs):.3f} | {statistics.median(diffs):+.3f} | "
          f"{min(diffs):+.3f} to {max(diffs):+.3f} | {pairs} |\n", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--head", type=Path, default=HERE.parent)
    parser.add_argument("--models", type=Path, default=SHARED)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--frames-v2", type=int, default=600)
    parser.add_argument("--frames-v1", type=int, default=4000)
    parser.add_argument("--overlap", action="store_true", help="also the overlapped loop, simulated accelerator")
    parser.add_argument("--memory", action="store_true", help="the steady RSS with MQTT on, instead")
    parser.add_argument("--cpu-per-frame", action="store_true",
                        help="the CPU time per frame of `edgedet run` at a 30 fps source, instead")
    args = parser.parse_args()
    if args.cpu_per_frame:
        compare_cpu_per_frame(args.base.resolve(), args.head.resolve(), args.pairs)
        return 0
    if args.memory:
        compare_memory(args.base.resolve(), args.head.resolve(), args.pairs)
        return 0
    runs = [("mobilenet_v2_1.0_224_quant.tflite", args.frames_v2),
            ("mobilenet_v1_0.25_128_quant.tflite", args.frames_v1)]
    print("| model | base fps (median) | head fps (median) | head/base, median of pairs | range | pairs |")
    print("|---|---|---|---|---|---|")
    for name, frames in runs:
        model = args.models / name
        if not model.is_file():
            print(f"skip {name}: not in {args.models}")
            continue
        runs = paired(args.pairs, lambda m=model, n=frames: loop_fps(args.base.resolve(), m, n),
                      lambda m=model, n=frames: loop_fps(args.head.resolve(), m, n))
        base, head = [b for b, _ in runs], [h for _, h in runs]
        ratios = [h / b for b, h in runs]
        print(f"| {model.stem} | {statistics.median(base):.1f} | {statistics.median(head):.1f} | "
              f"{statistics.median(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f} | {args.pairs} |", flush=True)
    if args.overlap:
        model = args.models / "mobilenet_v2_1.0_224_quant.tflite"
        print("\n| SIMULATED invoke | base fps / age - invoke (medians) | head fps / age - invoke (medians) | "
              "head/base fps, median of pairs | range | pairs |")
        print("|---|---|---|---|---|---|")
        for invoke_s in (0.0025, 0.001):
            pairs = paired(args.pairs, lambda s=invoke_s: overlapped(args.base.resolve(), model, s),
                           lambda s=invoke_s: overlapped(args.head.resolve(), model, s))
            sims = {"base": [b for b, _ in pairs], "head": [h for _, h in pairs]}
            ratios = [h[0] / b[0] for b, h in pairs]
            cells = [f"{statistics.median(r[0] for r in sims[k]):.1f} / {statistics.median(r[1] for r in sims[k]):.3f}"
                     " ms" for k in ("base", "head")]
            print(f"| {invoke_s * 1e3:.1f} ms | {cells[0]} | {cells[1]} | {statistics.median(ratios):.3f} | "
                  f"{min(ratios):.3f}-{max(ratios):.3f} | {args.pairs} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
