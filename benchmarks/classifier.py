#!/usr/bin/env python3
"""Inference-core overheads, measured side by side in one process (the inference core's targets).

1. preprocess of a 640x480 RGB frame to 224x224 (and 128x128): median, target <= 1.0 ms;
2. the Classifier's inference stage vs a bare ``interpreter.invoke()`` loop on the same model and threads, in
   interleaved rounds so machine noise hits both alike: target within 3 %;
3. (preprocess + postprocess) / invoke for mobilenet_v2_1.0_224_quant: target <= 15 %.

    python benchmarks/classifier.py [--models DIR] [--rounds 15] [--per-round 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from edgedet.model.classifier import Classifier
from edgedet.model.config import ModelConfig
from edgedet.model.runtime import make_interpreter

HERE = Path(__file__).resolve().parent
DEFAULT_MODELS = Path(os.environ.get("EDGEDET_SHARED_MODELS", HERE.parents[1] / "shared" / "models"))


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def bench_model(path: Path, rounds: int, per_round: int, threads: int) -> dict:
    classifier = Classifier.from_config(ModelConfig(path=path, num_threads=threads))
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    # The bare loop gets its own interpreter of the same model and threads (the Classifier's is private).
    interpreter = make_interpreter(path, classifier.runtime, threads)
    tensor = classifier.preprocess(frame).copy()
    input_index = interpreter.get_input_details()[0]["index"]
    interpreter.set_tensor(input_index, tensor)
    for _ in range(5):  # warm caches, resize tables, XNNPACK packing
        classifier.infer(frame)
        interpreter.invoke()
    bare, ours, pre, post = [], [], [], []
    for _ in range(rounds):
        for _ in range(per_round):
            t0 = time.perf_counter()
            interpreter.invoke()
            bare.append(time.perf_counter() - t0)
        for _ in range(per_round):
            stages = classifier.infer(frame).latency_ms
            pre.append(stages["preprocess"] / 1e3)
            ours.append(stages["inference"] / 1e3)
            post.append(stages["postprocess"] / 1e3)
    invoke_p50 = median_ms(ours)
    return {
        "model": path.name, "input": classifier.input_size, "runtime": classifier.info["runtime"],
        "bare_invoke_ms_p50": round(median_ms(bare), 3), "classifier_inference_ms_p50": round(invoke_p50, 3),
        "inference_vs_bare": round(invoke_p50 / median_ms(bare), 4),
        "preprocess_ms_p50": round(median_ms(pre), 3), "postprocess_ms_p50": round(median_ms(post), 3),
        "pre_plus_post_vs_invoke": round((median_ms(pre) + median_ms(post)) / invoke_p50, 4),
        "samples_each": len(bare),
    }


def bench_preprocess_only(out_size: int, runs: int = 500, backend: str = "auto") -> float:
    from edgedet.model.preprocess import InputQuantization, Preprocessor

    pre = Preprocessor(out_size, out_size, InputQuantization.build(np.uint8, 1 / 128, 128, np.array(127.5),
                                                                   np.array(127.5)), backend=backend)
    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for _ in range(20):
        pre(frame)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        pre(frame)
        samples.append(time.perf_counter() - t0)
    return median_ms(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "classifier.json")
    args = parser.parse_args()
    result = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
              "models": []}
    from edgedet.model.preprocess import opencv_resize

    backends = ["opencv", "numpy"] if opencv_resize() is not None else ["numpy"]
    result["preprocess_ms_p50"] = {f"{backend} 640x480->{size}": round(bench_preprocess_only(size, backend=backend), 3)
                                   for backend in backends for size in (224, 128)}
    for name in ("mobilenet_v2_1.0_224_quant.tflite", "mobilenet_v1_0.25_128_quant.tflite"):
        path = args.models / name
        if not path.is_file():
            print(f"skip {name}: not found in {args.models}")
            continue
        for threads in sorted({1, os.cpu_count() or 1}):
            result["models"].append(bench_model(path, args.rounds, args.per_round, threads))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"machine: {result['machine']}")
    for name, value in result["preprocess_ms_p50"].items():
        print(f"preprocess {name}: {value:.3f} ms p50" + (" (target <= 1.0)" if name.endswith("224") else ""))
    print("| model | threads | bare invoke p50 | Classifier inference p50 | ratio (target <= 1.03) | preprocess p50 | "
          "postprocess p50 | (pre+post)/invoke |")
    print("|---|---|---|---|---|---|---|---|")
    for m in result["models"]:
        print(f"| {m['model']} | {m['runtime']['threads']} | {m['bare_invoke_ms_p50']:.3f} ms | "
              f"{m['classifier_inference_ms_p50']:.3f} ms | "
              f"{m['inference_vs_bare']:.3f} | {m['preprocess_ms_p50']:.3f} ms | {m['postprocess_ms_p50']:.3f} ms | "
              f"{m['pre_plus_post_vs_invoke'] * 100:.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
