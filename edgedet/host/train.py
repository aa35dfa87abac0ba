"""Transfer learning: a Keras MobileNet (V1 or V2) with a new classification head on an image folder."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from edgedet.errors import EdgedetError
from edgedet.host.data import (
    ImageFolder,
    PreprocessSpec,
    confusion_matrix,
    imbalance_note,
    load_folder,
    normalize,
    resolved,
)
from edgedet.host.sidecar import MOBILENET_NORMALIZATION

ARCHITECTURES = ("mobilenet_v1", "mobilenet_v2")
# The (alpha, size) pairs Keras publishes ImageNet weights for.
IMAGENET_ALPHAS = {"mobilenet_v1": (0.25, 0.5, 0.75, 1.0), "mobilenet_v2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)}
IMAGENET_SIZES = {"mobilenet_v1": (128, 160, 192, 224), "mobilenet_v2": (96, 128, 160, 192, 224)}
WEIGHTS_URLS = {
    "mobilenet_v1": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/",
    "mobilenet_v2": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/",
}
KERAS_MODEL_NAME = "model.keras"
LABELS_NAME = "labels.txt"
METRICS_NAME = "metrics.json"


class TrainOptions(NamedTuple):
    data_dir: Path
    out: Path
    architecture: str = "mobilenet_v2"
    alpha: float = 0.35
    size: int = 96
    epochs: int = 5
    batch: int = 32
    learning_rate: float | None = None  # None: learning_rate_for(weights)
    val_split: float = 0.2
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file
    fine_tune_layers: int | None = None  # None: all layers when weights=none, else 0 (head only)
    augment: bool = False
    seed: int = 0
    threads: int | None = None
    verbose: int = 1  # Keras: 1 = progress bars, 2 = one line per epoch, 0 = silent
    # The daemon's model.preprocess settings the images are prepared with (and the sidecar records).
    preprocess: PreprocessSpec = PreprocessSpec()


def imagenet_weights_file(architecture: str, alpha: float, size: int) -> str:
    """The file name Keras caches the no-top ImageNet weights under (keras/src/applications/*)."""
    if architecture == "mobilenet_v1":
        alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
        return f"mobilenet_{alpha_text}_{size}_tf_no_top.h5"
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{size}_no_top.h5"


def keras_cache_dir() -> Path:
    """Where ``keras.utils.get_file`` looks for cached files, as Keras decides it."""
    try:
        from keras.src.backend.config import keras_home

        home = Path(keras_home())
    except ImportError:  # a Keras that moved its private config module: use its documented default
        home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return home.expanduser() / "models"


def validate_options(options: TrainOptions) -> None:
    """Refuse what Keras would fail on later, with a one-line reason."""
    if options.architecture not in ARCHITECTURES:
        raise EdgedetError(f"unknown architecture {options.architecture!r}",
                           fix=f"use one of {', '.join(ARCHITECTURES)}")
    if not 0 < options.alpha <= 2:
        raise EdgedetError(f"--alpha {options.alpha} is out of range", fix="use a width multiplier in (0, 2]")
    if options.size < 32:
        raise EdgedetError(f"--size {options.size} is too small", fix="MobileNet needs at least 32 px")
    if options.weights == "imagenet":
        alphas, sizes = IMAGENET_ALPHAS[options.architecture], IMAGENET_SIZES[options.architecture]
        if options.alpha not in alphas:
            raise EdgedetError(f"no ImageNet weights for {options.architecture} alpha {options.alpha}",
                               fix=f"use --alpha in {list(alphas)} or --weights none")
        if options.size not in sizes:
            raise EdgedetError(f"no ImageNet weights for {options.architecture} at {options.size} px",
                               fix=f"use --size in {list(sizes)} or --weights none")
    elif options.weights != "none" and not Path(options.weights).is_file():
        raise EdgedetError("weights file not found", where=options.weights,
                           fix="pass --weights imagenet, none, or the path of a Keras .h5/.weights.h5 file")
    if not 0 <= options.val_split < 1:
        raise EdgedetError(f"--val-split {options.val_split} must be in [0, 1)")
    if options.epochs < 1 or options.batch < 1:
        raise EdgedetError("--epochs and --batch must be >= 1")
    if options.learning_rate is not None and options.learning_rate <= 0:
        raise EdgedetError(f"--lr {options.learning_rate} must be > 0")


def learning_rate_for(weights: str, explicit: float | None = None) -> float:
    """Adam's learning rate: ``explicit``, else 1e-4 to fine-tune trained weights without wrecking them, 1e-3
    (Adam's own default) from scratch, where 1e-4 leaves a 5-epoch model undertrained and its full-integer
    conversion several points below the float model (README, the host script)."""
    if explicit is not None:
        return explicit
    return 1e-3 if weights == "none" else 1e-4


def check_writable_dir(out: Path) -> None:
    """Create ``out`` or say why it cannot be written, before any long work starts."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".edgedet-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise EdgedetError(f"output folder is not writable ({err.strerror})", where=out,
                           fix="choose a writable --out") from None


def resolve_weights(options: TrainOptions) -> str | None:
    """The ``weights=`` argument for keras.applications; offline-safe for ImageNet weights."""
    if options.weights == "none":
        return None
    if options.weights != "imagenet":
        return str(Path(options.weights).resolve())
    file_name = imagenet_weights_file(options.architecture, options.alpha, options.size)
    cached = keras_cache_dir() / file_name
    if cached.is_file():
        return str(cached)  # load the cached file by path: no network access at all
    import keras

    try:
        return keras.utils.get_file(file_name, WEIGHTS_URLS[options.architecture] + file_name,
                                    cache_subdir="models")
    except Exception:  # any download failure (DNS, proxy, HTTP error) gets the same remedy
        raise EdgedetError(
            f"ImageNet weights are not cached and cannot be downloaded; put the file {file_name} "
            f"at {cached} (from {WEIGHTS_URLS[options.architecture]}{file_name})",
            fix="or train with --weights none") from None


def split_indices(class_ids: np.ndarray, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified, seeded train/validation split: each class keeps the same fraction for validation."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for class_id in np.unique(class_ids):
        members = rng.permutation(np.flatnonzero(class_ids == class_id))
        n_val = round(len(members) * val_split)
        if val_split > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def build_model(options: TrainOptions, num_classes: int, weights: str | None) -> Any:
    """MobileNet without its top, global average pooling, dropout and a new softmax head.

    The model takes normalized input (``(pixel - 127.5) / 127.5``), not raw pixels: the normalization
    stays outside the graph so the int8 converter maps uint8 pixels straight onto the input quantization.
    """
    import keras

    application = (keras.applications.MobileNet if options.architecture == "mobilenet_v1"
                   else keras.applications.MobileNetV2)
    try:
        base = application(input_shape=(options.size, options.size, 3), alpha=options.alpha,
                           include_top=False, weights=weights, pooling="avg")
    except (ValueError, OSError) as err:
        raise EdgedetError(f"cannot build {options.architecture} alpha {options.alpha} at {options.size} px "
                           f"with these weights ({str(err).splitlines()[0]})",
                           where=weights if weights else None) from None
    x = keras.layers.Dropout(0.2, name="head_dropout")(base.output)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    model = keras.Model(base.input, outputs, name=f"{options.architecture}_{options.alpha}_{options.size}")
    fine_tune = options.fine_tune_layers
    if fine_tune is None:
        fine_tune = len(base.layers) if weights is None else 0
    trainable_from = len(base.layers) - fine_tune
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= trainable_from
    return model


def recalibrate_batchnorm(model: Any, images: np.ndarray, batch: int = 64) -> int:
    """Replace BatchNorm moving statistics by their average over ``images`` (uint8); return the count.

    A short run from scratch leaves moving means/variances near their initial 0/1 (Keras MobileNets use
    momentum 0.999), so the inference-mode model sees the wrong scales and drops to chance. Running the
    training data through in training mode with momentum (step-1)/step makes the moving statistics the
    plain average of the per-batch statistics the weights were trained against.
    """
    import keras

    layers = [layer for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not layers:
        return 0
    saved = [layer.momentum for layer in layers]
    try:
        for step, start in enumerate(range(0, len(images), batch), 1):
            for layer in layers:
                layer.momentum = (step - 1) / step
            model(normalize(images[start:start + batch]), training=True)
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    return len(layers)


def _augmenter(seed: int) -> Callable:
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed),
        keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed),
        keras.layers.RandomContrast(0.2, seed=seed),
    ], name="augment")


def predict_ids(model: Any, images: np.ndarray, batch: int = 64) -> np.ndarray:
    if len(images) == 0:
        return np.zeros((0,), dtype=np.int64)
    probabilities = model.predict(normalize(images), batch_size=batch, verbose=0)
    return np.argmax(probabilities, axis=1).astype(np.int64)


def train(options: TrainOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train; save ``model.keras``, ``labels.txt`` and ``metrics.json`` into ``options.out``."""
    validate_options(options)
    spec = resolved(options.preprocess)  # the sidecar names the implementation, not "auto"
    folder: ImageFolder = load_folder(options.data_dir, options.size, spec=spec)
    check_writable_dir(options.out)
    counts = folder.counts()
    log(f"loaded {len(folder.images)} images of {len(counts)} classes from {options.data_dir}: "
        + ", ".join(f"{k}={v}" for k, v in counts.items()))
    for path, reason in folder.skipped:
        log(f"skipped {path}: {reason}")
    note = imbalance_note(counts)
    if note:
        log(f"warning: {note}")
    weights = resolve_weights(options)

    import keras
    import tensorflow as tf

    if options.threads:
        tf.config.threading.set_intra_op_parallelism_threads(options.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(options.seed)
    tf.config.experimental.enable_op_determinism()

    train_idx, val_idx = split_indices(folder.class_ids, options.val_split, options.seed)
    x_train, y_train = folder.images[train_idx], folder.class_ids[train_idx]
    x_val, y_val = folder.images[val_idx], folder.class_ids[val_idx]
    model = build_model(options, len(folder.class_names), weights)
    learning_rate = learning_rate_for(options.weights, options.learning_rate)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    train_ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
        len(x_train), seed=options.seed, reshuffle_each_iteration=True).batch(options.batch)
    if options.augment:
        augment = _augmenter(options.seed)
        train_ds = train_ds.map(lambda x, y: (augment(tf.cast(x, tf.float32), training=True), y))
    train_ds = train_ds.map(lambda x, y: ((tf.cast(x, tf.float32) - 127.5) / 127.5, y)).prefetch(2)
    val_data = (normalize(x_val), y_val) if len(x_val) else None

    started = time.monotonic()
    history = model.fit(train_ds, epochs=options.epochs, validation_data=val_data, verbose=options.verbose,
                        shuffle=False)  # train_ds is already shuffled, seeded
    train_seconds = time.monotonic() - started

    metrics: dict[str, Any] = {
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
        "train_seconds": round(train_seconds, 1),
        "train_images": len(x_train),
        "val_images": len(x_val),
        "class_counts": counts,
        "skipped": [[str(p), reason] for p, reason in folder.skipped],
        "imbalance": note,
    }
    if len(x_val):
        metrics["val_accuracy_before_bn_recalibration"] = float((predict_ids(model, x_val) == y_val).mean())
    recalibrated = recalibrate_batchnorm(model, x_train) if weights is None else 0
    metrics["bn_layers_recalibrated"] = recalibrated
    if len(x_val):
        predicted = predict_ids(model, x_val)
        metrics["val_accuracy"] = float((predicted == y_val).mean())
        metrics["confusion_matrix"] = {"labels": folder.class_names,
                                       "rows_true_cols_predicted": confusion_matrix(
                                           y_val, predicted, len(folder.class_names))}
        log(f"validation accuracy {metrics['val_accuracy']:.4f} on {len(x_val)} images"
            + (f" (before BatchNorm recalibration {metrics['val_accuracy_before_bn_recalibration']:.4f})"
               if recalibrated else ""))
    metrics["model"] = {
        "architecture": options.architecture,
        "alpha": options.alpha,
        "input_size": [options.size, options.size],
        "normalization": dict(MOBILENET_NORMALIZATION),
        "preprocess": spec.as_dict(),
        "labels": folder.class_names,
        "weights": options.weights if options.weights in ("imagenet", "none") else str(options.weights),
        "epochs": options.epochs,
        "batch": options.batch,
        "learning_rate": learning_rate,
        "seed": options.seed,
        "augment": options.augment,
        "data_dir": str(options.data_dir),
        "tool_versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                          "python": sys.version.split()[0]},
    }
    model.save(options.out / KERAS_MODEL_NAME)
    (options.out / LABELS_NAME).write_text("".join(f"{name}\n" for name in folder.class_names))
    (options.out / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")
    log(f"wrote {options.out / KERAS_MODEL_NAME}, {LABELS_NAME}, {METRICS_NAME} "
        f"({train_seconds:.1f} s training)")
    return metrics
