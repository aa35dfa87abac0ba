"""Accuracy of a converted ``.tflite`` model on an image folder, and its top-1 agreement with Keras.

The ``.tflite`` model runs in the daemon's own :class:`~edgedet.model.classifier.Classifier` (runtime,
preprocessing and quantization as the sidecar and the daemon's defaults decide them), so the accuracy printed
here is the accuracy ``edgedet classify`` and ``edgedet bench --images`` measure on the same files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgedet.errors import EdgedetError
from edgedet.host.data import PreprocessSpec, confusion_matrix, load_folder, normalize


def daemon_classifier(model_path: Path) -> Any:
    """The model as the daemon loads it with an empty config (CPU, sidecar preprocessing)."""
    from edgedet.model.classifier import Classifier
    from edgedet.model.config import ModelConfig

    return Classifier.from_config(ModelConfig(path=model_path, fallback="fail"))


def evaluate(model_path: Path, data_dir: Path, reference: Path | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Accuracy and confusion matrix of ``model_path`` on ``data_dir``; agreement with ``reference``."""
    if not model_path.is_file():
        raise EdgedetError("model not found", where=model_path)
    classifier = daemon_classifier(model_path)  # its warnings (labels, overrides) go to the logging module
    width, height = classifier.input_size
    prepared = classifier.preprocessor
    # The pixels the daemon feeds the model; at the model's size its preprocessor passes them unchanged.
    spec = PreprocessSpec(prepared.method, prepared.crop, prepared.backend)
    folder = load_folder(data_dir, (width, height), spec=spec)
    for path, reason in folder.skipped:
        log(f"skipped {path}: {reason}")
    labels = list(classifier.labels or folder.class_names)
    unknown = [name for name in folder.class_names if name not in labels]
    if unknown:
        raise EdgedetError(f"class folder(s) {unknown} are not among the model's labels {labels}",
                           where=data_dir, fix="evaluate on folders named like the training classes")
    # Ground truth in the model's label order, so matrix rows/columns follow the model's labels.
    true_ids = np.asarray([labels.index(folder.class_names[c]) for c in folder.class_ids], dtype=np.int64)
    started = time.monotonic()
    predicted = np.asarray([classifier.infer(image, top_k=1).top_k[0].id for image in folder.images],
                           dtype=np.int64)
    seconds = time.monotonic() - started
    result: dict[str, Any] = {
        "model": str(model_path),
        "images": len(folder.images),
        "labels": labels,
        "accuracy": float((predicted == true_ids).mean()),
        "confusion_matrix": confusion_matrix(true_ids, predicted, len(labels)),
        "predicted": [labels[i] for i in predicted],
        "files": [str(p) for p in folder.files],
        "preprocess": classifier.info["preprocess"],
        "runtime": classifier.info["runtime"],
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
        norm = classifier.normalization
        mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
        keras_scores = keras_model.predict(normalize(folder.images, mean, std), batch_size=64, verbose=0)
        keras_predicted = np.argmax(keras_scores, axis=1)
        result["reference"] = str(reference)
        result["reference_accuracy"] = float((keras_predicted == true_ids).mean())
        result["top1_agreement"] = float((keras_predicted == predicted).mean())
    return result
