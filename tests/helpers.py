"""Helpers for running the CLI in-process and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.startswith("{")]

    def error_lines(self) -> list[str]:
        """stderr without the runtimes' own C++ INFO banner (XNNPACK), which edgedet does not print."""
        return [line for line in self.err.splitlines() if line.strip() and not line.startswith("INFO: ")]


def run_cli(*args: str, env: dict | None = None, timeout: float = 120, cwd: Path | None = None) -> Run:
    """``python -m edgedet ARGS`` as a real process (so a traceback or a crash would show)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "edgedet", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or REPO)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(run: Run, *needles: str) -> str:
    """Exit 2, exactly one error line on stderr, naming what it must name, and no traceback."""
    lines = run.error_lines()
    assert run.code == 2, f"exit {run.code}, stderr: {run.err}"
    assert "Traceback" not in run.err, run.err
    assert len(lines) == 1, f"expected one line, got: {lines}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def read_all(source, limit: int = 50, timeout_s: float = 1.0) -> list:
    """Frames from an opened FrameSource until it ends (read returns None), at most ``limit``."""
    frames = []
    for _ in range(limit):
        frame = source.read(timeout_s)
        if frame is None:
            break
        frames.append(frame)
    return frames


def stop_process(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM, and SIGKILL if it is still running after ``timeout_s``; waits for the exit either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
