"""The JSON-lines sink never leaves a broken record: a full disk (RLIMIT_FSIZE in a subprocess) and a torn
tail from a crash mid-write."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgedet.publish.jsonl import JsonlSink

REPO = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import logging, resource, sys
    from edgedet.publish.jsonl import JsonlSink
    from edgedet.results import Class, FrameResult
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    sink = JsonlSink(sys.argv[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000, hard))  # the disk is full at 3000 bytes
    def frame(i):
        return FrameResult(i, 1.7e9, 0.0, [Class(1, 0.5, "cat")], {"total": 1.0}, 1.0, "m")
    for i in range(60):
        sink.handle(frame(i))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
    for i in range(60, 70):
        sink.handle(frame(i))
    sink.close()
    print(sink.lost)
""")


def test_full_disk_leaves_whole_records_and_says_so_twice(tmp_path: Path) -> None:
    path = tmp_path / "frames.jsonl"
    proc = subprocess.run([sys.executable, "-c", WRITER, str(path)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = path.read_bytes()
    assert data.endswith(b"\n")
    records = [json.loads(line) for line in data.decode().splitlines()]  # every line a whole record
    ids = [r["frame_id"] for r in records]
    lost = int(proc.stdout.strip())
    assert lost > 0 and len(ids) == 70 - lost and ids[-10:] == list(range(60, 70))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("ERROR") and "cannot write" in lines[0] and str(path) in lines[0]
    assert "works again" in lines[1] and f"{lost} record(s)" in lines[1]


def test_torn_tail_is_cut_at_the_next_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "frames.jsonl"
    path.write_bytes(b'{"frame_id":1}\n{"frame_id":2}\n{"frame_id":3,"lab')
    with caplog.at_level(logging.WARNING, logger="edgedet.jsonl"):
        sink = JsonlSink(path)
        sink.close()
    assert path.read_bytes() == b'{"frame_id":1}\n{"frame_id":2}\n'
    (line,) = [r.getMessage() for r in caplog.records]
    assert "torn" in line and "18 bytes" in line
    caplog.clear()
    JsonlSink(path).close()  # a whole file is left alone, silently
    assert path.read_bytes() == b'{"frame_id":1}\n{"frame_id":2}\n' and caplog.records == []
