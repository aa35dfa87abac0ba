"""``edgedet bench``: latency, size, cost and accuracy of TFLite models on this machine, side by side.

Each model is loaded as the daemon loads it, through :class:`edgedet.model.classifier.Classifier` (same
runtime selection, Edge TPU delegate, labels and preprocessing; ``fallback: fail``, so a bench never quietly
measures the CPU in place of the Edge TPU). ``init_ms`` is the Classifier's load + allocate time and
``first_inference_ms`` its first invoke (on a neutral grey frame; on the Edge TPU it includes the model
upload).

Timing then follows TensorFlow Lite's ``benchmark_model``: the input tensor is filled once with a real image
(``--image``, else the first ``--images`` image, else ``cat.bmp`` beside the model) preprocessed exactly as the
daemon does (timing can depend on the data, so never a blank tensor), ``--warmup`` invokes are run and
reported apart, then ``interpreter.invoke()`` alone is timed with ``time.perf_counter_ns`` for at least
``--runs`` runs and at least ``--min-secs`` seconds. Statistics are over those per-invoke times.

``bench_main(argv) -> int`` is the CLI entry: 0 when every model ran, 2 when any failed (the others still
run; each failure is one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import ValidationError

from edgedet import __version__
from edgedet.errors import ConfigError, EdgedetError, ImageError, LabelsError, ModelError
from edgedet.model.classifier import STAGES, Classifier
from edgedet.model.config import ModelConfig
from edgedet.model.graph import inspect_graph
from edgedet.model.preprocess import load_image
from edgedet.model.runtime import cpu_count
from edgedet.model.tflite_file import read_tflite
from edgedet.timefmt import iso_utc

DEFAULT_IMAGE_NAMES = ("cat.bmp",)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises one-line ConfigErrors instead of printing usage and calling sys.exit."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise ConfigError(message, where="edgedet bench", fix="see 'edgedet bench --help'")


def _whole_number(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    return parse


_positive_int = _whole_number(1)
_non_negative_int = _whole_number(0)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _edgetpu_device(text: str) -> str:
    try:
        return ModelConfig(edgetpu_device=text).edgetpu_device  # the daemon's own check of the device string
    except ValidationError as err:
        raise argparse.ArgumentTypeError(err.errors()[0]["msg"]) from None


def _thread_list(text: str) -> list[int]:
    return [_positive_int(part.strip()) for part in text.split(",") if part.strip()] or [1]


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="edgedet bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path, metavar="MODEL", help=".tflite files")
    parser.add_argument("--runs", type=_positive_int, default=50, help="minimum timed invokes (default 50)")
    parser.add_argument(
        "--warmup", type=_non_negative_int, default=5, help="untimed invokes first (default 5)"
    )
    parser.add_argument(
        "--min-secs",
        type=_non_negative_float,
        default=1.0,
        help="keep timing until this many seconds have passed (default 1)",
    )
    parser.add_argument(
        "--threads", type=_thread_list, default=[1], help="comma list, e.g. 1,2,4 (default 1)"
    )
    parser.add_argument("--delegate", choices=("cpu", "edgetpu"), default="cpu")
    parser.add_argument(
        "--edgetpu-device", type=_edgetpu_device, default="usb", help="usb, usb:N, pci, pci:N (default usb)"
    )
    parser.add_argument(
        "--image",
        type=Path,
        help="input image for timing (default: the first --images image, else cat.bmp beside the model)",
    )
    parser.add_argument(
        "--images", type=Path, help="accuracy set: folder of label folders, or a CSV file,label"
    )
    parser.add_argument(
        "--labels",
        type=Path,
        help="labels file (default: the model's embedded labels, sidecar, or NAME_labels.txt/labels.txt beside it)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    output.add_argument("--csv", action="store_true", help="print one CSV row per model and setting")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="write a chart (needs matplotlib)")
    parser.add_argument("--budget-ms", type=_positive_float, help="name the most accurate model within it")
    parser.add_argument(
        "--pipeline", action="store_true", help="frame-loop benchmark (bare vs reference vs edgedet)"
    )
    return parser


# ------------------------------------------------------------------------------------------ input images


def _normalise_name(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def label_ids_for(name: str, labels: list[str]) -> set[int]:
    """Ids whose label equals name, or has it as one of its comma-separated synonyms (case-insensitive).

    A name shared by several classes (ImageNet has two "crane"s) matches all of them: any counts as right.
    """
    wanted = _normalise_name(name)
    exact = {i for i, label in enumerate(labels) if _normalise_name(label) == wanted}
    if exact:
        return exact
    return {
        i for i, label in enumerate(labels) if wanted in (_normalise_name(part) for part in label.split(","))
    }


@dataclass
class LabelledImage:
    path: Path
    label: str


def collect_images(source: Path) -> list[LabelledImage]:
    """A folder of label folders, or a CSV of file,label (paths relative to the CSV's folder)."""
    if source.is_file():
        items = []
        with source.open(newline="", encoding="utf-8") as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row or row[0].startswith("#"):
                    continue
                if len(row) < 2:
                    raise ConfigError(f"line {line_no}: expected file,label", where=source)
                if line_no == 1 and row[0].strip().lower() in {"file", "path", "filename", "image"}:
                    continue  # header row
                path = Path(row[0].strip())
                items.append(
                    LabelledImage(path if path.is_absolute() else source.parent / path, row[1].strip())
                )
    elif source.is_dir():
        items = [
            LabelledImage(file, folder.name)
            for folder in sorted(p for p in source.iterdir() if p.is_dir())
            for file in sorted(folder.iterdir())
            if file.suffix.lower() in IMAGE_SUFFIXES
        ]
    else:
        raise ConfigError("--images path not found", where=source, fix="give a folder or a CSV file")
    if not items:
        raise ConfigError(
            "no labelled images found",
            where=source,
            fix="put images in one sub-folder per label, or list file,label in a CSV",
        )
    return items


# ---------------------------------------------------------------------------------------------- measuring


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


# ------------------------------------------------------------------------------------------- conditions


def cpu_governors() -> list[str]:
    governors = set()
    for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor"):
        try:
            governors.add(path.read_text().strip())
        except OSError:
            continue
    return sorted(governors)


def cpu_temperature_c() -> float | None:
    zones = sorted(Path("/sys/class/thermal").glob("thermal_zone*"))
    # Prefer a zone named for the CPU/SoC (the Pi's is "cpu-thermal"); else the first readable one.
    zones.sort(key=lambda z: 0 if re.search(r"cpu|soc|x86_pkg", _read(z / "type") or "") else 1)
    for zone in zones:
        raw = _read(zone / "temp")
        if raw and raw.lstrip("-").isdigit():
            return int(raw) / 1000
    return None


def pi_throttling() -> dict[str, Any] | None:
    """`vcgencmd get_throttled` on a Raspberry Pi: bit 0 under-voltage, 1 freq capped, 2 throttled, 3 soft
    temperature limit; bits 16-19 the same "has occurred since boot". None where vcgencmd is absent."""
    tool = shutil.which("vcgencmd")
    if not tool:
        return None
    try:
        text = subprocess.run([tool, "get_throttled"], capture_output=True, text=True, timeout=5).stdout
        value = int(text.strip().split("=")[1], 16)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None
    names = ("under_voltage", "frequency_capped", "throttled", "soft_temperature_limit")
    return {
        "raw": hex(value),
        "now": [n for i, n in enumerate(names) if value >> i & 1],
        "since_boot": [n for i, n in enumerate(names) if value >> (16 + i) & 1],
    }


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def conditions_snapshot() -> dict[str, Any]:
    return {"temperature_c": cpu_temperature_c(), "throttling": pi_throttling()}


# -------------------------------------------------------------------------------------------- one model


@dataclass
class Setting:
    model: Path
    threads: int


@dataclass
class RunContext:
    runs: int
    warmup: int
    min_secs: float
    delegate: str
    edgetpu_device: str
    image: Path | None
    images: list[LabelledImage] | None
    labels: Path | None

    @property
    def first_image(self) -> Path | None:
        return self.images[0].path if self.images else None


def _find_beside(model: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for folder in (model.parent, Path.cwd()):
            if (folder / name).is_file():
                return folder / name
    return None


def accuracy(classifier: Classifier, items: list[LabelledImage]) -> dict[str, Any]:
    """Top-1/top-5 over labelled images, each preprocessed and classified exactly as the daemon does."""
    labels = classifier.labels
    targets: dict[str, set[int]] = {}
    for item in items:
        if item.label not in targets:
            targets[item.label] = label_ids_for(item.label, labels)
            if not targets[item.label]:
                raise LabelsError(
                    f"label {item.label!r} (from {item.path}) matches no label",
                    where=f"{classifier.model_file.path} labels ({classifier.labels_source})",
                    fix="name folders/CSV labels as in the labels file (case does not matter)",
                )
    max_pixels = classifier.config.preprocess.max_image_pixels
    top1 = top5 = 0
    per_label: dict[str, dict[str, Any]] = {}
    confusions: Counter[tuple[str, str]] = Counter()
    for item in items:
        ranked = classifier.infer(load_image(item.path, max_pixels), top_k=5).top_k
        wanted = targets[item.label]
        row = per_label.setdefault(item.label, {"images": 0, "top1": 0, "top5": 0, "predicted": Counter()})
        row["images"] += 1
        if ranked[0].id in wanted:
            top1 += 1
            row["top1"] += 1
        else:
            row["predicted"][ranked[0].label] += 1
            confusions[(item.label, ranked[0].label)] += 1
        if wanted.intersection(c.id for c in ranked):
            top5 += 1
            row["top5"] += 1
    total = len(items)
    return {
        "images": total,
        "top1": top1 / total,
        "top5": top5 / total,
        "per_label": {
            label: {
                "images": row["images"],
                "top1": row["top1"] / row["images"],
                "top5": row["top5"] / row["images"],
                "most_confused_with": row["predicted"].most_common(1)[0][0] if row["predicted"] else None,
            }
            for label, row in sorted(per_label.items())
        },
        "confusions": [{"true": t, "predicted": p, "count": n} for (t, p), n in confusions.most_common(10)],
    }


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
    image_path = context.image or context.first_image or _find_beside(model, DEFAULT_IMAGE_NAMES)
    if image_path is None:
        raise ImageError("no input image", where=model, fix="pass --image FILE (a real photo)")

    rss_scope = "model" if _reset_peak_rss() else "process"
    config = ModelConfig(path=model, labels=context.labels, num_threads=setting.threads,
                         delegate=context.delegate, edgetpu_device=context.edgetpu_device, fallback="fail")
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
        # On the Edge TPU the first invoke uploads the model's parameters to the device; that one-time cost
        # is first inference minus a steady-state invoke, kept out of the latency statistics.
        "edgetpu_upload_ms": max(first_ms - stats["p50"], 0.0) if delegate == "edgetpu" else None,
        "accuracy": None,
        "labels": classifier.labels_source,
        "warnings": warnings,
    }
    if context.images is not None:
        result["accuracy"] = accuracy(classifier, context.images)
    result["peak_rss_mb"] = peak_rss_mb()
    result["peak_rss_scope"] = rss_scope
    return result


# --------------------------------------------------------------------------------------------- reporting


def budget_choice(results: list[dict[str, Any]], budget_ms: float) -> dict[str, Any]:
    """The most accurate setting whose median fits the budget (measured top-1; else the largest MACs)."""
    fitting = [r for r in results if r["latency_ms"]["p50"] <= budget_ms]
    measured = all(r["accuracy"] is not None for r in fitting)
    basis = "measured top-1" if measured else "MACs (no --images: larger is usually more accurate)"

    def merit(r: dict[str, Any]) -> tuple[float, float]:
        primary = r["accuracy"]["top1"] if measured else (r["macs"] or 0)
        return (primary, -r["latency_ms"]["p50"])

    best = max(fitting, key=merit) if fitting else None
    return {
        "budget_ms": budget_ms,
        "basis": basis,
        "model": best["model"] if best else None,
        "threads": best["threads"] if best else None,
        "p50_ms": best["latency_ms"]["p50"] if best else None,
    }


def sorted_with_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ordered = sorted(results, key=lambda r: r["latency_ms"]["p50"])
    if ordered:
        fastest = ordered[0]["latency_ms"]["p50"]
        for r in ordered:
            r["relative_to_fastest"] = r["latency_ms"]["p50"] / fastest if fastest > 0 else None
    return ordered


def _fmt(value: float | None, pattern: str, missing: str = "-") -> str:
    return missing if value is None else format(value, pattern)


def _millions(count: int | None) -> float | None:
    return None if count is None else count / 1e6


def render_table(report: dict[str, Any]) -> str:
    header = (
        f"{'model':<40} {'thr':>3} {'dlg':<7} {'MB':>5} {'Mparam':>6} {'MMAC':>7} {'init':>7} "
        f"{'first':>7} {'p50':>7} {'mean±std':>13} {'p99':>7} {'x':>5} {'top1':>5} {'top5':>5} {'RSS':>5}"
    )
    lines = [header, "-" * len(header)]
    for r in report["results"]:
        lat = r["latency_ms"]
        acc = r["accuracy"] or {}
        lines.append(
            f"{r['model'][:40]:<40} {r['threads']:>3} {r['delegate']:<7} {r['file_bytes'] / 1e6:>5.2f} "
            f"{_fmt(_millions(r['params']), '6.2f'):>6} {_fmt(_millions(r['macs']), '7.1f'):>7} "
            f"{r['init_ms']:>7.1f} {r['first_inference_ms']:>7.2f} {lat['p50']:>7.2f} "
            f"{lat['mean']:>6.2f}±{lat['std']:<6.2f} {lat['p99']:>7.2f} "
            f"{_fmt(r['relative_to_fastest'], '.2f'):>5} "
            f"{_fmt(acc.get('top1') and 100 * acc['top1'], '5.1f'):>5} "
            f"{_fmt(acc.get('top5') and 100 * acc['top5'], '5.1f'):>5} {_fmt(r['peak_rss_mb'], '5.0f'):>5}"
        )
    lines.append(
        "times in ms (count/min/p90/max in --json); x = median relative to the fastest; RSS = peak MB"
    )
    for r in report["results"]:
        if r.get("edgetpu_upload_ms") is not None:
            lines.append(
                f"{r['model']}: Edge TPU model upload ~{r['edgetpu_upload_ms']:.1f} ms (first invoke)"
            )
        for c in (r["accuracy"] or {}).get("confusions", [])[:3]:
            lines.append(f"{r['model']}: '{c['true']}' taken for '{c['predicted']}' x{c['count']}")
    budget = report.get("budget")
    if budget:
        choice = (
            f"{budget['model']} ({budget['threads']} threads, p50 {budget['p50_ms']:.2f} ms)"
            if budget["model"]
            else "none of the models"
        )
        lines.append(f"budget {budget['budget_ms']} ms: {choice} fits, by {budget['basis']}")
    conditions = report["conditions"]
    lines.append(
        f"conditions: governor {','.join(conditions['cpu_governors']) or 'unknown'}, "
        f"temperature {_fmt(conditions['before']['temperature_c'], '.1f')} -> "
        f"{_fmt(conditions['after']['temperature_c'], '.1f')} °C"
        + (
            f", throttling {conditions['after']['throttling']['raw']}"
            if conditions["after"]["throttling"]
            else ""
        )
    )
    return "\n".join(lines)


CSV_FIELDS = (
    "model",
    "threads",
    "delegate",
    "runtime",
    "runtime_version",
    "file_bytes",
    "params",
    "macs",
    "input_shape",
    "input_dtype",
    "init_ms",
    "first_inference_ms",
    "warmup_mean_ms",
    "count",
    "mean",
    "std",
    "min",
    "p50",
    "p90",
    "p99",
    "max",
    "relative_to_fastest",
    "top1",
    "top5",
    "edgetpu_upload_ms",
    "peak_rss_mb",
)


def render_csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in report["results"]:
        row = {k: r.get(k) for k in CSV_FIELDS}
        row.update(r["latency_ms"])
        row["input_shape"] = "x".join(str(d) for d in r["input_shape"])
        row["top1"] = r["accuracy"]["top1"] if r["accuracy"] else None
        row["top5"] = r["accuracy"]["top5"] if r["accuracy"] else None
        writer.writerow(row)
    return buffer.getvalue()


def write_plot(report: dict[str, Any], target: Path) -> None:
    """Accuracy against median latency with the Pareto frontier (with --images), and one bar panel per
    measure the report has: no panel is drawn for a measure that is missing."""
    from edgedet.pareto import draw_pareto, pyplot, save

    plt = pyplot()
    results = report["results"]
    names = [f"{r['model'].removesuffix('.tflite')} t{r['threads']}" for r in results]
    bars = [("median latency (ms)", [r["latency_ms"]["p50"] for r in results])]
    for key, title in (("macs", "MACs (millions)"), ("params", "parameters (millions)")):
        if all(r[key] is not None for r in results):  # None for Edge TPU-compiled models
            bars.append((title, [r[key] / 1e6 for r in results]))
    scored = [i for i, r in enumerate(results) if r["accuracy"] is not None]
    panels = len(bars) + (1 if scored else 0)
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 3 + 0.5 * len(results)), squeeze=False)
    axes = list(axes[0])
    if scored:
        draw_pareto(axes.pop(0), [names[i] for i in scored], [results[i]["latency_ms"]["p50"] for i in scored],
                    [100 * results[i]["accuracy"]["top1"] for i in scored], "median latency (ms)")
    for axis, (title, values) in zip(axes, bars):
        axis.barh(names, values, color="tab:blue")
        axis.set_title(title)
        axis.invert_yaxis()  # fastest at the top, as in the table
    figure.suptitle("edgedet bench")
    figure.tight_layout()
    save(figure, target, plt)


# --------------------------------------------------------------------------------------------------- CLI


def run_pipeline_benchmark(args: argparse.Namespace) -> int:
    """``--pipeline``: bare invoke vs the TFLite RPi example's loop vs edgedet's frame loop, side by side."""
    from edgedet.pipeline_bench import print_table, run

    models = [Path(m) for m in args.models]
    for model in models:
        read_tflite(model).validate_classifier()
    results = run(models, rounds=3, seconds=max(1.0, float(args.min_secs or 4.0)), soak_frames=0)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print_table(results)
    return 0


def _progress(total: int) -> Any:
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="setting", file=sys.stderr, leave=False)


def run_bench(args: argparse.Namespace, *, on_error: Callable[[EdgedetError], None]) -> dict[str, Any]:
    images = collect_images(args.images) if args.images is not None else None
    context = RunContext(
        args.runs,
        args.warmup,
        args.min_secs,
        args.delegate,
        args.edgetpu_device,
        args.image,
        images,
        args.labels,
    )
    governors = cpu_governors()
    conditions: dict[str, Any] = {"cpu_governors": governors, "before": conditions_snapshot(), "warnings": []}
    if governors and governors != ["performance"]:
        conditions["warnings"].append(
            f"CPU governor is {','.join(governors)}, not performance: latency varies "
            "with the clock (sudo cpupower frequency-set -g performance)"
        )
    elif not governors:
        conditions["warnings"].append("CPU governor unknown (no cpufreq in /sys)")
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
        },
        "conditions": conditions,
        "results": sorted_with_ratios(results),
        "errors": errors,
    }
    if args.budget_ms is not None:
        report["budget"] = budget_choice(results, args.budget_ms)
    return report


def bench_main(argv: list[str] | None = None) -> int:
    """``edgedet bench ...``: prints the report; 0 if all models ran, 2 on any error (one line each)."""

    def complain(err: EdgedetError) -> None:
        print(f"edgedet: {err}", file=sys.stderr)

    try:
        args = build_parser().parse_args(argv)
        if args.pipeline:
            return run_pipeline_benchmark(args)
        if not args.models:
            raise ConfigError("no model given", where="edgedet bench", fix="edgedet bench MODEL.tflite [...]")
        report = run_bench(args, on_error=complain)
        for warning in report["conditions"]["warnings"]:
            print(f"edgedet: warning: {warning}", file=sys.stderr)
        for result in report["results"]:
            for warning in result["warnings"]:
                print(f"edgedet: warning: {result['model']}: {warning}", file=sys.stderr)
        if args.json:
            print(json.dumps(report, indent=2))
        elif args.csv:
            sys.stdout.write(render_csv(report))
        elif report["results"]:
            print(render_table(report))
        if args.plot and report["results"]:
            write_plot(report, args.plot)
    except EdgedetError as err:
        complain(err)
        return err.exit_code
    return 2 if report["errors"] else 0
