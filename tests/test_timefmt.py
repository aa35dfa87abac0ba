"""One timestamp format for every output: ISO 8601 UTC, milliseconds, ``Z``, as the MQTT schema says."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import pytest

from edgedet.logsetup import JsonFormatter
from edgedet.publish import messages
from edgedet.publish.jsonl import JsonlSink, result_record
from edgedet.results import Class, FrameResult
from edgedet.timefmt import iso_utc

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
# RFC 3339 date-time (what JSON Schema's "date-time" means), written out because jsonschema checks that
# format only when the optional rfc3339-validator package is installed.
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


def _date_time(value: object) -> bool:
    if not isinstance(value, str) or not RFC3339.fullmatch(value):
        return False
    datetime.fromisoformat(value)  # raises ValueError (a "format" failure) on e.g. month 13
    return True


def ts_validator() -> jsonschema.protocols.Validator:
    """The ``ts`` property of the MQTT detection schema, with its date-time format enforced."""
    detection = json.loads((SCHEMAS / "detection.json").read_text())
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time", raises=ValueError)(_date_time)
    return jsonschema.Draft202012Validator(detection["properties"]["ts"], format_checker=checker)


def frame(wall: float) -> FrameResult:
    return FrameResult(7, wall, 2.0, [Class(1, 0.9, "cat")], {"inference": 1.5, "total": 2.0}, 3.0, "m")


def test_iso_utc_is_milliseconds_and_z() -> None:
    assert iso_utc(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1_700_000_000.9999) == "2023-11-14T22:13:20.999Z"  # truncated, never rounded up to :21


def test_the_schema_check_itself_rejects_other_forms() -> None:
    validator = ts_validator()
    validator.validate("2023-11-14T22:13:20.250Z")
    for bad in ("2023-11-14T22:13:20.250+00:00", "2023-13-14T22:13:20.250Z", "yesterday"):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


def test_jsonl_and_mqtt_write_the_same_ts(tmp_path: Path) -> None:
    wall = 1_700_000_000.25
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path)
    sink.handle(frame(wall))
    sink.close()
    written = json.loads(path.read_text().splitlines()[0])["ts"]
    assert written == "2023-11-14T22:13:20.250Z"
    ts_validator().validate(written)
    assert written == result_record(frame(wall))["ts"]
    assert written == messages.detection_payload(frame(wall), "r", 1, "m")["ts"]
    parsed = datetime.fromisoformat(written)
    assert parsed == datetime.fromtimestamp(wall, timezone.utc)


def test_json_log_lines_use_the_same_ts() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    record = logging.LogRecord("edgedet.test", logging.INFO, __file__, 1, "hello", None, None)
    record.created = 1_700_000_000.25
    handler.emit(record)
    entry = json.loads(stream.getvalue())
    assert entry["ts"] == "2023-11-14T22:13:20.250Z"
    ts_validator().validate(entry["ts"])
