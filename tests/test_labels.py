"""Labels read and published exactly as written; refused in one line when they have no UTF-8 form; escaped
only in log lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tflite_builder
from helpers import assert_one_line_error, run_cli
from PIL import Image

from edgedet.errors import LabelsError
from edgedet.model.labels import load_labels, parse_labels, printable
from edgedet.publish.console import ConsoleSink
from edgedet.results import Class, FrameResult

# Characters str.splitlines() treats as line ends although a labels file only ends lines with \n.
INSIDE = ["a\u2028b", "c\x85d", "e\x0bf", "g\x1ch", "i\u2029j", "k\x0cl"]


def test_one_label_per_newline_line_only() -> None:
    assert parse_labels("\n".join(INSIDE) + "\n") == INSIDE
    assert parse_labels("one\r\ntwo\r\n\r\n") == ["one", "two"]
    assert parse_labels("cat\r\r\n") == ["cat\r"]  # only the one \r of a CRLF ending goes


def test_lines_that_start_with_a_number_stay_as_written() -> None:
    films = ["3 musketeers", "7 samurai", "101 dalmatians"]
    assert parse_labels("\n".join(films) + "\n") == films
    mixed = ["0 background", "1 tench", "cat"]  # not the whole file in the id form
    assert parse_labels("\n".join(mixed)) == mixed
    assert parse_labels("0 zero\n0 again\n") == ["0 zero", "0 again"]  # repeated ids: not an id table


def test_id_label_files_place_labels_at_their_ids() -> None:
    assert parse_labels("0 background\n1  tench, Tinca tinca\n3: goldfish\n") == \
        ["background", "tench, Tinca tinca", "class 2", "goldfish"]


def test_labels_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_bytes(b"cat\ndo\xffg\n")
    with pytest.raises(LabelsError) as caught:
        load_labels(path)
    assert str(path) in str(caught.value) and "UTF-8" in str(caught.value)
    path.write_bytes("\ufeffcat\ndog\n".encode())  # a BOM is not part of the first label
    assert load_labels(path) == ["cat", "dog"]


def test_console_log_line_escapes_control_characters(caplog: pytest.LogCaptureFixture) -> None:
    label = "cat\x1b[2J\nfake 12:00 ERROR line\u2028"
    result = FrameResult(frame_id=1, captured_wall=0.0, captured_mono=0.0, top_k=[Class(0, 0.9, label)],
                         latency_ms={"inference": 1.0}, frame_age_ms=2.0)
    with caplog.at_level(logging.INFO, logger="edgedet.results"):
        ConsoleSink(interval_s=0).handle(result)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "cat\\x1b[2J\\nfake 12:00 ERROR line\\u2028" in line
    assert line.isprintable()
    assert printable("plain label, ünïcode") == "plain label, ünïcode"


@pytest.fixture()
def sidecar_model(tmp_path: Path) -> tuple[Path, Path]:
    model = tflite_builder.write(tmp_path / "tiny.tflite", tflite_builder.tiny_classifier())
    image = tmp_path / "frame.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(image)
    return model, image


def write_sidecar(model: Path, labels_json: str) -> Path:
    path = model.with_suffix(".json")
    path.write_text(f'{{"format": "edgedet-sidecar/1", "labels": {labels_json}}}', encoding="utf-8")
    return path


def test_sidecar_label_with_a_lone_surrogate_is_one_line_exit_2(sidecar_model: tuple[Path, Path]) -> None:
    model, image = sidecar_model
    sidecar = write_sidecar(model, '["red", "gr\\ud800een", "blue"]')
    line = assert_one_line_error(run_cli("classify", "--model", str(model), str(image)), str(sidecar), "label 1")
    assert "surrogate" in line


def test_classify_publishes_labels_exactly_as_written(sidecar_model: tuple[Path, Path], tmp_path: Path) -> None:
    model, image = sidecar_model
    exact = ["a\u2028b\x85c", "3 musketeers", "esc\x1b[0m"]  # the tiny model has 3 classes
    labels = tmp_path / "labels.txt"
    labels.write_bytes(("\n".join(exact) + "\r\n").encode())
    run = run_cli("classify", "--json", "--top-k", "3", "--model", str(model), "--labels", str(labels), str(image))
    assert run.code == 0, run.err
    top_k = json.loads(run.out.splitlines()[0])["top_k"]
    assert {c["class_id"]: c["label"] for c in top_k} == dict(enumerate(exact))
