"""model.preprocess.roi: one frame, two scenes side by side; each half classifies as its own scene with the
matching region of interest, in ``run``, ``classify``, ``collect`` and ``bench --images`` alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, assert_one_line_error, run_cli
from PIL import Image

from edgedet.config import build_config
from edgedet.errors import ConfigError
from edgedet.frames.scenes import NEGATIVE, POSITIVE, make_image
from edgedet.model.classifier import Classifier
from edgedet.model.config import ModelConfig, PreprocessConfig
from edgedet.model.preprocess import InputQuantization, Preprocessor, center_crop, resize

MODEL = REPO / "models" / "pikachu_mobilenet_v2_0.35_96_int8.tflite"
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
RAW = InputQuantization(np.dtype(np.uint8), np.ones(3, np.float32), np.zeros(3, np.float32), raw=True)


def _arg(roi: tuple[float, ...]) -> str:
    return ",".join(str(v) for v in roi)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``pq.png``: the creature left, another scene right; ``qp.png``: the same two halves swapped."""
    folder = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(0)
    positive = np.asarray(make_image(rng, 192, positive=True))
    negative = np.asarray(make_image(rng, 192, positive=False))
    paths = {}
    for name, halves in (("pq", (positive, negative)), ("qp", (negative, positive))):
        paths[name] = folder / name / f"{name}.png"  # one folder each: an images source of one frame
        paths[name].parent.mkdir()
        Image.fromarray(np.concatenate(halves, axis=1)).save(paths[name])
    return paths


@pytest.fixture(scope="module")
def whole_frame() -> Classifier:
    return Classifier(ModelConfig(path=MODEL))


# (roi, the scene pq.png shows in it, the scene qp.png shows in it)
CASES = [(LEFT, POSITIVE, NEGATIVE), (RIGHT, NEGATIVE, POSITIVE)]


def test_roi_is_cut_before_the_crop_and_the_resize() -> None:
    frame = np.random.default_rng(3).integers(0, 256, (200, 400, 3), np.uint8)
    pre = Preprocessor(96, 96, RAW, backend="numpy", roi=(0.0, 0.0, 1.0, 0.5))
    assert np.array_equal(pre.view(frame), resize(frame[:100, :], 96, 96))
    # crop: center then takes the region's centred square: columns 150..250 of rows 0..100
    centred = Preprocessor(96, 96, RAW, crop="center", backend="numpy", roi=(0.0, 0.0, 1.0, 0.5))
    assert np.array_equal(centred.view(frame), resize(frame[:100, 150:250], 96, 96))
    assert np.array_equal(centred.view(frame), resize(center_crop(frame[:100], 96, 96), 96, 96))
    assert centred.frame_size_hint() == (96, 192)  # the Pi camera's lores stream: the ROI at the input size


def test_classifier_info_shows_the_roi(whole_frame: Classifier) -> None:
    classifier = Classifier(ModelConfig(path=MODEL, preprocess=PreprocessConfig(roi=RIGHT)))
    assert classifier.info["preprocess"]["roi"] == list(RIGHT)
    assert whole_frame.info["preprocess"]["roi"] is None


def test_a_bad_roi_is_one_line() -> None:
    run = run_cli("check-config", "--set", "model.preprocess.roi=[0.6,0,0.5,1]", "--set", f"model.path={MODEL}")
    assert_one_line_error(run, "model.preprocess.roi", "0 <= x1 < x2 <= 1", "[0.6, 0, 0.5, 1]")


@pytest.mark.parametrize("roi", [[0, 0, 1, 1.5], [-0.1, 0, 1, 1], [0, 0.5, 1, 0.5]])
def test_the_roi_rule(roi: list[float]) -> None:
    with pytest.raises(ConfigError, match=r"model\.preprocess\.roi: must be \[x1, y1, x2, y2\]"):
        build_config({"model": {"preprocess": {"roi": roi}}}, "cfg.yaml")


@pytest.mark.parametrize(("roi", "in_pq", "in_qp"), CASES)
def test_classify(split: dict[str, Path], roi: tuple[float, ...], in_pq: str, in_qp: str) -> None:
    run = run_cli("classify", "--model", str(MODEL), "--json", "--roi", _arg(roi), str(split["pq"]),
                  str(split["qp"]))
    assert run.code == 0, run.err
    assert [line["top_k"][0]["label"] for line in run.json_lines()] == [in_pq, in_qp]


def _config(tmp_path: Path, image_folder: Path, roi: tuple[float, ...]) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "model": {"path": str(MODEL), "preprocess": {"roi": list(roi)}},
        "source": {"type": "images", "path": str(image_folder), "fps": 0, "loop": False},
        "publish": {"console": False, "jsonl_path": str(tmp_path / "results.jsonl")},
    }))
    return config


@pytest.mark.parametrize(("roi", "in_pq", "in_qp"), CASES)
def test_run(split: dict[str, Path], tmp_path: Path, roi: tuple[float, ...], in_pq: str, in_qp: str) -> None:
    for name, scene in (("pq", in_pq), ("qp", in_qp)):
        work = tmp_path / name
        work.mkdir()
        config = _config(work, split[name].parent, roi)
        run = run_cli("run", "--config", str(config), "--stats-file", str(work / "stats.json"))
        assert run.code == 0, run.err
        records = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
        assert [r["label"] for r in records] == [scene]
        assert json.loads((work / "stats.json").read_text())["preprocess"]["roi"] == list(roi)


@pytest.mark.parametrize(("roi", "in_pq", "in_qp"), CASES)
def test_collect(split: dict[str, Path], whole_frame: Classifier, tmp_path: Path, roi: tuple[float, ...],
                 in_pq: str, in_qp: str) -> None:
    for name, scene in (("pq", in_pq), ("qp", in_qp)):
        config = _config(tmp_path, split[name].parent, roi)
        run = run_cli("collect", str(tmp_path / "data"), "--label", name, "--count", "1", "--config", str(config),
                      "--set", "model.preprocess.backend=numpy")
        assert run.code == 0, run.err
        [saved] = [Path(line) for line in run.out.splitlines()]
        assert sorted((tmp_path / "data" / name).iterdir()) == [saved]
        view = np.asarray(Image.open(saved))
        pre = Preprocessor(96, 96, RAW, backend="numpy", roi=roi)
        assert np.array_equal(view, pre.view(np.asarray(Image.open(split[name]))))  # as the model sees it
        # the saved view alone (no ROI any more) is the scene of that half
        assert whole_frame.infer(Image.open(saved)).top_k[0].label == scene


@pytest.mark.parametrize(("roi", "top1"), [(LEFT, 1.0), (RIGHT, 0.0)])
def test_bench_images(split: dict[str, Path], tmp_path: Path, roi: tuple[float, ...], top1: float) -> None:
    labelled = tmp_path / "labelled"
    for label, name in ((POSITIVE, "pq"), (NEGATIVE, "qp")):  # labelled by what the left half shows
        (labelled / label).mkdir(parents=True)
        (labelled / label / f"{name}.png").write_bytes(split[name].read_bytes())
    run = run_cli("bench", str(MODEL), "--images", str(labelled), "--roi", _arg(roi), "--json", "--runs", "1",
                  "--warmup", "0", "--min-secs", "0")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert report["options"]["roi"] == list(roi)
    assert report["results"][0]["accuracy"]["top1"] == top1


def test_bench_refuses_a_bad_roi() -> None:
    run = run_cli("bench", str(MODEL), "--roi", "0.5,0,0.2,1")
    assert run.code == 2 and "--roi" in run.err and "0 <= x1 < x2 <= 1" in run.err and "Traceback" not in run.err
