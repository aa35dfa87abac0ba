"""The daemon takes a model's declared preprocessing from its sidecar unless the config sets it; the host
prepares images with the daemon's own Preprocessor; the Pareto frontier and bench's chart."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tflite_builder
from PIL import Image

from edgedet.config import load_config
from edgedet.host.data import PreprocessSpec, load_folder, pixel_preprocessor
from edgedet.model.classifier import Classifier
from edgedet.model.preprocess import resize_bilinear
from edgedet.pareto import pareto_front

SIDECAR = {"format": "edgedet-sidecar/1", "labels": ["a", "b", "c"],
           "preprocess": {"resize": "area", "crop": "center", "backend": "numpy", "roi": None}}


def _model(tmp_path: Path, sidecar: dict | None = SIDECAR) -> Path:
    path = tflite_builder.write(tmp_path / "m.tflite", tflite_builder.tiny_classifier(size=8))
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def _classifier(model: Path, *overrides: str) -> Classifier:
    config, _ = load_config(None, [f"model.path={model}", *overrides], search=False)
    return Classifier.from_config(config.model)


def test_sidecar_preprocessing_wins_over_defaults(tmp_path: Path) -> None:
    pre = _classifier(_model(tmp_path)).preprocessor
    assert (pre.method, pre.crop, pre.backend) == ("area", "center", "numpy")


def test_explicit_config_overrides_the_sidecar_with_a_warning(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edgedet.model"):
        pre = _classifier(_model(tmp_path), "model.preprocess.resize=bilinear").preprocessor
    assert (pre.method, pre.crop) == ("bilinear", "center")
    assert any("model.preprocess.resize: bilinear overrides m.tflite's sidecar" in r.getMessage()
               and "area" in r.getMessage() for r in caplog.records)


def test_without_sidecar_preprocessing_is_the_config_default(tmp_path: Path) -> None:
    pre = _classifier(_model(tmp_path, None)).preprocessor
    assert (pre.method, pre.crop) == ("bilinear", "full")


def test_unknown_sidecar_value_is_ignored(tmp_path: Path) -> None:
    sidecar = {**SIDECAR, "preprocess": {"resize": "bicubic-of-the-future", "crop": "full"}}
    assert _classifier(_model(tmp_path, sidecar)).preprocessor.method == "bilinear"


def test_host_images_are_the_daemons_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(photo).save(tmp_path / "a" / "x.png")
    Image.fromarray(photo[::-1]).save(tmp_path / "b" / "y.png")
    folder = load_folder(tmp_path, 32, spec=PreprocessSpec(backend="numpy"))
    assert np.array_equal(folder.images[0], resize_bilinear(photo, 32, 32))
    centred = load_folder(tmp_path, 32, spec=PreprocessSpec(crop="center", backend="numpy"))
    assert np.array_equal(centred.images[0], resize_bilinear(np.ascontiguousarray(photo[:, 10:70]), 32, 32))
    assert pixel_preprocessor(32, PreprocessSpec(backend="numpy")).backend == "numpy"


def test_pareto_front() -> None:
    points = [(10.0, 0.8), (20.0, 0.8), (30.0, 0.9), (5.0, 0.5), (40.0, 0.85)]
    assert pareto_front(points) == [3, 0, 2]
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]  # equal points dominate neither


def _report(accuracy: bool) -> dict:
    results = []
    for i, (name, p50, top1) in enumerate((("small.tflite", 2.0, 0.7), ("big.tflite", 9.0, 0.9))):
        results.append({"model": name, "threads": 1, "latency_ms": {"p50": p50}, "macs": (i + 1) * 10**7,
                        "params": (i + 1) * 10**5, "accuracy": {"top1": top1} if accuracy else None})
    return {"results": results}


@pytest.mark.parametrize("accuracy", [True, False])
def test_bench_chart_draws_only_measured_panels(tmp_path: Path, accuracy: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib", reason="needs the bench extra")
    import matplotlib.pyplot as plt

    from edgedet import bench

    drawn: list[list[str]] = []
    real_close = plt.close

    def record(figure: object) -> None:
        drawn.append([axis.get_xlabel() or axis.get_title() for axis in figure.axes])  # type: ignore[attr-defined]
        real_close(figure)

    monkeypatch.setattr(plt, "close", record)
    bench.write_plot(_report(accuracy), tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as image:
        assert np.asarray(image.convert("L")).std() > 5
    expected = ["median latency (ms)", "MACs (millions)", "parameters (millions)"]
    assert drawn == [(["median latency (ms)"] if accuracy else []) + expected]


def test_host_load_image_returns_a_new_array_per_image(tmp_path: Path) -> None:
    # One preprocessor for a whole folder: an image must not be overwritten by the next one's pixels.
    from edgedet.host.data import load_image

    for name, value in (("a.png", 10), ("b.png", 200)):
        Image.new("RGB", (64, 48), (value, value, value)).save(tmp_path / name)
    prepare = pixel_preprocessor(32)
    first = load_image(tmp_path / "a.png", 32, preprocessor=prepare)
    second = load_image(tmp_path / "b.png", 32, preprocessor=prepare)
    assert int(first.max()) == 10 and int(second.min()) == 200 and first.shape == (32, 32, 3)
