"""The one parser tree of `edgedet`: every command refuses a bad argument, or a user error, with one line
``edgedet: error: ...``, exit code 2 and no traceback (real ``python -m edgedet`` processes); and the
daemon's import path stays free of TensorFlow, bench and host code."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, Run, run_cli

from edgedet.cli import build_parser

# One bad argument per command and catalogue action, and the subcommand whose --help the line points to.
BAD_ARGUMENTS: dict[str, tuple[list[str], str]] = {
    "": ([], "edgedet"),
    "unknown command": (["frobnicate"], "edgedet"),
    "global option": (["--log-level", "loud", "run"], "edgedet"),
    "run": (["run", "--max-frames", "many"], "edgedet run"),
    "check-config": (["check-config", "--no-such-flag"], "edgedet check-config"),
    "classify": (["classify", "--top-k", "3"], "edgedet classify"),
    "bench": (["bench", "--runs", "0", "m.tflite"], "edgedet bench"),
    "models": (["models"], "edgedet models"),
    "models unknown action": (["models", "fetch"], "edgedet models"),
    "models list": (["models", "list", "surplus"], "edgedet models list"),
    "models info": (["models", "info"], "edgedet models info"),
    "models pull": (["models", "pull", "--dir"], "edgedet models pull"),
    "collect": (["collect", "data"], "edgedet collect"),  # --label is required
    "doctor": (["doctor", "--jsn"], "edgedet doctor"),
    "models install": (["models", "install"], "edgedet models install"),
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def test_every_subcommand_has_a_bad_argument_case() -> None:
    """Walks the real tree, so a new command or catalogue action cannot be left out of the cases below."""
    commands = subcommands(build_parser())
    models = commands["models"]
    models.format_help()  # fills the lazily built subparser, as choosing the command does
    walked = set(commands) | {f"models {action}" for action in subcommands(models)}
    assert walked == {"run", "check-config", "classify", "collect", "doctor", "bench", "models", "models list",
                      "models info", "models pull", "models install"}
    assert walked <= set(BAD_ARGUMENTS)


def assert_edgedet_error(run: Run) -> str:
    lines = [line for line in run.error_lines() if not line.startswith("edgedet: warning:")]  # e.g. governor
    assert run.code == 2, f"exit {run.code}, stderr: {run.err}"
    assert "Traceback" not in run.err, run.err
    assert len(lines) == 1, f"expected one line, got: {lines}"
    assert lines[0].startswith("edgedet: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_argument_is_one_line(case: str) -> None:
    argv, prog = BAD_ARGUMENTS[case]
    run = run_cli(*argv)
    line = assert_edgedet_error(run)
    assert line.endswith(f" (see {prog} --help)"), line
    assert run.out == ""


@pytest.mark.parametrize(("argv", "needle"), [
    (["run", "--config", "/nonexistent/edgedet.yaml"], "/nonexistent/edgedet.yaml"),
    (["run", "--max-frames", "-1"], "--max-frames -1"),
    (["check-config", "/nonexistent/edgedet.yaml"], "/nonexistent/edgedet.yaml"),
    (["classify", "--model", "/nonexistent/m.tflite", "x.png"], "/nonexistent/m.tflite"),
    (["bench"], "no model given"),
    (["bench", "/nonexistent/m.tflite"], "/nonexistent/m.tflite: model file not found"),
    (["models", "info", "no_such_model"], "no model named 'no_such_model'"),
    (["models", "info", "/nonexistent/m.tflite"], "/nonexistent/m.tflite"),
    (["models", "--catalog", "/nonexistent/catalog.json", "list"], "/nonexistent/catalog.json"),
    (["models", "install", "/nonexistent/m.tflite"], "/nonexistent/m.tflite"),
    (["collect", "data", "--label", "x", "--config", "/nonexistent/edgedet.yaml"], "/nonexistent/edgedet.yaml"),
    (["doctor", "--config", "/nonexistent/edgedet.yaml"], "/nonexistent/edgedet.yaml"),
])
def test_user_error_is_one_line(argv: list[str], needle: str) -> None:
    line = assert_edgedet_error(run_cli(*argv))
    assert needle in line, line


def test_help_still_prints_the_subcommand_usage() -> None:
    run = run_cli("bench", "--help")
    assert run.code == 0 and run.out.startswith("usage: edgedet bench") and "--budget-ms" in run.out
    run = run_cli("models", "pull", "--help")
    assert run.code == 0 and run.out.startswith("usage: edgedet models pull") and "--dir" in run.out


# Runs `python -m edgedet ARGS` (runpy, as -m does) and writes the names in sys.modules at exit to a file.
PROBE = """
import atexit, json, runpy, sys
target = sys.argv.pop(1)
atexit.register(lambda: open(target, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "edgedet"
runpy.run_module("edgedet", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def run_modules(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The modules a one-frame ``edgedet run`` (bundled model, synthetic source, no MQTT) has imported at exit;
    one run for every test that reads them."""
    tmp_path = tmp_path_factory.mktemp("run-modules")
    config = tmp_path / "config.yaml"
    config.write_text("source:\n  type: synthetic\n")  # the bundled model; no MQTT broker configured
    modules_file, stats_file = tmp_path / "modules.json", tmp_path / "stats.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(modules_file), "run", "--config", str(config),
                           "--max-frames", "1", "--stats-file", str(stats_file)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(stats_file.read_text())["frames_processed"] == 1
    modules = json.loads(modules_file.read_text())
    assert "edgedet.daemon" in modules and "edgedet.model.classifier" in modules  # the daemon did run here
    return modules


def test_run_imports_no_tensorflow_bench_or_host(run_modules: list[str]) -> None:
    forbidden = [m for m in run_modules
                 if m.split(".")[0] in {"tensorflow", "keras", "tf_keras"}
                 or m == "edgedet.bench" or m.startswith(("edgedet.bench.", "edgedet.host"))]
    assert forbidden == []


def test_run_leaves_out_what_only_a_wrong_config_or_a_pi_tool_needs(run_modules: list[str]) -> None:
    """``difflib`` (the "did you mean" of a config error), ``subprocess`` (dpkg-query for libedgetpu,
    vcgencmd on a Pi) and ``importlib.metadata`` (a runtime's version when its package does not say it, the
    pairing with libedgetpu) are imported where they are used: resident memory a run does not need (README)."""
    assert [m for m in ("difflib", "subprocess", "importlib.metadata") if m in run_modules] == []


def test_run_validates_its_config_without_pydantic(run_modules: list[str]) -> None:
    """The config sections are stdlib dataclasses (edgedet/section.py): pydantic's import and validators cost
    about 11 MB of the daemon's resident memory (README), and no module of a run brings it in."""
    assert [m for m in run_modules if m.split(".")[0] in {"pydantic", "pydantic_core"}] == []


def fresh_python(code: str) -> list[str]:
    """What ``code`` prints, run in a new interpreter with this checkout on the path (split in words)."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_sqlite_is_imported_only_for_an_outbox_file() -> None:
    """SQLite (~1 MB resident) backs ``mqtt.outbox_path`` alone: the daemon's modules, MQTT's included, leave it
    out; opening an outbox file brings it in (tests/test_outbox*.py use it for real)."""
    code = ("import sys, tempfile, pathlib\n"
            "import edgedet.cli, edgedet.daemon, edgedet.pipeline, edgedet.publish.mqtt as m\n"
            "from edgedet.publish.config import MqttConfig\n"
            "before = 'sqlite3' in sys.modules\n"
            "path = pathlib.Path(tempfile.mkdtemp()) / 'outbox.db'\n"
            "publisher = m.MqttPublisher(MqttConfig(enabled=True, outbox_path=path), 'dev')\n"
            "publisher._open_store()\n"
            "print(before, 'sqlite3' in sys.modules, path.exists())\n")
    assert fresh_python(code) == ["False", "True", "True"]


def test_numpy_resize_leaves_numpy_ma_out() -> None:
    """numpy imports its submodules on first use and keeps them: ``numpy.ma`` (about 1 MB resident) came in
    with the first frame the numpy backend resized. Two frame sizes, so a later resizer is built too."""
    code = ("import sys\n"
            "import numpy as np\n"
            "from edgedet.model.preprocess import InputQuantization, Preprocessor\n"
            "q = InputQuantization.build(np.uint8, 1 / 128, 128, np.array(127.5), np.array(127.5))\n"
            "pre = Preprocessor(96, 96, q, backend='numpy')\n"
            "for shape in ((480, 640, 3), (7, 5, 3)):\n"
            "    pre(np.zeros(shape, np.uint8))\n"
            "print('numpy.ma' in sys.modules, pre.backend)\n")
    assert fresh_python(code) == ["False", "numpy"]
