"""``edgedet bench``'s arguments (in the one parser tree of edgedet/cli.py) and what the command prints.

Exit code 0 when every model ran, 2 when any failed: the others still run, and each failure is one
``edgedet: error:`` line on stderr. A usage error is refused before any model is loaded.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Callable

from edgedet.cmdline import report_error
from edgedet.errors import ConfigError, EdgedetError
from edgedet.model.config import ModelConfig, PreprocessConfig
from edgedet.section import Invalid

DESCRIPTION = "Latency, size, cost and accuracy of TFLite models on this machine, side by side."


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
    except Invalid as err:
        raise argparse.ArgumentTypeError(err.problems[0].text) from None


def _roi(text: str) -> tuple[float, float, float, float]:
    """``x1,y1,x2,y2`` checked by the daemon's own rule (model.preprocess.roi)."""
    try:
        parts = [float(part) for part in text.split(",")]
        return PreprocessConfig(roi=parts).roi  # type: ignore[return-value]
    except Invalid as err:
        raise argparse.ArgumentTypeError(err.problems[0].text) from None
    except ValueError:
        raise argparse.ArgumentTypeError("expected four numbers x1,y1,x2,y2") from None


def _thread_list(text: str) -> list[int]:
    return [_positive_int(part.strip()) for part in text.split(",") if part.strip()] or [1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
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
    parser.add_argument("--roi", type=_roi, metavar="X1,Y1,X2,Y2",
                        help="region of interest in fractions of the frame (as model.preprocess.roi)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    output.add_argument("--csv", action="store_true", help="print one CSV row per model and setting")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="write a chart (needs matplotlib)")
    parser.add_argument("--budget-ms", type=_positive_float, help="name the most accurate model within it")
    parser.add_argument(
        "--pipeline", action="store_true", help="frame-loop benchmark (bare vs reference vs edgedet)"
    )
    parser.set_defaults(handler=command)


def run_pipeline_benchmark(args: argparse.Namespace) -> int:
    """``--pipeline``: bare invoke vs the TFLite RPi example's loop vs edgedet's frame loop, side by side."""
    from edgedet.bench.pipeline import print_table, run
    from edgedet.model.tflite_file import read_tflite

    models = [Path(m) for m in args.models]
    for model in models:
        read_tflite(model).validate_classifier()
    results = run(models, rounds=3, seconds=max(1.0, float(args.min_secs or 4.0)), soak_frames=0)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print_table(results)
    return 0


def command(args: argparse.Namespace) -> int:
    """Prints the report; 0 if all models ran, 2 if any failed. Raises EdgedetError for the whole run."""
    from edgedet.bench.measure import run_bench
    from edgedet.bench.report import render_csv, render_json, render_table, write_plot

    if args.pipeline:
        return run_pipeline_benchmark(args)
    if not args.models:
        raise ConfigError("no model given", where="edgedet bench", fix="edgedet bench MODEL.tflite [...]")

    def complain(err: EdgedetError) -> None:
        report_error("edgedet", err)

    report = run_bench(args, on_error=complain)
    for warning in report["conditions"]["warnings"]:
        print(f"edgedet: warning: {warning}", file=sys.stderr)
    for result in report["results"]:
        for warning in result["warnings"]:
            print(f"edgedet: warning: {result['model']}: {warning}", file=sys.stderr)
    if args.json:
        print(render_json(report))
    elif args.csv:
        sys.stdout.write(render_csv(report))
    elif report["results"]:
        print(render_table(report))
    if args.plot and report["results"]:
        write_plot(report, args.plot)
    return 2 if report["errors"] else 0


def bench_main(argv: list[str] | None = None) -> int:
    """``edgedet bench ARGV`` in-process (tests, benchmarks/), through the same parser tree and error lines."""
    from edgedet.cli import run_command

    return run_command(["bench", *(sys.argv[1:] if argv is None else argv)], configure_logging=False)
