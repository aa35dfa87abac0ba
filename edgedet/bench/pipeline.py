"""Frame-loop throughput, side by side in one process (``edgedet bench --pipeline``, benchmarks/pipeline.py).

For each model, in interleaved rounds so machine noise hits every variant alike:

(a) ``bare``: ``interpreter.invoke()`` in a loop on a prepared tensor: the ceiling;
(b) ``reference``: the TFLite Raspberry Pi example's sequential loop: capture -> PIL resize (ANTIALIAS) ->
    set_tensor -> invoke -> dequantize + top-k, one frame after the other, on one thread;
(c) ``edgedet``: the daemon's FrameLoop (capture thread + latest-frame slot) on the synthetic 640x480 source
    at fps 0, with ``model.num_threads: auto`` — and, to show why auto is what it is, with all cores.

Reported: frames per second of each, the ratios (c)/(a) and (c)/(b), the frame age p50 against the invoke
p50, and resident memory at the start and end of a long run of (c).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from edgedet.config import build_config
from edgedet.frames import open_source
from edgedet.loop import FrameLoop, auto_threads
from edgedet.model.classifier import Classifier, dequantize
from edgedet.model.config import ModelConfig
from edgedet.model.runtime import cpu_count, make_interpreter, select_runtime

WIDTH, HEIGHT = 640, 480


def _synthetic(fps: float = 0.0):
    cfg = build_config({"source": {"type": "synthetic", "width": WIDTH, "height": HEIGHT, "fps": fps,
                                   "pattern": "gradient"}}, "bench")
    return open_source(cfg.source)


def bare_fps(interpreter: Any, seconds: float) -> tuple[float, list[float]]:
    details = interpreter.get_input_details()[0]
    tensor = np.random.default_rng(0).integers(0, 256, details["shape"], dtype=np.uint8).astype(details["dtype"])
    interpreter.set_tensor(details["index"], tensor)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - t0)
    return len(times) / sum(times), times


def reference_fps(interpreter: Any, seconds: float) -> float:
    """The TFLite Raspberry Pi example's loop (classify_picamera.py), frame source swapped for synthetic."""
    source = _synthetic()
    source.open()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    _, height, width, _ = inp["shape"]
    scale, zero = out["quantization"]
    frames = 0
    started = time.perf_counter()
    end = started + seconds
    try:
        while time.perf_counter() < end:
            frame = source.read(5.0)
            image = Image.fromarray(frame.image).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
            interpreter.set_tensor(inp["index"], np.expand_dims(np.asarray(image), 0).astype(inp["dtype"]))
            interpreter.invoke()
            scores = dequantize(np.squeeze(interpreter.get_tensor(out["index"])), scale, zero)
            top = np.argpartition(-scores, 3)[:3]
            _ = sorted(top, key=lambda i: -scores[i])
            frames += 1
    finally:
        source.close()
    return frames / (time.perf_counter() - started)


def edgedet_run(model: Path, threads: Optional[int], seconds: float = 0.0, frames: int = 0) -> dict[str, Any]:
    """The daemon's loop (as `edgedet run` builds it) on the synthetic source at fps 0."""
    cfg = ModelConfig(path=model, num_threads=threads if threads else "auto")
    classifier = Classifier.from_config(cfg, auto_threads=auto_threads())
    loop = FrameLoop(classifier, _synthetic(), [], duration_s=seconds, max_frames=frames)
    started = time.perf_counter()
    stats = loop.run()
    elapsed = time.perf_counter() - started
    return {"fps": stats.frames_processed / elapsed, "threads": classifier.num_threads, "stats": stats.as_dict()}


def bench_model(model: Path, rounds: int, seconds: float, soak_frames: int) -> dict[str, Any]:
    runtime = select_runtime("auto")
    auto = auto_threads()
    cores = cpu_count()
    bare_auto = make_interpreter(model, runtime, auto)
    bare_all = make_interpreter(model, runtime, cores)
    reference = make_interpreter(model, runtime)  # the example does not set a thread count
    samples: dict[str, list[float]] = {k: [] for k in ("bare", "bare_all_cores", "reference", "edgedet",
                                                         "edgedet_all_cores")}
    invoke_times: list[float] = []
    ages: list[float] = []
    inference_p50: list[float] = []
    for _ in range(rounds):
        fps, times = bare_fps(bare_auto, seconds)
        samples["bare"].append(fps)
        invoke_times += times
        samples["bare_all_cores"].append(bare_fps(bare_all, seconds)[0])
        samples["reference"].append(reference_fps(reference, seconds))
        run = edgedet_run(model, None, seconds=seconds)
        samples["edgedet"].append(run["fps"])
        ages.append(run["stats"]["latency_ms"]["frame_age"]["p50"])
        inference_p50.append(run["stats"]["latency_ms"]["inference"]["p50"])
        if cores > 1:
            samples["edgedet_all_cores"].append(edgedet_run(model, cores, seconds=seconds)["fps"])
    med = {k: statistics.median(v) for k, v in samples.items() if v}
    soak = soak_daemon(model, soak_frames) if soak_frames else None
    result = {
        "model": model.name, "runtime": runtime.as_dict(), "cores": cores, "auto_threads": auto,
        "rounds": rounds, "seconds_per_variant": seconds,
        "fps": {k: round(v, 2) for k, v in med.items()},
        "ratio_edgedet_vs_bare": round(med["edgedet"] / med["bare"], 3),
        "ratio_edgedet_vs_reference": round(med["edgedet"] / med["reference"], 3),
        "ratio_edgedet_all_cores_vs_auto": round(med["edgedet_all_cores"] / med["edgedet"], 3)
        if "edgedet_all_cores" in med else None,
        "invoke_p50_ms": round(statistics.median(invoke_times) * 1e3, 3),
        "edgedet_inference_p50_ms": round(statistics.median(inference_p50), 3),
        "frame_age_p50_ms": round(statistics.median(ages), 3),
    }
    if soak is not None:
        result["soak"] = soak
    return result


def soak_daemon(model: Path, frames: int) -> dict[str, Any]:
    """`edgedet run` as its own process for FRAMES frames; its RSS is sampled from /proc every 50 ms."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text("publish:\n  console: false\n")
        stats_file = Path(tmp) / "stats.json"
        cmd = [sys.executable, "-m", "edgedet", "run", "--config", str(config), "--set", f"model.path={model}",
               "--set", "source.type=synthetic", "--set", f"source.width={WIDTH}", "--set",
               f"source.height={HEIGHT}", "--set", "source.fps=0", "--max-frames", str(frames),
               "--stats-file", str(stats_file)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        page = os.sysconf("SC_PAGE_SIZE")
        samples: list[tuple[float, float]] = []
        started = time.monotonic()
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/statm") as f:
                    rss = int(f.read().split()[1]) * page / 2**20
                if rss > 0:  # an exited process (zombie) reads as 0
                    samples.append((time.monotonic() - started, rss))
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.05)
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    processed = stats.get("frames_processed", 0)
    # "early" = the first sample after a tenth of the run (model loaded, buffers allocated, caches warm)
    total = samples[-1][0] if samples else 0.0
    early = next((rss for t, rss in samples if t >= total / 10), None)
    final = samples[-1][1] if samples else None
    return {"frames": processed, "exit_code": proc.returncode, "rss_mb_peak": round(max(r for _, r in samples), 1)
            if samples else None, "rss_mb_early": round(early, 1) if early else None,
            "rss_mb_end": round(final, 1) if final else None,
            "rss_growth_mb": round(final - early, 1) if early and final else None,
            "fps_out": stats.get("fps_out")}


def print_table(results: list[dict[str, Any]]) -> None:
    print("| model | (a) bare invoke fps | (b) reference loop fps | (c) edgedet run fps | (c)/(a) | (c)/(b) | "
          "edgedet, all cores / auto | invoke p50 | frame age p50 | daemon RSS early -> end |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        soak = r.get("soak") or {}
        rss = (f"{soak.get('rss_mb_early')} -> {soak.get('rss_mb_end')} MB, peak {soak.get('rss_mb_peak')} "
               f"({soak.get('frames')} frames)") if soak else "-"
        print(f"| {r['model']} | {r['fps']['bare']:.1f} | {r['fps']['reference']:.1f} | {r['fps']['edgedet']:.1f} | "
              f"{r['ratio_edgedet_vs_bare']:.3f} | {r['ratio_edgedet_vs_reference']:.3f} | "
              f"{r['ratio_edgedet_all_cores_vs_auto']} | {r['invoke_p50_ms']:.2f} ms | "
              f"{r['frame_age_p50_ms']:.2f} ms | {rss} |")


def run(models: list[Path], rounds: int = 3, seconds: float = 4.0, soak_frames: int | dict[str, int] = 20000,
        json_path: Optional[Path] = None) -> list[dict[str, Any]]:
    def frames_for(model: Path) -> int:
        return soak_frames.get(model.name, 0) if isinstance(soak_frames, dict) else soak_frames

    results = [bench_model(m, rounds, seconds, frames_for(m)) for m in models]
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1))
    return results
