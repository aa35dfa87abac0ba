"""The configured model file: it parses, its input, quantization and labels, an ``_edgetpu`` build and its
CPU twin. The file is read, not loaded into an interpreter: a running service may hold the Edge TPU."""

from __future__ import annotations

import dataclasses
from typing import Any

from edgedet.doctor import Context, Item
from edgedet.doctor.edgetpu import libedgetpu_problem

G = "model"


def check(ctx: Context) -> list[Item]:
    """Each classifier's model (``models:``: the items are named after the classifier)."""
    config = ctx.config
    if config.models is None:
        return _check_model(ctx, config.model, "model")
    return [dataclasses.replace(item, name=f"{entry.name}: {item.name}")
            for index, entry in enumerate(config.models) for item in _check_model(ctx, entry, f"models[{index}]")]


def _check_model(ctx: Context, cfg: Any, key: str) -> list[Item]:
    from edgedet.errors import EdgedetError
    from edgedet.model.classifier import cpu_twin
    from edgedet.model.config import default_model_path
    from edgedet.model.labels import resolve_labels
    from edgedet.model.tflite_file import read_tflite

    path = cfg.path or default_model_path()
    if path is None:
        return [Item(G, "file", "fail", f"{key}.path is not set and the bundled model was not found",
                     f"set {key}.path in config.yaml, or reinstall edgedet (scripts/install.sh)")]
    if not path.is_file():
        return [Item(G, "file", "fail", f"{key}.path {path}: file not found",
                     f"fix {key}.path, or fetch one: edgedet models pull NAME")]
    try:
        model = read_tflite(path)
        model.validate_classifier()
    except EdgedetError as exc:
        return [Item(G, "file", "fail", f"{path}: {exc}", exc.fix or "use a TFLite classification model")]
    items = [Item(G, "file", "ok", f"{path} ({model.size_bytes / 1e6:.2f} MB)")]
    spec = model.inputs[0]
    quant = f"scale {spec.scale:g}, zero point {spec.zero_point}" if spec.scale else "not quantized"
    items.append(Item(G, "input", "ok", f"{list(spec.shape)} {spec.dtype.lower()}, {quant}"))
    classes = int(model.outputs[0].shape[-1])
    try:
        labels, where = resolve_labels(cfg.labels, model)  # as the daemon's classifier finds them
    except EdgedetError as exc:
        items.append(Item(G, "labels", "fail", str(exc), exc.fix or f"fix {key}.labels"))
    else:
        if not labels:
            items.append(Item(G, "labels", "warn", f"no labels: classes are shown as numbers (0..{classes - 1})",
                              f"set {key}.labels to the model's labels file"))
        elif abs(len(labels) - classes) > 1:  # an off-by-one background class is common and handled
            items.append(Item(G, "labels", "warn", f"{len(labels)} labels ({where}) for {classes} classes",
                              "use the labels file that belongs to this model"))
        else:
            items.append(Item(G, "labels", "ok", f"{len(labels)} labels ({where}) for {classes} classes"))
    twin = cpu_twin(path, cfg.cpu_model)
    if not model.is_edgetpu:
        items.append(Item(G, "edgetpu build", "ok", "a CPU model (no edgetpu-custom-op)"))
        return items
    twin_text = f"CPU twin {twin}" if twin else f"no CPU twin ({key}.cpu_model, or the file without _edgetpu)"
    if cfg.delegate != "edgetpu":
        items.append(Item(G, "edgetpu build", "fail", f"an _edgetpu build with {key}.delegate cpu; {twin_text}",
                          f"set {key}.delegate: edgetpu, or point {key}.path at the CPU build"))
        return items
    problem = libedgetpu_problem(ctx)
    if problem is None:
        items.append(Item(G, "edgetpu build", "ok", f"an _edgetpu build; libedgetpu loads; {twin_text}"))
    elif twin is not None and cfg.fallback == "cpu":
        items.append(Item(G, "edgetpu build", "warn", f"an _edgetpu build but {problem}; the service will fall "
                          f"back to the {twin_text}", "install libedgetpu1-std and plug in the Coral (see edgetpu)"))
    else:
        items.append(Item(G, "edgetpu build", "fail", f"an _edgetpu build but {problem}; {twin_text}",
                          "install libedgetpu1-std (docs/troubleshooting.md), or set "
                          f"{key}.cpu_model and {key}.fallback: cpu"))
    return items
