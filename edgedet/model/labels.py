"""Labels: a text file (one per line, or ``id label`` lines), the model's embedded metadata, or a sidecar."""

from __future__ import annotations

import re
from pathlib import Path

from edgedet.errors import LabelsError

_ID_LINE = re.compile(r"^\s*(\d+)[\s:,]+(.*\S)\s*$")


def parse_labels(text: str) -> list[str]:
    """Lines -> labels by class id. ``id label`` lines (all of them) place labels at their ids."""
    lines = [line.rstrip("\r") for line in text.splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return []
    matches = [_ID_LINE.match(line) for line in lines if line.strip()]
    if all(matches) and len(matches) > 1:
        by_id = {int(m.group(1)): m.group(2) for m in matches if m}
        return [by_id.get(i, f"class {i}") for i in range(max(by_id) + 1)]
    return [line.strip() for line in lines]


def load_labels(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise LabelsError("labels file not found", where=path,
                          fix="check model.labels (or --labels), or drop it to use the model's own labels")
    if path.is_dir():
        raise LabelsError("is a directory, not a labels file", where=path,
                          fix="pass a text file, one label per line")
    try:
        labels = parse_labels(path.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        raise LabelsError(f"cannot read labels file ({exc.strerror})", where=path,
                          fix="check its permissions") from None
    if not labels:
        raise LabelsError("labels file is empty", where=path, fix="one label per line, line N = class id N")
    return labels


def sidecar_label_files(model_path: Path) -> list[Path]:
    """Label files that may sit beside a model, most specific first."""
    stem = model_path.stem
    return [model_path.with_name(f"{stem}_labels.txt"), model_path.with_name(f"{stem}.labels.txt"),
            model_path.with_name(f"{stem}.txt"), model_path.with_name("labels.txt")]
