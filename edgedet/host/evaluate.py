"""Accuracy of a converted ``.tflite`` model on an image folder, and its top-1 agreement with Keras."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgedet.errors import EdgedetError
from edgedet.host.data import confusion_matrix, load_folder, normalize
from edgedet.host.sidecar import MOBILENET_NORMALIZATION, read_sidecar, sidecar_path


def _interpreter(path: Path) -> Any:
    """The daemon's runtime (ai-edge-litert) when installed, else TensorFlow's own interpreter."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # same constructor and methods as the litert one
    try:
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise EdgedetError(f"cannot load the TFLite model ({err})", where=path) from None
    return interpreter


def quantize_input(real: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Real-valued input -> the input tensor's dtype, with its quantization (identity for float)."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return real.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.floor(real / scale + zero_point + 0.5), info.min, info.max).astype(dtype)


def dequantize_output(raw: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.issubdtype(detail["dtype"], np.floating):
        return raw.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (raw.astype(np.float32) - zero_point) * scale


def tflite_predict(interpreter: Any, images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Scores (N, classes) for uint8 images, one invoke per image (the model has a batch of 1)."""
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    scores = []
    for image in images:
        real = normalize(image[None], mean, std)
        interpreter.set_tensor(input_detail["index"], quantize_input(real, input_detail))
        interpreter.invoke()
        scores.append(dequantize_output(interpreter.get_tensor(output_detail["index"]), output_detail)[0])
    return np.stack(scores)


def evaluate(model_path: Path, data_dir: Path, reference: Path | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Accuracy and confusion matrix of ``model_path`` on ``data_dir``; agreement with ``reference``."""
    if not model_path.is_file():
        raise EdgedetError("model not found", where=model_path)
    sidecar = read_sidecar(model_path) if sidecar_path(model_path).is_file() else {}
    normalization = sidecar.get("normalization", MOBILENET_NORMALIZATION)
    mean, std = float(normalization["mean"]), float(normalization["std"])
    interpreter = _interpreter(model_path)
    height, width = (int(d) for d in interpreter.get_input_details()[0]["shape"][1:3])
    if height != width:
        raise EdgedetError(f"non-square input {height}x{width} is not supported by evaluate",
                           where=model_path)
    folder = load_folder(data_dir, height)
    for path, reason in folder.skipped:
        log(f"skipped {path}: {reason}")
    labels = list(sidecar.get("labels") or folder.class_names)
    unknown = [name for name in folder.class_names if name not in labels]
    if unknown:
        raise EdgedetError(f"class folder(s) {unknown} are not among the model's labels {labels}",
                           where=data_dir, fix="evaluate on folders named like the training classes")
    # Ground truth in the model's label order, so matrix rows/columns follow the model's labels.
    true_ids = np.asarray([labels.index(folder.class_names[c]) for c in folder.class_ids], dtype=np.int64)
    started = time.monotonic()
    scores = tflite_predict(interpreter, folder.images, mean, std)
    seconds = time.monotonic() - started
    predicted = scores.argmax(axis=1)
    result: dict[str, Any] = {
        "model": str(model_path),
        "images": len(folder.images),
        "labels": labels,
        "accuracy": float((predicted == true_ids).mean()),
        "confusion_matrix": confusion_matrix(true_ids, predicted, len(labels)),
        "ms_per_image": round(1000 * seconds / len(folder.images), 2),
        "skipped": [[str(p), reason] for p, reason in folder.skipped],
    }
    if reference is not None:
        if not reference.exists():
            raise EdgedetError("reference model not found", where=reference)
        import keras

        try:
            keras_model = keras.models.load_model(reference, compile=False)
        except Exception as err:  # Keras raises many types for a corrupt or foreign file
            raise EdgedetError(f"cannot load the reference Keras model ({type(err).__name__})",
                               where=reference) from None
        keras_scores = keras_model.predict(normalize(folder.images, mean, std), batch_size=64, verbose=0)
        keras_predicted = np.argmax(keras_scores, axis=1)
        result["reference"] = str(reference)
        result["reference_accuracy"] = float((keras_predicted == true_ids).mean())
        result["top1_agreement"] = float((keras_predicted == predicted).mean())
    return result
