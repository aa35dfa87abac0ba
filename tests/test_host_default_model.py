"""The bundled default model: small, full-integer with uint8 I/O, a valid sidecar, and it recognizes the
synthetic creature on images it never saw (a freshly generated set, new seed). No TensorFlow needed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgedet.host.evaluate import evaluate
from edgedet.host.sidecar import SIDECAR_FORMAT, inspect_flatbuffer, read_sidecar
from edgedet.host.synth import generate

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "pikachu_mobilenet_v2_0.35_96_int8.tflite"
# Measured 0.98 on 100 per class of seed 2 (models/README.md); 40 per class here keeps the test fast.
MIN_FRESH_ACCURACY = 0.85


def test_size_shape_and_ops() -> None:
    assert MODEL.stat().st_size < 1_000_000
    info = inspect_flatbuffer(MODEL)
    assert info.inputs[0].shape_signature == [1, 96, 96, 3]
    assert [t.dtype for t in info.inputs + info.outputs] == ["uint8", "uint8"]
    assert info.tensor_dtypes <= {"int8", "uint8", "int32"}
    assert not info.custom_ops
    builtin_int8 = {"ADD", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MEAN", "QUANTIZE", "SOFTMAX"}
    assert {name for name, _ in info.ops} <= builtin_int8


def test_sidecar_and_labels_file() -> None:
    sidecar = read_sidecar(MODEL)
    assert sidecar["format"] == SIDECAR_FORMAT
    assert sidecar["architecture"] == "mobilenet_v2" and sidecar["alpha"] == 0.35
    assert sidecar["input_size"] == [96, 96]
    assert sidecar["labels"] == ["no-pikachu", "pikachu"]
    assert (sidecar["quantization"], sidecar["io_dtype"]) == ("int8", "uint8")
    assert sidecar["normalization"] == {"mean": 127.5, "std": 127.5}
    labels = (MODEL.parent / "labels.txt").read_text().split()
    assert labels == sidecar["labels"]


def test_accuracy_on_a_fresh_synthetic_set(tmp_path: Path) -> None:
    generate(tmp_path, per_class=40, size=96, seed=2)
    result = evaluate(MODEL, tmp_path, log=lambda _: None)
    matrix = np.asarray(result["confusion_matrix"])
    assert matrix.sum() == 80
    assert result["accuracy"] >= MIN_FRESH_ACCURACY, result


def test_loads_in_tflite_runtime_2_14() -> None:
    python = os.environ.get("EDGEDET_TFLITE_RUNTIME_PYTHON")
    if not python:
        pytest.skip("set EDGEDET_TFLITE_RUNTIME_PYTHON to a python with tflite-runtime==2.14.0 and numpy<2")
    script = (
        "import json, sys, numpy as np\n"
        "from tflite_runtime.interpreter import Interpreter\n"
        "it = Interpreter(model_path=sys.argv[1]); it.allocate_tensors()\n"
        "d = it.get_input_details()[0]\n"
        "it.set_tensor(d['index'], np.zeros(d['shape'], d['dtype'])); it.invoke()\n"
        "print(json.dumps(it.get_tensor(it.get_output_details()[0]['index']).tolist()))\n"
    )
    run = subprocess.run([python, "-c", script, str(MODEL)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert np.asarray(json.loads(run.stdout.strip().splitlines()[-1])).shape == (1, 2)


def test_bundled_sample_images_are_classified_correctly() -> None:
    """models/samples is what the README's camera-less demo shows; every one must come out right."""
    result = evaluate(MODEL, MODEL.parent / "samples", log=lambda _: None)
    assert result["images"] == 6
    assert result["confusion_matrix"] == [[3, 0], [0, 3]]
