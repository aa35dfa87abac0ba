"""The seed's comparison on the user's data: train each MobileNet candidate, convert it to full-integer int8,
evaluate all on the same held-out images, and write a table (Markdown, CSV, JSON) and an accuracy-vs-MACs chart.

Latency is the device's measure: ``edgedet bench OUT/*.tflite --images OUT/data/heldout --budget-ms X`` adds it
on the Pi and names the most accurate model within the budget.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from edgedet.errors import EdgedetError
from edgedet.host.data import IMAGE_SUFFIXES, class_folders

# The seed's grid: V1 at every published width and size, plus the smallest and the largest V2.
DEFAULT_CANDIDATES = (*(f"v1_{alpha}_{size}" for alpha in ("1.0", "0.75", "0.5", "0.25")
                         for size in (224, 192, 160, 128)), "v2_0.35_96", "v2_1.4_224")
TABLE_FIELDS = ("candidate", "architecture", "alpha", "size", "accuracy", "keras_accuracy", "top1_agreement",
                "macs", "params", "file_bytes", "train_seconds", "pareto", "model")


class Candidate(NamedTuple):
    name: str
    architecture: str
    alpha: float
    size: int


def parse_candidate(text: str) -> Candidate:
    """``v1_0.25_128`` -> MobileNet V1, width 0.25, 128 px."""
    match = re.fullmatch(r"v([12])_(\d+(?:\.\d+)?)_(\d+)", text.strip())
    if not match:
        raise EdgedetError(f"--candidates: {text!r} is not VERSION_ALPHA_SIZE",
                           fix="write candidates like v1_0.25_128 or v2_0.35_96")
    version, alpha, size = match.groups()
    return Candidate(text.strip(), f"mobilenet_v{version}", float(alpha), int(size))


class SweepOptions(NamedTuple):
    data_dir: Path
    out: Path
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    heldout: float = 0.2
    epochs: int = 5
    batch: int = 32
    learning_rate: float | None = None  # None: train.learning_rate_for(weights)
    weights: str = "imagenet"
    augment: bool = False
    num_calib: int = 100
    seed: int = 0
    threads: int | None = None


def split_folder(data_dir: Path, out: Path, heldout: float, seed: int) -> tuple[Path, Path]:
    """Copy ``data_dir/<class>/`` into ``out/train`` and ``out/heldout``, a stratified, seeded split."""
    if not 0 < heldout < 1:
        raise EdgedetError(f"--heldout {heldout} must be in (0, 1)")
    from edgedet.host.train import split_indices

    files: list[Path] = []
    classes: list[int] = []
    folders = class_folders(data_dir)
    for class_id, folder in enumerate(folders):
        members = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if len(members) < 2:
            raise EdgedetError(f"class {folder.name} has {len(members)} image(s); a held-out split needs >= 2",
                               where=folder, fix="add images")
        files += members
        classes += [class_id] * len(members)
    train_idx, heldout_idx = split_indices(np.asarray(classes), heldout, seed)
    if out.exists():
        shutil.rmtree(out)  # a rerun with another split must not mix the two
    for part, indices in (("train", train_idx), ("heldout", heldout_idx)):
        for index in indices:
            source = files[index]
            target = out / part / folders[classes[index]].name / source.relative_to(folders[classes[index]])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return out / "train", out / "heldout"


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    from edgedet.pareto import pareto_front

    front = set(pareto_front([(float(r["macs"]), float(r["accuracy"])) for r in rows]))
    for i, row in enumerate(rows):
        row["pareto"] = i in front


def render_markdown(rows: list[dict[str, Any]], heldout_images: int) -> str:
    lines = [f"Held-out images: {heldout_images}. Accuracy of the int8 model as the daemon runs it "
             "(Keras accuracy beside it); * = on the accuracy-vs-MACs Pareto frontier.", "",
             "| candidate | int8 top-1 % | Keras top-1 % | agreement % | MMACs | Mparams | KB | train s | |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['candidate']} | {100 * r['accuracy']:.1f} | {100 * r['keras_accuracy']:.1f} | "
                     f"{100 * r['top1_agreement']:.1f} | {r['macs'] / 1e6:.1f} | {r['params'] / 1e6:.3f} | "
                     f"{r['file_bytes'] / 1e3:.0f} | {r['train_seconds']:.0f} | {'*' if r['pareto'] else ''} |")
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in TABLE_FIELDS})
    return buffer.getvalue()


def write_chart(rows: list[dict[str, Any]], target: Path) -> None:
    from edgedet.pareto import draw_pareto, pyplot, save

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    draw_pareto(axis, [r["candidate"] for r in rows], [r["macs"] / 1e6 for r in rows],
                [100 * r["accuracy"] for r in rows], "MACs (millions)")
    axis.set_title("int8 accuracy on the held-out images against MACs")
    figure.tight_layout()
    save(figure, target, plt)


def _progress(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)


def sweep(options: SweepOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, convert and evaluate every candidate; write sweep.md/.csv/.json and sweep.png into ``out``."""
    from edgedet.host.convert import ConvertOptions, convert
    from edgedet.host.evaluate import evaluate
    from edgedet.host.train import TrainOptions, check_writable_dir, train, validate_options
    from edgedet.model.graph import inspect_graph

    candidates = [parse_candidate(text) for text in options.candidates]
    if not candidates:
        raise EdgedetError("--candidates is empty", fix="name at least one, e.g. v2_0.35_96")
    trainings = {c.name: TrainOptions(
        data_dir=options.out / "data" / "train", out=options.out / "work" / c.name, architecture=c.architecture,
        alpha=c.alpha, size=c.size, epochs=options.epochs, batch=options.batch,
        learning_rate=options.learning_rate, val_split=0.0, weights=options.weights, augment=options.augment,
        seed=options.seed, threads=options.threads, verbose=0) for c in candidates}
    for training in trainings.values():
        validate_options(training)  # every candidate is checked before the first long training
    check_writable_dir(options.out)
    train_dir, heldout_dir = split_folder(options.data_dir, options.out / "data", options.heldout, options.seed)
    rows: list[dict[str, Any]] = []
    bar = _progress(3 * len(candidates))
    quiet: Callable[[str], None] = lambda message: bar.write(message, file=sys.stderr)  # noqa: E731
    try:
        for candidate in candidates:
            bar.set_description(f"{candidate.name} train")
            metrics = train(trainings[candidate.name], log=quiet)
            bar.update(1)
            bar.set_description(f"{candidate.name} convert")
            model = options.out / f"mobilenet_{candidate.name}_int8.tflite"
            convert(ConvertOptions(model=trainings[candidate.name].out / "model.keras", out=model,
                                   quantization="int8", io_dtype="uint8", representative=train_dir,
                                   num_calib=options.num_calib, seed=options.seed), log=quiet)
            bar.update(1)
            bar.set_description(f"{candidate.name} evaluate")
            result = evaluate(model, heldout_dir, reference=trainings[candidate.name].out / "model.keras",
                              log=quiet)
            bar.update(1)
            graph = inspect_graph(model)
            rows.append({
                "candidate": candidate.name, "architecture": candidate.architecture, "alpha": candidate.alpha,
                "size": candidate.size, "accuracy": result["accuracy"],
                "keras_accuracy": result["reference_accuracy"], "top1_agreement": result["top1_agreement"],
                "macs": graph.macs, "params": graph.params, "file_bytes": model.stat().st_size,
                "train_seconds": metrics["train_seconds"], "pareto": False, "model": model.name,
                "confusion_matrix": result["confusion_matrix"], "labels": result["labels"],
            })
    finally:
        bar.close()
    rows.sort(key=lambda r: r["macs"])
    mark_pareto(rows)
    heldout_images = sum(1 for p in heldout_dir.rglob("*") if p.is_file())
    report = {"data_dir": str(options.data_dir), "heldout_dir": str(heldout_dir), "heldout_images": heldout_images,
              "train_dir": str(train_dir), "options": {k: (str(v) if isinstance(v, Path) else v)
                                                       for k, v in options._asdict().items()},
              "results": rows}
    (options.out / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    (options.out / "sweep.csv").write_text(render_csv(rows))
    markdown = render_markdown(rows, heldout_images)
    (options.out / "sweep.md").write_text(markdown)
    write_chart(rows, options.out / "sweep.png")
    log(markdown)
    log(f"wrote sweep.md, sweep.csv, sweep.json and sweep.png into {options.out}; on the device: edgedet bench "
        f"{options.out}/*.tflite --images {heldout_dir} --budget-ms X")
    return report
