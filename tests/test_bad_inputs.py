"""Bad inputs to `edgedet classify`: each one clear line on stderr naming the file and the fix, exit 2."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import tflite_builder
from conftest import V1, V1_EDGETPU, V2
from helpers import assert_one_line_error, run_cli
from PIL import Image


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "frame.png"
    Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(path)
    return path


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    (tmp_path / "tiny_labels.txt").write_text("red\ngreen\nblue\n")  # found beside the model
    return tflite_builder.write(tmp_path / "tiny.tflite", tflite_builder.tiny_classifier())


def test_missing_model_path(tmp_path, image):
    missing = tmp_path / "nope.tflite"
    assert_one_line_error(run_cli("classify", "--model", str(missing), str(image)),
                          str(missing), "not found", "model.path")


def test_model_is_a_directory(tmp_path, image):
    assert_one_line_error(run_cli("classify", "--model", str(tmp_path), str(image)),
                          str(tmp_path), "is a directory")


def test_empty_model_file(tmp_path, image):
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    assert_one_line_error(run_cli("classify", "--model", str(empty), str(image)), str(empty), "empty")


def test_random_bytes_model(tmp_path, image):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(np.random.default_rng(3).bytes(4096))
    assert_one_line_error(run_cli("classify", "--model", str(junk), str(image)), str(junk), "not a TFLite model")


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.97])
def test_truncated_model(shared_models, tmp_path, image, fraction):
    data = (shared_models / V1).read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: int(len(data) * fraction)])
    line = assert_one_line_error(run_cli("classify", "--model", str(cut), str(image)), str(cut))
    assert "truncated" in line or "corrupt" in line


def test_two_input_model_is_refused(tmp_path, image):
    model = tflite_builder.write(tmp_path / "two.tflite", tflite_builder.two_input_model())
    assert_one_line_error(run_cli("classify", "--model", str(model), str(image)),
                          str(model), "2 inputs", "one image input")


def test_non_class_output_is_refused(tmp_path, image):
    model = tflite_builder.write(tmp_path / "imgout.tflite", tflite_builder.image_output_model())
    assert_one_line_error(run_cli("classify", "--model", str(model), str(image)),
                          str(model), "not a vector of class scores")


def test_missing_labels_file(tiny_model, tmp_path, image):
    labels = tmp_path / "labels.txt"
    assert_one_line_error(run_cli("classify", "--model", str(tiny_model), "--labels", str(labels), str(image)),
                          str(labels), "not found")


def test_empty_labels_file(tiny_model, tmp_path, image):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n\n")
    assert_one_line_error(run_cli("classify", "--model", str(tiny_model), "--labels", str(labels), str(image)),
                          str(labels), "empty")


def test_labels_count_mismatch_is_a_warning_naming_both_numbers(tiny_model, tmp_path, image):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    run = run_cli("classify", "--json", "--model", str(tiny_model), "--labels", str(labels), str(image))
    assert run.code == 0, run.err
    warning = [line for line in run.error_lines() if "mismatch" in line]
    assert len(warning) == 1 and "2 labels" in warning[0] and "3 classes" in warning[0]
    assert [c["label"] for c in run.json_lines()[0]["top_k"]][:3]  # still classifies, unnamed class shown
    assert "class 2" in {c["label"] for c in run.json_lines()[0]["top_k"]}


def test_image_that_is_not_an_image(tiny_model, tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is text, not a JPEG\n")
    assert_one_line_error(run_cli("classify", "--model", str(tiny_model), str(fake)), str(fake), "not an image")


def test_one_pixel_image_works(shared_models, tmp_path):
    pixel = tmp_path / "pixel.png"
    Image.new("RGB", (1, 1), (200, 30, 30)).save(pixel)
    run = run_cli("classify", "--json", "--model", str(shared_models / V2), str(pixel))
    assert run.code == 0, run.err
    assert len(run.json_lines()[0]["top_k"]) == 3


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_decompression_bomb_is_refused(tiny_model, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(40000, 40000))  # 1.6 G pixels claimed by a 100-byte file
    assert_one_line_error(run_cli("classify", "--model", str(tiny_model), str(bomb)),
                          str(bomb), "refused", "max_image_pixels")


def test_image_just_over_the_configured_limit_is_refused(tiny_model, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(big)
    run = run_cli("classify", "--model", str(tiny_model), "--set", "model.preprocess.max_image_pixels=80000",
                  str(big))
    assert_one_line_error(run, str(big), "refused")


def test_edgetpu_model_on_cpu(shared_models, image):
    model = shared_models / V1_EDGETPU
    line = assert_one_line_error(run_cli("classify", "--model", str(model), str(image)),
                                 str(model), "compiled for the Edge TPU", "model.delegate: edgetpu")
    assert str(shared_models / V1) in line  # names the CPU build to use instead


def test_missing_libedgetpu_with_fallback_fail(shared_models, image):
    run = run_cli("classify", "--model", str(shared_models / V1_EDGETPU), "--delegate", "edgetpu",
                  "--fallback", "fail", str(image))
    assert_one_line_error(run, "libedgetpu.so.1", "model.fallback: cpu")


def test_missing_libedgetpu_with_fallback_cpu_runs_the_twin_and_says_so(shared_models):
    run = run_cli("classify", "--json", "--model", str(shared_models / V1_EDGETPU), "--delegate", "edgetpu",
                  str(shared_models / "cat.bmp"))
    assert run.code == 0, run.err
    assert "Traceback" not in run.err and "Exception ignored" not in run.err
    loud = [line for line in run.error_lines() if "EDGE TPU UNAVAILABLE" in line]
    assert len(loud) == 1 and str(shared_models / V1) in loud[0]
    line = run.json_lines()[0]
    assert line["delegate"]["requested"] == "edgetpu" and line["delegate"]["active"] == "cpu"
    assert line["delegate"]["fallback"] is True and "libedgetpu" in line["delegate"]["fallback_reason"]
    assert 283 in [c["class_id"] for c in line["top_k"][:3]]


def _shared_library(tmp_path: Path, name: str, source: str) -> Path:
    """A real .so built with the C compiler, for the ways a delegate library can fail to load."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (scripts/test installs gcc): cannot build the test shared library")
    c_file = tmp_path / f"{name}.c"
    c_file.write_text(source)
    library = tmp_path / f"{name}.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(c_file)], check=True,
                   capture_output=True, timeout=120)
    return library


# A library that loads but is no TFLite delegate (what a wrong EDGEDET_EDGETPU_LIBRARY or a broken
# install gives): the runtimes raise AttributeError "undefined symbol: tflite_plugin_create_delegate".
NOT_A_DELEGATE = "int edgedet_not_a_delegate(void) { return 0; }\n"
# A delegate library whose create call fails, as libedgetpu's does when no Edge TPU answers: it reports
# through the error callback, returns NULL (the runtimes raise "ValueError: Failed to load delegate from
# ..."), and writes a diagnostic line of its own to stderr.
NO_DEVICE = """
#include <stddef.h>
#include <stdio.h>
void *tflite_plugin_create_delegate(char **keys, char **values, size_t n, void (*report)(const char *)) {
    fprintf(stderr, "test-libedgetpu: no Edge TPU device answered\\n");
    fflush(stderr);
    if (report) report("no Edge TPU device found");
    return NULL;
}
void tflite_plugin_destroy_delegate(void *delegate) {}
"""


def test_a_library_without_the_delegate_symbols_is_one_line_with_fallback_fail(shared_models, tmp_path, image):
    library = _shared_library(tmp_path, "libnotadelegate", NOT_A_DELEGATE)
    run = run_cli("classify", "--model", str(shared_models / V1_EDGETPU), "--delegate", "edgetpu",
                  "--fallback", "fail", str(image), env={"EDGEDET_EDGETPU_LIBRARY": str(library)})
    line = assert_one_line_error(run, str(library), "undefined symbol: tflite_plugin_create_delegate",
                                 "EDGEDET_EDGETPU_LIBRARY")
    assert run.err.strip() == line and "Exception ignored" not in run.err  # nothing else on stderr


def test_a_library_without_the_delegate_symbols_falls_back_to_the_cpu_with_one_warning(shared_models, tmp_path):
    library = _shared_library(tmp_path, "libnotadelegate", NOT_A_DELEGATE)
    run = run_cli("classify", "--json", "--model", str(shared_models / V1_EDGETPU), "--delegate", "edgetpu",
                  str(shared_models / "cat.bmp"), env={"EDGEDET_EDGETPU_LIBRARY": str(library)})
    assert run.code == 0, run.err
    assert "Exception ignored" not in run.err and "Traceback" not in run.err
    lines = run.error_lines()  # stderr less the CPU runtime's own XNNPACK banner
    assert len(lines) == 1 and "EDGE TPU UNAVAILABLE" in lines[0], run.err
    assert "undefined symbol: tflite_plugin_create_delegate" in lines[0]
    assert run.json_lines()[0]["delegate"]["active"] == "cpu"


def test_a_delegate_that_finds_no_device_is_one_line_carrying_its_own_message(shared_models, tmp_path, image):
    library = _shared_library(tmp_path, "libnodevice", NO_DEVICE)
    run = run_cli("classify", "--model", str(shared_models / V1_EDGETPU), "--delegate", "edgetpu",
                  "--fallback", "fail", str(image), env={"EDGEDET_EDGETPU_LIBRARY": str(library)})
    line = assert_one_line_error(run, f"Failed to load delegate from {library}", "no Edge TPU device found",
                                 "test-libedgetpu: no Edge TPU device answered", "model.fallback: cpu")
    assert run.err.strip() == line and "Exception ignored" not in run.err
    run = run_cli("classify", "--json", "--model", str(shared_models / V1_EDGETPU), "--delegate", "edgetpu",
                  str(shared_models / "cat.bmp"), env={"EDGEDET_EDGETPU_LIBRARY": str(library)})
    assert run.code == 0, run.err
    lines = run.error_lines()
    assert len(lines) == 1 and "EDGE TPU UNAVAILABLE" in lines[0] and "no Edge TPU device found" in lines[0]


def test_explicit_cpu_model_for_fallback(shared_models, tmp_path, image):
    # Without a twin beside the Edge TPU model, the fallback needs model.cpu_model.
    lonely = tmp_path / "lonely_edgetpu.tflite"
    lonely.write_bytes((shared_models / V1_EDGETPU).read_bytes())
    run = run_cli("classify", "--model", str(lonely), "--delegate", "edgetpu", str(image))
    assert_one_line_error(run, str(lonely), "model.cpu_model")
    run = run_cli("classify", "--json", "--model", str(lonely), "--delegate", "edgetpu",
                  "--cpu-model", str(shared_models / V2), str(image))
    assert run.code == 0 and run.json_lines()[0]["delegate"]["cpu_model"] == str(shared_models / V2)


def test_bad_config_value_from_set(tiny_model, image):
    run = run_cli("classify", "--model", str(tiny_model), "--set", "model.top_k=0", str(image))
    assert_one_line_error(run, "model.top_k")


def test_unknown_runtime_flag_value(tiny_model, image):
    run = run_cli("classify", "--model", str(tiny_model), "--runtime", "onnx", str(image))
    assert_one_line_error(run, "--runtime")


def test_one_bad_image_among_good_ones_still_classifies_the_rest(tiny_model, tmp_path, image):
    fake = tmp_path / "broken.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    run = run_cli("classify", "--json", "--model", str(tiny_model), str(fake), str(image))
    assert run.code == 2
    assert [line["image"] for line in run.json_lines()] == [str(image)]
    assert len(run.error_lines()) == 1 and str(fake) in run.error_lines()[0]


@pytest.mark.parametrize("model_name", [V2])
def test_models_info_json(shared_models, model_name):
    run = run_cli("models", "info", "--json", str(shared_models / model_name))
    assert run.code == 0, run.err
    import json

    data = json.loads(run.out)
    assert data["inputs"][0]["shape"] == [1, 224, 224, 3] and data["inputs"][0]["dtype"] == "uint8"
    assert data["inputs"][0]["quantization"] == {"scale": 0.0078125, "zero_point": 128}
    assert data["ops"]["CONV_2D"] == 36 and data["ops"]["DEPTHWISE_CONV_2D"] == 17
    assert data["edgetpu_compiled"] is False and data["embedded_labels"] == 1001
    assert data["sha256"] == "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776"


def test_models_info_on_edgetpu_model(shared_models):
    run = run_cli("models", "info", str(shared_models / V1_EDGETPU))
    assert run.code == 0, run.err
    assert "compiled for the Edge TPU: yes" in run.out and "edgetpu-custom-op" in run.out
