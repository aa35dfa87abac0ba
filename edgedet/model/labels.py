"""Labels: a text file (one per line, or ``id label`` lines), the model's embedded metadata, or a sidecar.

Labels are kept exactly as written: lines are split on ``\\n`` only (not ``str.splitlines``, which also splits
on U+2028, U+0085 and others that may sit inside a label) and only a trailing ``\\r`` goes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from edgedet.errors import LabelsError

if TYPE_CHECKING:
    from edgedet.model.tflite_file import TfliteFile

# ``0 background``, ``1: tench``, ``2,goldfish`` (the id-prefixed files of the Coral/TF examples)
_ID_LINE = re.compile(r"(\d+)(?:[ \t]*[:,][ \t]*|[ \t]+)(\S.*?)[ \t]*")


def _lines(text: str) -> list[str]:
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _by_id(lines: list[str]) -> list[str] | None:
    """The labels placed at their ids if the WHOLE file is ``id label`` lines with distinct ids in increasing
    order from 0 (gaps allowed, as in COCO's); else None: "3 musketeers" / "7 samurai" stay as written."""
    matches = [_ID_LINE.fullmatch(line) for line in lines]
    if len(lines) < 2 or not all(matches):
        return None
    ids = [int(m.group(1)) for m in matches if m]
    if ids[0] != 0 or any(b <= a for a, b in zip(ids, ids[1:])):
        return None
    by_id = {int(m.group(1)): m.group(2) for m in matches if m}
    return [by_id.get(i, f"class {i}") for i in range(ids[-1] + 1)]


def parse_labels(text: str) -> list[str]:
    """Text -> labels by class id: line N is class N, unless every line is an ``id label`` line."""
    lines = _lines(text)
    if not lines:
        return []
    return _by_id(lines) or lines


def check_encodable(labels: Iterable[str], where: str | Path) -> None:
    """Labels go out as UTF-8 (MQTT, JSON): text that has no UTF-8 form (a lone surrogate) is refused now."""
    for index, label in enumerate(labels):
        try:
            label.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LabelsError(f"label {index} ({label!r}) is not valid Unicode text ({exc.reason} at "
                              f"{exc.start})", where=where,
                              fix="write the label as UTF-8 text (a lone \\ud8xx surrogate is not a character)"
                              ) from None


def load_labels(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise LabelsError("labels file not found", where=path,
                          fix="check model.labels (or --labels), or drop it to use the model's own labels")
    if path.is_dir():
        raise LabelsError("is a directory, not a labels file", where=path,
                          fix="pass a text file, one label per line")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LabelsError(f"cannot read labels file ({exc.strerror})", where=path,
                          fix="check its permissions") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelsError(f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})", where=path,
                          fix="save the labels file as UTF-8") from None
    labels = parse_labels(text)
    if not labels:
        raise LabelsError("labels file is empty", where=path, fix="one label per line, line N = class id N")
    return labels


def printable(label: str) -> str:
    """A label for a log line: control characters, escape sequences and other non-printables as repr()
    escapes so a label cannot forge log lines or drive the terminal. Payloads keep the exact text."""
    if label.isprintable():
        return label
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in label)


def sidecar_label_files(model_path: Path) -> list[Path]:
    """Label files that may sit beside a model, most specific first."""
    stem = model_path.stem
    return [model_path.with_name(f"{stem}_labels.txt"), model_path.with_name(f"{stem}.labels.txt"),
            model_path.with_name(f"{stem}.txt"), model_path.with_name("labels.txt")]


def resolve_labels(explicit: Path | None, model_file: TfliteFile) -> tuple[list[str], str]:
    """The labels a classifier uses and where they came from, first found of: ``explicit`` (model.labels),
    the model's sidecar JSON, its metadata, a labels file beside it; ``([], "none")`` when there are none."""
    if explicit is not None:
        return load_labels(explicit), str(explicit)
    listed = (model_file.sidecar or {}).get("labels")
    if isinstance(listed, list):
        labels = [str(x) for x in listed]
        check_encodable(labels, model_file.sidecar_path())  # JSON's \ud800 escapes decode to lone surrogates
        return labels, "sidecar"
    if model_file.embedded_labels:
        return list(model_file.embedded_labels), "metadata"
    path = next((p for p in sidecar_label_files(model_file.path) if p.is_file()), None)
    if path is None:
        return [], "none"
    return load_labels(path), str(path)
