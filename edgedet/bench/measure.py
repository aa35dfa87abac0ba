"""Measuring one model at one thread count, and a whole ``edgedet bench`` run.

Each model is loaded as the daemon loads it, through :class:`edgedet.model.classifier.Classifier` (same
runtime selection, Edge TPU delegate, labels and preprocessing; ``fallback: fail``, so a bench never quietly
measures the CPU in place of the Edge TPU). ``init_ms`` is the Classifier's load + allocate time and
``first_inference_ms`` its first invoke (on a neutral grey frame; on the Edge TPU it includes the model
upload).

Timing goes through ``Classifier.infer`` and nothing else: it is the one timed path that ``edgedet run``,
``edgedet classify`` and ``edgedet bench`` share, so the three report the same stages measured the same way.
The frame is a real image (``--image``, else the first ``--images`` image, else ``cat.bmp`` beside the model;
timing can depend on the data, so never a blank tensor), decoded once; ``--warmup`` frames are run and
reported apart, then at least ``--runs`` frames for at least ``--min-secs`` seconds. ``latency_ms`` holds the
statistics of the ``inference`` stage (set_tensor + invoke, as TensorFlow Lite's ``benchmark_model`` times);
``stage_p50_ms`` the median of every stage (preprocess, inference, postprocess).
"""

from __future__ import annotations

import contextlib
import logging
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from edgedet import __version__
from edgedet.bench.conditions import conditions_snapshot, cpu_governors, governor_warnings
from edgedet.bench.data import DEFAULT_IMAGE_NAMES, LabelledImage, accuracy, collect_images, find_beside
from edgedet.bench.report import budget_choice, sorted_with_ratios
from edgedet.errors import EdgedetError, ImageError, LabelsError, ModelError
from edgedet.model.classifier import STAGES, Classifier
from edgedet.model.config import ModelConfig, PreprocessConfig
from edgedet.model.graph import inspect_graph
from edgedet.model.preprocess import load_image
from edgedet.model.runtime import cpu_count
from edgedet.model.tflite_file import read_tflite
from edgedet.timefmt import iso_utc


def latency_stats(samples_ms: list[float]) -> dict[str, float | int]:
    values = np.asarray(samples_ms, dtype=np.float64)
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min": float(values.min()),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "max": float(values.max()),
    }


def timed_stages(classifier: Classifier, image: Any, runs: int, min_secs: float) -> dict[str, list[float]]:
    """Per-stage times in ms of ``Classifier.infer`` (the daemon's own timed path): at least ``runs`` frames and
    at least ``min_secs`` seconds in total."""
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    deadline = time.perf_counter() + min_secs
    count = 0
    while count < runs or time.perf_counter() < deadline:
        for stage, value in classifier.infer(image).latency_ms.items():
            samples[stage].append(value)
        count += 1
    return samples


def _reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM, so each model's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
    except (ImportError, OSError):
        return None


@dataclass
class Setting:
    model: Path
    threads: int


@dataclass
class RunContext:
    runs: int
    warmup: int
    min_secs: float
    delegate: Literal["cpu", "edgetpu"]
    edgetpu_device: str
    image: Path | None
    images: list[LabelledImage] | None
    labels: Path | None
    roi: tuple[float, float, float, float] | None = None
    # The accuracy of a model (by sha256) measured at its first thread count: the same interpreter arithmetic
    # at another thread count classifies the same images the same way, so it is not run again.
    accuracy_by_model: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def first_image(self) -> Path | None:
        return self.images[0].path if self.images else None


@contextlib.contextmanager
def _core_warnings() -> Iterator[list[str]]:
    """Collect the inference core's log warnings (labels, fallback) for the report instead of the root log.

    ``edgedet bench`` prints them itself, one ``edgedet: warning:`` line each, and keeps them in --json.
    """
    collected: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            collected.append(record.getMessage())

    logger = logging.getLogger("edgedet.model")
    handler = Collect(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield collected
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def bench_one(setting: Setting, context: RunContext) -> dict[str, Any]:
    """All numbers for one model at one thread count. Raises EdgedetError for a model that cannot run."""
    model = setting.model
    if not model.is_file():
        raise ModelError("model file not found", where=model, fix="check the path")
    model_file = read_tflite(model)
    if model_file.is_edgetpu and context.delegate != "edgetpu":
        raise ModelError(
            "compiled for the Edge TPU; it cannot run on the CPU",
            where=model,
            fix="use --delegate edgetpu, or the model's CPU build (without _edgetpu)",
        )
    graph = inspect_graph(model_file)
    image_path = context.image or context.first_image or find_beside(model, DEFAULT_IMAGE_NAMES)
    if image_path is None:
        raise ImageError("no input image", where=model, fix="pass --image FILE (a real photo)")

    rss_scope = "model" if _reset_peak_rss() else "process"
    config = ModelConfig(path=model, labels=context.labels, num_threads=setting.threads,
                         delegate=context.delegate, edgetpu_device=context.edgetpu_device, fallback="fail",
                         preprocess=PreprocessConfig(roi=context.roi))
    with _core_warnings() as warnings:
        # Loads, allocates (timed: init_ms) and runs the first invoke on a neutral frame (first_invoke_ms).
        classifier = Classifier.from_config(config)
    if context.images is not None and not classifier.labels:
        raise LabelsError("--images needs labels: the model has none embedded and none beside it",
                          where=model, fix="pass --labels FILE")
    image = load_image(image_path, config.preprocess.max_image_pixels)
    warmup = timed_stages(classifier, image, context.warmup, 0.0)["inference"] if context.warmup else []
    stages = timed_stages(classifier, image, context.runs, context.min_secs)
    stats = latency_stats(stages["inference"])
    info = classifier.info
    first_ms = classifier.first_invoke_ms
    if classifier.preprocessor.opencv_missing:
        # the "pre" column is numpy's, and on a Pi with an Edge TPU it can outweigh the invoke; a setting or
        # sidecar that asks for numpy is a choice, not warned about.
        warnings.append("preprocessing ran on numpy: OpenCV is not installed; pip install 'edgedet[opencv]' "
                        "resizes several times faster (README, Performance)")
    delegate = info["delegate"]["active"]
    result: dict[str, Any] = {
        "model": model.name,
        "path": str(model),
        "sha256": model_file.sha256,
        "file_bytes": model_file.size_bytes,
        "params": graph.params,
        "macs": graph.macs,
        "input_shape": info["model"]["input_shape"],
        "input_dtype": info["model"]["input_dtype"],
        "runtime": info["runtime"]["name"],
        "runtime_version": info["runtime"]["version"],
        "delegate": delegate,
        "threads": info["runtime"]["threads"],
        "image": str(image_path),
        "init_ms": classifier.init_ms,
        "first_inference_ms": first_ms,
        "warmup_runs": len(warmup),
        "warmup_mean_ms": float(np.mean(warmup)) if warmup else None,
        "latency_ms": stats,
        "stage_p50_ms": {stage: float(np.percentile(values, 50)) for stage, values in stages.items()},
        "preprocess_backend": info["preprocess"]["backend"],
        # On the Edge TPU the first invoke uploads the model's parameters to the device; that one-time cost
        # is first inference minus a steady-state invoke, kept out of the latency statistics.
        "edgetpu_upload_ms": max(first_ms - stats["p50"], 0.0) if delegate == "edgetpu" else None,
        "accuracy": None,
        "labels": classifier.labels_source,
        "warnings": warnings,
    }
    if context.images is not None:
        measured = context.accuracy_by_model.get(model_file.sha256)
        if measured is None:
            measured = {**accuracy(classifier, context.images), "threads": info["runtime"]["threads"]}
            context.accuracy_by_model[model_file.sha256] = measured
        result["accuracy"] = measured
    result["peak_rss_mb"] = peak_rss_mb()
    result["peak_rss_scope"] = rss_scope
    return result


def _progress(total: int) -> Any:
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="setting", file=sys.stderr, leave=False)


def run_bench(args: Any, *, on_error: Callable[[EdgedetError], None]) -> dict[str, Any]:
    """Every model at every thread count; the report that --json prints. A model that fails is reported
    through ``on_error`` and in ``errors``, and the others still run."""
    images = collect_images(args.images) if args.images is not None else None
    context = RunContext(args.runs, args.warmup, args.min_secs, args.delegate, args.edgetpu_device, args.image,
                         images, args.labels, args.roi)
    governors = cpu_governors()
    conditions: dict[str, Any] = {"cpu_governors": governors, "before": conditions_snapshot(),
                                  "warnings": governor_warnings(governors)}
    settings = [Setting(model, threads) for model in args.models for threads in args.threads]
    results: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    bar = _progress(len(settings))
    failed_models: set[Path] = set()
    for setting in settings:
        if setting.model in failed_models:
            continue
        try:
            results.append(bench_one(setting, context))
        except EdgedetError as err:
            failed_models.add(setting.model)
            errors.append({"model": str(setting.model), "error": str(err)})
            on_error(err)
        finally:
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    conditions["after"] = conditions_snapshot()
    report: dict[str, Any] = {
        "edgedet_version": __version__,
        "created": iso_utc(time.time()),
        "host": {
            "machine": platform.machine(),
            "system": platform.system(),
            "python": platform.python_version(),
            "cpu_count": cpu_count(),
        },
        "options": {
            "runs": args.runs,
            "warmup": args.warmup,
            "min_secs": args.min_secs,
            "threads": args.threads,
            "delegate": args.delegate,
            "images": str(args.images) if args.images else None,
            "roi": list(args.roi) if args.roi else None,
        },
        "conditions": conditions,
        "results": sorted_with_ratios(results),
        "errors": errors,
    }
    if args.budget_ms is not None:
        report["budget"] = budget_choice(results, args.budget_ms)
    return report
