"""Logging: journal style when stderr is the $JOURNAL_STREAM, plain with timestamps otherwise, JSON lines."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgedet.logsetup import setup_logging, stream_is_journal

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _emit(tmp_path: Path, fmt: str, env: dict[str, str] | None, *, set_stream_to_file: bool = False) -> str:
    """Run a real process whose stderr is a file; optionally JOURNAL_STREAM names that very file."""
    log_file = tmp_path / "stderr.log"
    code = (
        "import logging, sys\n"
        "from edgedet.logsetup import setup_logging\n"
        f"setup_logging('info', {fmt!r})\n"
        "log = logging.getLogger('edgedet.loop')\n"
        "log.debug('hidden')\n"
        "log.info('first frame processed')\n"
        "log.warning('camera slow', extra={'fps': 2.5})\n"
    )
    with log_file.open("w") as handle:
        child_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        child_env.pop("JOURNAL_STREAM", None)
        if set_stream_to_file:
            info = os.fstat(handle.fileno())
            child_env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
        elif env and "JOURNAL_STREAM" in env:
            child_env["JOURNAL_STREAM"] = env["JOURNAL_STREAM"]
        subprocess.run([sys.executable, "-c", code], stderr=handle, env=child_env, check=True, timeout=60)
    return log_file.read_text()


def test_journal_stream_gives_priority_prefix_and_no_timestamp(tmp_path: Path) -> None:
    text = _emit(tmp_path, "auto", None, set_stream_to_file=True)
    assert text.splitlines() == [
        "<6>info edgedet.loop: first frame processed",
        "<4>warning edgedet.loop: camera slow",
    ]


def test_journal_stream_of_another_file_is_ignored(tmp_path: Path) -> None:
    """stderr redirected elsewhere (e.g. `edgedet run 2>file` inside a unit): keep timestamps."""
    text = _emit(tmp_path, "auto", {"JOURNAL_STREAM": "1:999999999"})
    lines = text.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO edgedet\.loop: first frame processed",
                        lines[0])


def test_json_lines(tmp_path: Path) -> None:
    entries = [json.loads(line) for line in _emit(tmp_path, "json", None).splitlines()]
    assert [e["message"] for e in entries] == ["first frame processed", "camera slow"]
    assert [e["level"] for e in entries] == ["info", "warning"]
    assert entries[1]["fps"] == 2.5 and entries[1]["logger"] == "edgedet.loop"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entries[0]["ts"])


def test_json_keeps_tracebacks_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("debug", "json", sys.stderr)
    try:
        raise RuntimeError("edge tpu hung")
    except RuntimeError:
        logging.getLogger("edgedet.test").exception("inference failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert "RuntimeError: edge tpu hung" in entry["exception"]


def test_setup_is_idempotent_and_validates() -> None:
    setup_logging("info", "plain")
    setup_logging("debug", "plain")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_edgedet", False)]
    assert len(ours) == 1
    assert logging.getLogger().level == logging.DEBUG
    with pytest.raises(ValueError, match="log level must be one of"):
        setup_logging("loud")
    with pytest.raises(ValueError, match="log format must be one of"):
        setup_logging("info", "xml")


def test_stream_is_journal_parsing(tmp_path: Path) -> None:
    with (tmp_path / "f").open("w") as handle:
        info = os.fstat(handle.fileno())
        assert stream_is_journal(handle, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert not stream_is_journal(handle, {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journal(handle, {})
