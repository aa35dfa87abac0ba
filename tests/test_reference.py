"""The published reference results (google-coral/test_data) reproduced through `edgedet classify --json`."""

from __future__ import annotations

import pytest
from conftest import V1, V2
from helpers import run_cli

pytestmark = pytest.mark.shared


def _backends() -> list[str]:
    from edgedet.model.preprocess import opencv_resize

    return ["numpy", "opencv"] if opencv_resize() is not None else ["numpy"]


@pytest.fixture(scope="module", params=_backends())
def backend(request) -> str:
    """Both bilinear implementations must reproduce the references."""
    return request.param


@pytest.fixture(scope="module")
def v2_results(shared_models, backend):
    run = run_cli("classify", "--json", "--top-k", "5", "--model", str(shared_models / V2),
                  "--set", f"model.preprocess.backend={backend}",
                  *(str(shared_models / name) for name in ("cat.bmp", "bird.bmp", "grace_hopper.bmp")))
    assert run.code == 0, run.err
    return {line["image"].rsplit("/", 1)[-1]: line for line in run.json_lines()}


def test_v2_cat_is_egyptian_cat(v2_results):
    best = v2_results["cat.bmp"]["top_k"][0]
    assert (best["class_id"], best["label"]) == (286, "Egyptian cat")
    assert best["score"] >= 0.70


def test_v2_bird_is_chickadee(v2_results):
    best = v2_results["bird.bmp"]["top_k"][0]
    assert (best["class_id"], best["label"]) == (20, "chickadee")
    assert best["score"] >= 0.80


def test_v2_grace_hopper_is_military_uniform(v2_results):
    assert v2_results["grace_hopper.bmp"]["top_k"][0]["class_id"] == 653
    assert v2_results["grace_hopper.bmp"]["top_k"][0]["label"] == "military uniform"


def test_v1_cat_has_tiger_cat_in_top3(shared_models, backend):
    run = run_cli("classify", "--json", "--model", str(shared_models / V1), str(shared_models / "cat.bmp"),
                  "--set", f"model.preprocess.backend={backend}")
    assert run.code == 0, run.err
    top3 = run.json_lines()[0]["top_k"][:3]
    tiger = [c for c in top3 if c["class_id"] == 283]
    assert tiger and tiger[0]["label"] == "tiger cat" and tiger[0]["score"] >= 0.25, top3


def test_json_line_carries_runtime_delegate_and_stage_times(v2_results):
    line = v2_results["cat.bmp"]
    assert set(line) >= {"image", "top_k", "latency_ms", "runtime", "delegate"}
    assert line["runtime"]["name"] in {"litert", "tflite-runtime", "tensorflow"} and line["runtime"]["version"]
    assert line["delegate"] == {"requested": "cpu", "active": "cpu", "device": None, "fallback": False}
    assert set(line["latency_ms"]) == {"preprocess", "inference", "postprocess"}
    assert all(v > 0 for v in line["latency_ms"].values())
    scores = [c["score"] for c in line["top_k"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5


def test_console_output_lists_classes_and_times(shared_models):
    run = run_cli("classify", "--model", str(shared_models / V2), str(shared_models / "bird.bmp"))
    assert run.code == 0, run.err
    assert "chickadee" in run.out and "inference" in run.out
    assert "litert" in run.out or "tflite-runtime" in run.out
