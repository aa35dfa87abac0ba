"""End to end with TensorFlow: synth-dataset -> train -> convert (int8, float16, dynamic) -> load -> classify.

Needs the ``host`` extra (tensorflow-cpu); skips with that reason without it. Kept small for CI: 24 images
per class at 64 px, two epochs of MobileNetV2 0.35 (about a minute on 2 cores, most of it graph tracing).
tflite-runtime 2.14 (the Pi's runtime on armv7l / Python < 3.10, NumPy < 2) lives in its own venv; point
EDGEDET_TFLITE_RUNTIME_PYTHON at that venv's python to run those checks, else they skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="needs the host extra: pip install 'edgedet[host]'")

from edgedet.host.cli import main
from edgedet.host.sidecar import SIDECAR_FORMAT, inspect_flatbuffer, read_sidecar

pytestmark = pytest.mark.slow
SIZE = 64
SIDECAR_KEYS = ["format", "architecture", "alpha", "input_size", "normalization", "preprocess", "labels",
                "quantization", "io_dtype", "min_runtime", "tool_versions", "source_model", "created"]
TFLITE_RUNTIME_SCRIPT = """
import json, sys
import numpy as np
from tflite_runtime.interpreter import Interpreter
results = {}
for path in sys.argv[1:]:
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.full(detail["shape"], 100, dtype=detail["dtype"]))
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    results[path] = interpreter.get_tensor(out["index"]).astype(float).tolist()
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("host_e2e")
    data, out = root / "data", root / "train"
    assert main(["synth-dataset", str(data), "--per-class", "24", "--size", str(SIZE), "--seed", "0"]) == 0
    assert main(["train", str(data), "--arch", "mobilenet_v2", "--alpha", "0.35", "--size", str(SIZE),
                 "--epochs", "2", "--batch", "16", "--lr", "1e-3", "--weights", "none", "--val-split", "0.25",
                 "--threads", "2", "--out", str(out)]) == 0
    for quant in ("int8", "float16", "dynamic"):
        args = ["convert", str(out / "model.keras"), "--quant", quant,
                "--out", str(root / f"m_{quant}.tflite")]
        if quant == "int8":
            args += ["--representative", str(data), "--num-calib", "16"]
        assert main(args) == 0
    return root


def test_train_writes_model_labels_and_metrics(workdir: Path) -> None:
    out = workdir / "train"
    assert (out / "model.keras").stat().st_size > 0
    assert (out / "labels.txt").read_text() == "no-pikachu\npikachu\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]["loss"]) == 2 and len(metrics["history"]["val_accuracy"]) == 2
    assert metrics["train_images"] == 36 and metrics["val_images"] == 12
    matrix = np.asarray(metrics["confusion_matrix"]["rows_true_cols_predicted"])
    assert matrix.shape == (2, 2) and matrix.sum() == 12 and matrix.sum(axis=1).tolist() == [6, 6]
    assert metrics["val_accuracy"] == pytest.approx(np.trace(matrix) / 12)
    assert metrics["bn_layers_recalibrated"] > 0
    assert metrics["model"]["labels"] == ["no-pikachu", "pikachu"]


def test_int8_is_full_integer_static_uint8_with_sidecar(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    model = workdir / "m_int8.tflite"
    info = inspect_flatbuffer(model)
    assert info.inputs[0].shape_signature == [1, SIZE, SIZE, 3]
    assert [t.dtype for t in info.inputs + info.outputs] == ["uint8", "uint8"]
    assert info.tensor_dtypes <= {"int8", "uint8", "int32"} and not info.custom_ops
    assert {name for name, _ in info.ops} >= {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "QUANTIZE"}
    sidecar = read_sidecar(model)
    assert list(sidecar) == SIDECAR_KEYS
    assert sidecar["format"] == SIDECAR_FORMAT
    assert sidecar["architecture"] == "mobilenet_v2" and sidecar["alpha"] == 0.35
    assert sidecar["input_size"] == [SIZE, SIZE]
    assert sidecar["labels"] == ["no-pikachu", "pikachu"]
    assert (sidecar["quantization"], sidecar["io_dtype"]) == ("int8", "uint8")
    assert sidecar["normalization"] == {"mean": 127.5, "std": 127.5}
    assert sidecar["min_runtime"] == info.min_runtime and info.min_runtime
    assert set(sidecar["tool_versions"]) == {"tensorflow", "edgedet"}


def _classify_with_daemon_runtime(model: Path, image: np.ndarray) -> tuple[str, float, list[float]]:
    """Top label, its score and all scores, through the daemon's Classifier with nothing but the path."""
    from edgedet.model.classifier import Classifier
    from edgedet.model.config import ModelConfig

    classifier = Classifier.from_config(ModelConfig(path=model))
    result = classifier.infer(image, top_k=2)
    scores = [c.score for c in sorted(result.top_k, key=lambda c: c.id)]
    return result.top_k[0].label, result.top_k[0].score, scores


def test_int8_loads_and_classifies_with_daemon_runtime(workdir: Path) -> None:
    from PIL import Image

    image_path = sorted((workdir / "data" / "pikachu").glob("*.png"))[0]
    image = np.asarray(Image.open(image_path).convert("RGB"))
    label, score, scores = _classify_with_daemon_runtime(workdir / "m_int8.tflite", image)
    assert label in ("no-pikachu", "pikachu")
    assert 0.0 <= score <= 1.0
    assert sum(scores) == pytest.approx(1.0, abs=0.02)  # a softmax survives int8 quantization


def test_float_conversions_load_in_litert_and_agree_with_keras(workdir: Path) -> None:
    from edgedet.host.evaluate import evaluate

    for quant in ("float16", "dynamic"):
        model = workdir / f"m_{quant}.tflite"
        info = inspect_flatbuffer(model)
        assert info.inputs[0].shape_signature == [1, SIZE, SIZE, 3]
        if quant == "dynamic":
            # tflite-runtime 2.14 stops at FULLY_CONNECTED v11; per-channel dense weights would need v12.
            assert all(version < 12 for name, version in info.ops if name == "FULLY_CONNECTED")
        result = evaluate(model, workdir / "data", reference=workdir / "train" / "model.keras")
        assert result["images"] == 48
        assert np.asarray(result["confusion_matrix"]).sum() == 48
        # float16 weights and dynamic-range int8 dense/conv weights barely move the 2-class decision.
        assert result["top1_agreement"] >= 0.9, result


def test_int8_evaluate_reports_agreement(workdir: Path) -> None:
    from edgedet.host.evaluate import evaluate

    reference = workdir / "train" / "model.keras"
    result = evaluate(workdir / "m_int8.tflite", workdir / "data", reference=reference)
    matrix = np.asarray(result["confusion_matrix"])
    assert matrix.sum() == 48 and result["accuracy"] == pytest.approx(np.trace(matrix) / 48)
    assert 0.0 <= result["top1_agreement"] <= 1.0 and "reference_accuracy" in result


def _tflite_runtime_python() -> str:
    python = os.environ.get("EDGEDET_TFLITE_RUNTIME_PYTHON")
    if not python:
        pytest.skip("set EDGEDET_TFLITE_RUNTIME_PYTHON to a python with tflite-runtime==2.14.0 and numpy<2")
    return python


def test_conversions_load_in_tflite_runtime_2_14(workdir: Path) -> None:
    python = _tflite_runtime_python()
    models = [str(workdir / f"m_{quant}.tflite") for quant in ("float16", "dynamic", "int8")]
    run = subprocess.run([python, "-c", TFLITE_RUNTIME_SCRIPT, *models], capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    outputs: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    for path in models:
        assert np.asarray(outputs[path]).shape == (1, 2)
    assert sum(outputs[models[0]][0]) == pytest.approx(1.0, abs=1e-3)


def _tiny_keras_model() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2, activation="softmax"),
    ])


def _run_tflite(path: Path, batch: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    detail, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(detail["index"], batch)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def test_saved_model_and_frozen_graph_convert_with_static_batch(tmp_path: Path) -> None:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    model = _tiny_keras_model()
    sample = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    expected = model(sample).numpy()

    model.export(str(tmp_path / "saved"), verbose=False)
    assert main(["convert", str(tmp_path / "saved"), "--out", str(tmp_path / "saved.tflite")]) == 0

    spec = tf.TensorSpec([None, 32, 32, 3], tf.float32, name="images")
    function = tf.function(lambda x: model(x)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(function)
    (tmp_path / "frozen.pb").write_bytes(frozen.graph.as_graph_def().SerializeToString())
    output_name = frozen.outputs[0].name.split(":")[0]
    assert main(["convert", str(tmp_path / "frozen.pb"), "--input-arrays", "images", "--output-arrays",
                 output_name, "--out", str(tmp_path / "frozen.tflite")]) == 0

    for name in ("saved", "frozen"):
        info = inspect_flatbuffer(tmp_path / f"{name}.tflite")
        assert info.inputs[0].shape_signature == [1, 32, 32, 3], name
        np.testing.assert_allclose(_run_tflite(tmp_path / f"{name}.tflite", sample), expected, atol=1e-5)


def test_imagenet_weights_offline_names_the_file_to_put(tmp_path: Path) -> None:
    from edgedet.host.synth import generate

    generate(tmp_path / "data", per_class=2, size=32)
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-m", "edgedet.host", "train", str(tmp_path / "data"), "--arch",
                          "mobilenet_v2", "--alpha", "0.35", "--size", "96", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert run.returncode == 2, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    file_name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    expected = tmp_path / "keras" / "models" / file_name
    assert f"put the file {expected.name} at {expected}" in last
    assert "Traceback" not in run.stderr


def test_int8_without_edgetpu_compiler_prints_the_command(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from edgedet.host.convert import ConvertOptions, convert
    from edgedet.host.synth import generate

    generate(tmp_path / "calib", per_class=4, size=32)
    _tiny_keras_model().save(tmp_path / "tiny.keras")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no edgetpu_compiler, whatever the machine has
    lines: list[str] = []
    out = tmp_path / "tiny_int8.tflite"
    result = convert(ConvertOptions(model=tmp_path / "tiny.keras", out=out, quantization="int8",
                                    representative=tmp_path / "calib", num_calib=8), log=lines.append)
    command = ["edgetpu_compiler", "-s", "-o", str(tmp_path), str(out)]
    assert result.edgetpu_command == command and result.edgetpu_log is None
    assert any(line.endswith(" ".join(command)) and "not on PATH" in line for line in lines)
    assert result.sidecar["labels"] == [] and result.sidecar["architecture"] is None


def test_local_weights_file_is_loaded_and_base_frozen(tmp_path: Path) -> None:
    import keras

    from edgedet.host.train import TrainOptions, build_model, resolve_weights

    keras.utils.set_random_seed(1)
    donor = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, include_top=False,
                                           weights=None, pooling="avg")
    weights = tmp_path / "base.weights.h5"
    donor.save_weights(weights)
    options = TrainOptions(data_dir=tmp_path, out=tmp_path, architecture="mobilenet_v2", alpha=0.35, size=64,
                           weights=str(weights), fine_tune_layers=3)
    model = build_model(options, num_classes=2, weights=resolve_weights(options))
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0],
                                  donor.get_layer("Conv1").get_weights()[0])
    base_layers = model.layers[:-2]  # the new head is dropout + dense
    assert len(base_layers) == len(donor.layers)
    assert [layer.trainable for layer in base_layers] == [False] * (len(base_layers) - 3) + [True] * 3
    assert model.get_layer("head").trainable


def test_a_garbage_collection_before_convert_does_not_delete_the_models_variables(tmp_path: Path) -> None:
    """A concrete function holds its variables weakly: the converter must keep the Keras model alive until
    convert() (this once failed at random in CI: "Called a function referencing variables which have been
    deleted")."""
    import gc

    import keras

    from edgedet.host import convert as host_convert

    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
    model.save(tmp_path / "tiny.keras")
    del model
    options = host_convert.ConvertOptions(model=tmp_path / "tiny.keras", out=tmp_path / "tiny.tflite",
                                          quantization="dynamic")
    converter, size, keep_alive = host_convert._converter_for("keras", options)
    gc.collect()
    assert size == (32, 32) and keep_alive is not None
    assert converter.convert()[4:8] == b"TFL3"
