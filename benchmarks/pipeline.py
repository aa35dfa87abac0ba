#!/usr/bin/env python3
"""Frame-loop benchmark (targets below): (a) bare invoke, (b) the TFLite RPi example's loop, (c) edgedet run.

    python benchmarks/pipeline.py [--models DIR] [--rounds 3] [--seconds 4] [--soak-frames 20000]

Targets: (c)/(a) >= 0.95 for mobilenet_v2_1.0_224_quant and >= 0.8 for mobilenet_v1_0.25_128_quant;
(c)/(b) >= 1.2 for both; frame age p50 <= invoke p50 + 3 ms for v2; RSS <= 150 MB, growing <= 2 MB over
20,000 frames. Same engine as `edgedet bench --pipeline`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edgedet.bench.pipeline import print_table, run

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EDGEDET_SHARED_MODELS", HERE.parents[1] / "shared" / "models"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=SHARED)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--soak-frames", type=int, default=20000,
                        help="frames of the memory soak (`edgedet run` in its own process) for v1 0.25")
    parser.add_argument("--soak-frames-v2", type=int, default=3000, help="the same for v2 (20 ms a frame)")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "pipeline.json")
    args = parser.parse_args()
    models = [args.models / "mobilenet_v2_1.0_224_quant.tflite", args.models / "mobilenet_v1_0.25_128_quant.tflite"]
    missing = [m for m in models if not m.is_file()]
    if missing:
        print(f"benchmarks/pipeline.py: models not found: {', '.join(map(str, missing))}")
        return 2
    soak = {models[0].name: args.soak_frames_v2, models[1].name: args.soak_frames}
    results = run(models, args.rounds, args.seconds, soak, args.json)
    print_table(results)
    for r in results:
        v2 = "v2" in r["model"]
        target = 0.95 if v2 else 0.8
        checks = [f"(c)/(a) {r['ratio_edgedet_vs_bare']:.3f} {'>=' if r['ratio_edgedet_vs_bare'] >= target else '<'}"
                  f" {target}",
                  f"(c)/(b) {r['ratio_edgedet_vs_reference']:.3f} "
                  f"{'>=' if r['ratio_edgedet_vs_reference'] >= 1.2 else '<'} 1.2"]
        if v2:
            ok = r["frame_age_p50_ms"] <= r["invoke_p50_ms"] + 3
            checks.append(f"age p50 {r['frame_age_p50_ms']:.2f} {'<=' if ok else '>'} invoke p50 + 3 = "
                          f"{r['invoke_p50_ms'] + 3:.2f} ms")
        soak = r.get("soak") or {}
        if soak.get("rss_mb_peak") is not None:
            checks.append(f"daemon RSS peak {soak['rss_mb_peak']} MB {'<=' if soak['rss_mb_peak'] <= 150 else '>'} 150,"
                          f" growth {soak['rss_growth_mb']} MB over {soak['frames']} frames")
        print(f"{r['model']}: " + "; ".join(checks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
