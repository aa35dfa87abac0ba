"""The bench report for people and tools: the text table, CSV, JSON, the chart, and the budget choice."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any


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
        f"{'first':>7} {'p50':>7} {'mean±std':>13} {'p99':>7} {'pre':>5} {'post':>5} {'x':>5} {'top1':>5} "
        f"{'top5':>5} {'RSS':>5}"
    )
    lines = [header, "-" * len(header)]
    for r in report["results"]:
        lat = r["latency_ms"]
        stage = r["stage_p50_ms"]
        acc = r["accuracy"] or {}
        lines.append(
            f"{r['model'][:40]:<40} {r['threads']:>3} {r['delegate']:<7} {r['file_bytes'] / 1e6:>5.2f} "
            f"{_fmt(_millions(r['params']), '6.2f'):>6} {_fmt(_millions(r['macs']), '7.1f'):>7} "
            f"{r['init_ms']:>7.1f} {r['first_inference_ms']:>7.2f} {lat['p50']:>7.2f} "
            f"{lat['mean']:>6.2f}±{lat['std']:<6.2f} {lat['p99']:>7.2f} "
            f"{stage['preprocess']:>5.2f} {stage['postprocess']:>5.2f} "
            f"{_fmt(r['relative_to_fastest'], '.2f'):>5} "
            f"{_fmt(acc.get('top1') and 100 * acc['top1'], '5.1f'):>5} "
            f"{_fmt(acc.get('top5') and 100 * acc['top5'], '5.1f'):>5} {_fmt(r['peak_rss_mb'], '5.0f'):>5}"
        )
    lines.append(
        "times in ms (count/min/p90/max in --json); p50, mean±std, p99 = invoke; "
        "pre/post = preprocess/postprocess p50; x = median relative to the fastest; RSS = peak MB"
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


def render_json(report: dict[str, Any]) -> str:
    """The report as docs/schemas/bench.schema.json describes it."""
    return json.dumps(report, indent=2)
