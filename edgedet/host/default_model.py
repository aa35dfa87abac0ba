"""The recipe of the bundled default model, as one command: ``edgedet-host default-model --out models``.

Synthesizes the training set (seed 0), a held-out set (seed 1) and a fresh set (seed 2), trains MobileNetV2
0.35 at 96 px from scratch (no network: ImageNet weights cannot be fetched here), converts to int8 with
uint8 I/O, and measures int8 vs Keras on the held-out set and int8 alone on the fresh set. Every step is
seeded; TensorFlow op determinism is on, so a rerun on the same TensorFlow version and thread count
reproduces the weights.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from edgedet.host.synth import generate

NAME = "pikachu_mobilenet_v2_0.35_96_int8"
RECIPE: dict[str, Any] = {
    "architecture": "mobilenet_v2", "alpha": 0.35, "size": 96, "per_class": 400, "epochs": 25, "batch": 32,
    "learning_rate": 1e-3, "weights": "none", "augment": True, "seed": 0, "threads": 2, "num_calib": 200,
    "heldout_seed": 1, "fresh_seed": 2, "eval_per_class": 100,
}


def build_default_model(out: Path, work: Path | None = None,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the recipe; write the model, its sidecar, labels.txt and default_model_report.json into ``out``."""
    from edgedet.host.convert import ConvertOptions, convert
    from edgedet.host.evaluate import evaluate
    from edgedet.host.train import TrainOptions, train

    scratch = Path(work) if work else Path(tempfile.mkdtemp(prefix="edgedet-default-model-"))
    size, recipe = RECIPE["size"], RECIPE
    started = time.monotonic()
    generate(scratch / "train_data", per_class=recipe["per_class"], size=size, seed=recipe["seed"])
    generate(scratch / "heldout", per_class=recipe["eval_per_class"], size=size, seed=recipe["heldout_seed"])
    generate(scratch / "fresh", per_class=recipe["eval_per_class"], size=size, seed=recipe["fresh_seed"])
    metrics = train(TrainOptions(
        data_dir=scratch / "train_data", out=scratch / "train", architecture=recipe["architecture"],
        alpha=recipe["alpha"], size=size, epochs=recipe["epochs"], batch=recipe["batch"],
        learning_rate=recipe["learning_rate"], weights=recipe["weights"], augment=recipe["augment"],
        seed=recipe["seed"], threads=recipe["threads"], verbose=2), log=log)
    trained = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / f"{NAME}.tflite"
    result = convert(ConvertOptions(
        model=scratch / "train" / "model.keras", out=model_path, quantization="int8", io_dtype="uint8",
        representative=scratch / "train_data", num_calib=recipe["num_calib"], seed=recipe["seed"]), log=log)
    converted = time.monotonic()
    # The sidecar should not point at a temporary folder that is gone after this run.
    result.sidecar["source_model"] = f"edgedet-host default-model ({NAME} recipe)"
    result.sidecar_path.write_text(json.dumps(result.sidecar, indent=2) + "\n")
    shutil.copyfile(scratch / "train" / "labels.txt", out / "labels.txt")
    heldout = evaluate(model_path, scratch / "heldout", reference=scratch / "train" / "model.keras", log=log)
    fresh = evaluate(model_path, scratch / "fresh", log=log)
    report = {
        "model": model_path.name,
        "bytes": model_path.stat().st_size,
        "recipe": recipe,
        "train_seconds": round(trained - started, 1),
        "convert_seconds": round(converted - trained, 1),
        "val_accuracy_keras": metrics.get("val_accuracy"),
        "val_accuracy_before_bn_recalibration": metrics.get("val_accuracy_before_bn_recalibration"),
        "heldout": {k: heldout[k] for k in ("images", "accuracy", "reference_accuracy", "top1_agreement",
                                            "confusion_matrix")},
        "fresh": {k: fresh[k] for k in ("images", "accuracy", "confusion_matrix")},
        "ops": [f"{name} v{version}" for name, version in result.info.ops],
        "min_runtime": result.info.min_runtime,
        "tool_versions": result.sidecar["tool_versions"],
    }
    (out / "default_model_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(json.dumps(report, indent=2))
    if not work:
        shutil.rmtree(scratch, ignore_errors=True)
    return report
