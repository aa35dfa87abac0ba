"""``edgedet bench``: latency, size, cost and accuracy of TFLite models on this machine, side by side.

Timing follows TensorFlow Lite's ``benchmark_model``: the input tensor is filled once with a real preprocessed
image (timing can depend on the data, so never uninitialised memory), ``--warmup`` invokes are run and
reported apart, then ``invoke()`` alone is timed with ``time.perf_counter_ns`` for at least ``--runs`` runs
and at least ``--min-secs`` seconds. Statistics are over those per-invoke times.

``bench_main(argv) -> int`` is the CLI entry: 0 when every model ran, 2 when any failed (the others still
run; each failure is one line on stderr).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgedet import __version__
from edgedet.errors import ConfigError, DelegateError, EdgedetError, ImageError, LabelsError, ModelError
from edgedet.model.graph import inspect_graph

DEFAULT_IMAGE_NAMES = ("cat.bmp",)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
LABEL_FILE_NAMES = ("labels.txt", "imagenet_labels.txt")
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises one-line ConfigErrors instead of printing usage and calling sys.exit."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise ConfigError(message, where="edgedet bench", fix="see 'edgedet bench --help'")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


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
    parser.add_argument("--edgetpu-device", default="usb", help="usb, usb:N, pci, pci:N (default usb)")
    parser.add_argument(
        "--image", type=Path, help="input image for timing (default: cat.bmp beside the model)"
    )
    parser.add_argument(
        "--images", type=Path, help="accuracy set: folder of label folders, or a CSV file,label"
    )
    parser.add_argument(
        "--labels", type=Path, help="labels file (default: labels.txt/imagenet_labels.txt beside the model)"
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


# ------------------------------------------------------------------------------------------- interpreter


@dataclass
class OpenedModel:
    interpreter: Any
    runtime: str
    runtime_version: str
    delegate: str
    init_ms: float


def _runtime_module() -> tuple[Any, Any, str, str]:
    """(Interpreter class, load_delegate, runtime name, version). To become edgedet.model.runtime's."""
    try:
        from ai_edge_litert import interpreter as litert

        try:
            from importlib.metadata import version

            runtime_version = version("ai-edge-litert")
        except Exception:
            runtime_version = "?"
        return litert.Interpreter, litert.load_delegate, "ai-edge-litert", runtime_version
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime import interpreter as tflr

        return (
            tflr.Interpreter,
            tflr.load_delegate,
            "tflite-runtime",
            getattr(tflite_runtime, "__version__", "?"),
        )
    except ImportError:
        raise ModelError(
            "no TFLite runtime installed", fix="pip install ai-edge-litert (or tflite-runtime)"
        ) from None


def open_model(path: Path, threads: int, delegate: str, edgetpu_device: str = "usb") -> OpenedModel:
    """Load and allocate; the wall time of both is the init time."""
    interpreter_class, load_delegate, runtime, runtime_version = _runtime_module()
    delegates = []
    started = time.perf_counter()
    if delegate == "edgetpu":
        library = EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")
        try:
            # Probe with ctypes first: when load_delegate fails to open the library, ai-edge-litert 2.3's
            # Delegate.__del__ then prints an "Exception ignored" traceback on stderr.
            import ctypes

            ctypes.CDLL(library)
            delegates.append(load_delegate(library, {"device": edgetpu_device}))
        except (ValueError, OSError) as err:
            raise DelegateError(
                f"cannot load the Edge TPU delegate {library} ({err})",
                where=path,
                fix="plug in the Coral and install libedgetpu1-std, or use --delegate cpu",
            ) from None
    try:
        interpreter = interpreter_class(
            model_path=str(path), num_threads=threads, experimental_delegates=delegates or None
        )
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise ModelError(
            f"the runtime cannot load this model ({str(err).splitlines()[0]})", where=path
        ) from None
    init_ms = (time.perf_counter() - started) * 1e3
    return OpenedModel(interpreter, runtime, runtime_version, delegate, init_ms)


# ------------------------------------------------------------------------------------------ input images


def load_rgb(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise ImageError("image not found", where=path) from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ImageError(
            f"cannot decode the image ({err})", where=path, fix="use a JPEG/PNG/BMP file"
        ) from None


def preprocess(image: Any, input_detail: dict[str, Any]) -> np.ndarray:
    """Resize the whole image (bilinear) to the input size; uint8 raw, int8 shifted, float to [-1, 1].

    Stand-in until edgedet.model.classifier.Classifier.preprocess is in main.
    """
    from PIL import Image

    _, height, width, _ = (int(d) for d in input_detail["shape"])
    pixels = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.uint8)
    dtype = np.dtype(input_detail["dtype"])
    if dtype == np.uint8:
        tensor = pixels
    elif dtype == np.int8:
        tensor = (pixels.astype(np.int16) - 128).astype(np.int8)
    else:
        tensor = ((pixels.astype(np.float32) - 127.5) / 127.5).astype(dtype)
    return tensor[np.newaxis, ...]


def read_labels(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LabelsError("labels file not found", where=path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise LabelsError(f"cannot read the labels ({err})", where=path) from None
    # "0 background" / "0: background" prefixes (Coral style) are ids, not part of the name.
    labels = [re.sub(r"^\s*\d+[:\s]\s*", "", line).strip() for line in lines]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise LabelsError("labels file is empty", where=path)
    return labels


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


def timed_invokes(invoke: Callable[[], Any], runs: int, min_secs: float) -> list[float]:
    """Per-invoke times in ms: at least `runs` of them and at least `min_secs` seconds in total."""
    samples: list[float] = []
    deadline = time.perf_counter() + min_secs
    clock = time.perf_counter_ns
    while len(samples) < runs or time.perf_counter() < deadline:
        start = clock()
        invoke()
        samples.append((clock() - start) / 1e6)
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


def _find_beside(model: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for folder in (model.parent, Path.cwd()):
            if (folder / name).is_file():
                return folder / name
    return None


def accuracy(
    opened: OpenedModel, items: list[LabelledImage], labels: list[str], where: Path
) -> dict[str, Any]:
    interpreter = opened.interpreter
    input_detail = interpreter.get_input_details()[0]
    output_index = interpreter.get_output_details()[0]["index"]
    targets: dict[str, set[int]] = {}
    for item in items:
        if item.label not in targets:
            targets[item.label] = label_ids_for(item.label, labels)
            if not targets[item.label]:
                raise LabelsError(
                    f"label {item.label!r} (from {item.path}) matches no label",
                    where=where,
                    fix="name folders/CSV labels as in the labels file (case does not matter)",
                )
    top1 = top5 = 0
    per_label: dict[str, dict[str, Any]] = {}
    confusions: Counter[tuple[str, str]] = Counter()
    for item in items:
        interpreter.set_tensor(input_detail["index"], preprocess(load_rgb(item.path), input_detail))
        interpreter.invoke()
        scores = interpreter.get_tensor(output_index).reshape(-1)
        ranked = [int(i) for i in np.argsort(-scores.astype(np.float64), kind="stable")[:5]]
        wanted = targets[item.label]
        row = per_label.setdefault(item.label, {"images": 0, "top1": 0, "top5": 0, "predicted": Counter()})
        row["images"] += 1
        if ranked[0] in wanted:
            top1 += 1
            row["top1"] += 1
        else:
            predicted = labels[ranked[0]] if ranked[0] < len(labels) else str(ranked[0])
            row["predicted"][predicted] += 1
            confusions[(item.label, predicted)] += 1
        if wanted.intersection(ranked):
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


def bench_one(setting: Setting, context: RunContext) -> dict[str, Any]:
    """All numbers for one model at one thread count. Raises EdgedetError for a model that cannot run."""
    model = setting.model
    if not model.is_file():
        raise ModelError("model file not found", where=model, fix="check the path")
    graph = inspect_graph(model)
    if graph.compiled_for_edgetpu and context.delegate != "edgetpu":
        raise ModelError(
            "compiled for the Edge TPU; it cannot run on the CPU",
            where=model,
            fix="use --delegate edgetpu, or the model's CPU build (without _edgetpu)",
        )
    image_path = context.image or _find_beside(model, DEFAULT_IMAGE_NAMES)
    if image_path is None:
        raise ImageError("no input image", where=model, fix="pass --image FILE (a real photo)")
    image = load_rgb(image_path)
    labels_path = context.labels or _find_beside(model, LABEL_FILE_NAMES)
    if context.images is not None and labels_path is None:
        raise LabelsError("--images needs labels", where=model, fix="pass --labels FILE")

    rss_scope = "model" if _reset_peak_rss() else "process"
    opened = open_model(model, setting.threads, context.delegate, context.edgetpu_device)
    interpreter = opened.interpreter
    input_detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(input_detail["index"], preprocess(image, input_detail))

    first_start = time.perf_counter_ns()
    interpreter.invoke()
    first_ms = (time.perf_counter_ns() - first_start) / 1e6
    warmup = timed_invokes(interpreter.invoke, context.warmup, 0.0) if context.warmup else []
    samples = timed_invokes(interpreter.invoke, context.runs, context.min_secs)
    stats = latency_stats(samples)
    result: dict[str, Any] = {
        "model": model.name,
        "path": str(model),
        "file_bytes": model.stat().st_size,
        "params": graph.params,
        "macs": graph.macs,
        "input_shape": [int(d) for d in input_detail["shape"]],
        "input_dtype": np.dtype(input_detail["dtype"]).name,
        "runtime": opened.runtime,
        "runtime_version": opened.runtime_version,
        "delegate": opened.delegate,
        "threads": setting.threads,
        "image": str(image_path),
        "init_ms": opened.init_ms,
        "first_inference_ms": first_ms,
        "warmup_runs": len(warmup),
        "warmup_mean_ms": float(np.mean(warmup)) if warmup else None,
        "latency_ms": stats,
        # On the Edge TPU the first invoke uploads the model's parameters to the device; that one-time cost
        # is first inference minus a steady-state invoke, kept out of the latency statistics.
        "edgetpu_upload_ms": max(first_ms - stats["p50"], 0.0) if opened.delegate == "edgetpu" else None,
        "accuracy": None,
    }
    if context.images is not None and labels_path is not None:
        result["accuracy"] = accuracy(opened, context.images, read_labels(labels_path), labels_path)
        result["labels"] = str(labels_path)
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
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a Pi over ssh; must precede pyplot
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib", fix="pip install 'edgedet[bench]'") from None
    results = report["results"]
    names = [f"{r['model'].removesuffix('.tflite')} t{r['threads']}" for r in results]
    panels = [
        ("median latency (ms)", [r["latency_ms"]["p50"] for r in results]),
        ("MACs (millions)", [(r["macs"] or 0) / 1e6 for r in results]),
        ("parameters (millions)", [(r["params"] or 0) / 1e6 for r in results]),
        ("top-1 accuracy (%)", [100 * r["accuracy"]["top1"] if r["accuracy"] else 0 for r in results]),
    ]
    figure, axes = plt.subplots(2, 2, figsize=(12, 3 + 0.5 * len(results)))
    for axis, (title, values) in zip(axes.flat, panels):
        axis.barh(names, values, color="tab:blue")
        axis.set_title(title)
        axis.invert_yaxis()  # fastest at the top, as in the table
    figure.suptitle("edgedet bench")
    figure.tight_layout()
    try:
        figure.savefig(target, dpi=100)
    except OSError as err:
        raise ConfigError(f"cannot write the plot ({err.strerror})", where=target) from None
    finally:
        plt.close(figure)


# --------------------------------------------------------------------------------------------------- CLI


def run_pipeline_benchmark(args: argparse.Namespace) -> int:
    """Hook for ``--pipeline`` (bare invoke vs reference loop vs edgedet frame loop); the lead wires it."""
    raise ConfigError(
        "--pipeline is not available in this build yet",
        where="edgedet bench",
        fix="run 'edgedet bench MODEL' for inference latency",
    )


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
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {
            "machine": platform.machine(),
            "system": platform.system(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
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
