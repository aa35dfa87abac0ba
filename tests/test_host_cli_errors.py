"""Every bad input of edgedet-host: one line on stderr naming the file or field, exit code 2, no traceback.

These run the real console entry point in a subprocess; all refusals happen before TensorFlow is imported,
so they also pass in an environment without the ``host`` extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgedet.host.synth import generate

REPO = Path(__file__).resolve().parents[1]


def run_host(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgedet.host", *args], capture_output=True, text=True,
                          env=environment, timeout=120, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    generate(folder, per_class=2, size=32, seed=0)
    return folder


def test_missing_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert_one_line_error(run_host("train", str(missing), "--weights", "none", "--out", str(tmp_path / "o")),
                          str(missing), "not found")


def test_empty_data_dir(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert_one_line_error(run_host("train", str(tmp_path / "data"), "--weights", "none", "--out",
                                   str(tmp_path / "o")), "no class sub-folders")


def test_single_class(tmp_path: Path) -> None:
    generate(tmp_path / "data", per_class=2, size=32)
    for image in (tmp_path / "data" / "no-pikachu").iterdir():
        image.unlink()
    (tmp_path / "data" / "no-pikachu").rmdir()
    assert_one_line_error(run_host("train", str(tmp_path / "data"), "--weights", "none", "--out",
                                   str(tmp_path / "o")), "only one class (pikachu)", "no-pikachu/")


def test_no_readable_images(tmp_path: Path) -> None:
    for name in ("pikachu", "no-pikachu"):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "broken.png").write_bytes(b"not a png at all")
    assert_one_line_error(run_host("train", str(tmp_path / "data"), "--weights", "none", "--out",
                                   str(tmp_path / "o")), "no readable images", "2 files skipped")


def test_unknown_architecture(tiny_data: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_host("train", str(tiny_data), "--arch", "resnet50", "--out", str(tmp_path)),
                          "unknown architecture 'resnet50'", "mobilenet_v1, mobilenet_v2")


@pytest.mark.parametrize(("arch", "alpha", "size", "needle"), [
    ("mobilenet_v1", "0.35", "128", "alpha 0.35"),
    ("mobilenet_v2", "0.35", "100", "at 100 px"),
    ("mobilenet_v1", "0.25", "96", "at 96 px"),
])
def test_alpha_or_size_without_imagenet_weights(tiny_data: Path, tmp_path: Path, arch: str, alpha: str,
                                                size: str, needle: str) -> None:
    result = run_host("train", str(tiny_data), "--arch", arch, "--alpha", alpha, "--size", size,
                      "--weights", "imagenet", "--out", str(tmp_path))
    assert_one_line_error(result, "no ImageNet weights", needle, "--weights none")


def test_unwritable_train_output(tiny_data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    result = run_host("train", str(tiny_data), "--weights", "none", "--out", str(blocker / "out"))
    assert_one_line_error(result, str(blocker / "out"), "not writable")


def test_missing_weights_file(tiny_data: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_host("train", str(tiny_data), "--weights", str(tmp_path / "w.h5"), "--out",
                                   str(tmp_path)), "w.h5", "weights file not found")


@pytest.fixture
def fake_keras_file(tmp_path: Path) -> Path:
    """Conversion options are checked before the model is opened, so an empty file stands in for it."""
    model = tmp_path / "model.keras"
    model.write_bytes(b"")
    return model


def test_int8_without_representative(fake_keras_file: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_host("convert", str(fake_keras_file), "--quant", "int8", "--out",
                                   str(tmp_path / "m.tflite")), "representative", "--representative DIR")


def test_unwritable_convert_output(fake_keras_file: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "m.tflite"
    result = run_host("convert", str(fake_keras_file), "--out", str(out))
    assert_one_line_error(result, str(out), "not writable")


def test_frozen_graph_without_names(tmp_path: Path) -> None:
    graph = tmp_path / "frozen.pb"
    graph.write_bytes(b"\x00")
    assert_one_line_error(run_host("convert", str(graph), "--out", str(tmp_path / "m.tflite")),
                          str(graph), "--input-arrays", "--output-arrays")


def test_integer_io_needs_int8(fake_keras_file: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_host("convert", str(fake_keras_file), "--quant", "float16", "--io", "uint8",
                                   "--out", str(tmp_path / "m.tflite")), "--io uint8 needs --quant int8")


def test_unknown_model_format(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    assert_one_line_error(run_host("convert", str(model), "--out", str(tmp_path / "m.tflite")),
                          "unknown model format '.onnx'")


def test_usage_error_is_one_line() -> None:
    assert_one_line_error(run_host("train"), "edgedet-host train", "required")


def test_evaluate_missing_model(tmp_path: Path) -> None:
    assert_one_line_error(run_host("evaluate", str(tmp_path / "m.tflite"), str(tmp_path)), "model not found")
