"""Labelled images (a folder of label folders, or a CSV), label matching, and top-1/top-5 accuracy."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedet.errors import ConfigError, LabelsError
from edgedet.model.classifier import Classifier
from edgedet.model.preprocess import load_image

DEFAULT_IMAGE_NAMES = ("cat.bmp",)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}


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


def find_beside(model: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` in the model's folder or the current one (the default timing image)."""
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
