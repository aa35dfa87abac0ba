"""Both runtimes side by side: ai-edge-litert (this venv) and tflite-runtime 2.14 with NumPy < 2 (its own venv).

scripts/test builds the second venv and points EDGEDET_TFLITE_RUNTIME_PYTHON at it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import V1, V2
from helpers import REPO, run_cli

from edgedet.model.runtime import select_runtime

OTHER_PYTHON = os.environ.get("EDGEDET_TFLITE_RUNTIME_PYTHON")
IMAGES = ("cat.bmp", "bird.bmp", "grace_hopper.bmp")


def test_auto_prefers_litert_and_reports_its_version():
    runtime = select_runtime("auto")
    assert runtime.name == "litert" and runtime.version.count(".") >= 1
    assert select_runtime("litert").version == runtime.version
    # Read from the package's __version__: the same as its distribution's metadata says.
    from importlib import metadata

    assert runtime.version == metadata.version("ai-edge-litert")


def test_unknown_and_missing_runtimes_are_clear_errors():
    from edgedet.errors import ModelError

    with pytest.raises(ModelError, match="unknown runtime 'onnx'"):
        select_runtime("onnx")
    try:
        import tflite_runtime  # noqa: F401
    except ImportError:
        with pytest.raises(ModelError, match=r"tflite-runtime is not importable.*pip install tflite-runtime"):
            select_runtime("tflite-runtime")


def _classify(python: str, runtime: str, model: Path, images: list[Path]) -> dict[str, dict]:
    # the same (numpy) resize in both venvs, so only the runtime differs (the tflite-runtime venv has no OpenCV)
    proc = subprocess.run([python, "-m", "edgedet", "classify", "--json", "--top-k", "5", "--runtime", runtime,
                           "--set", "model.preprocess.backend=numpy", "--model", str(model), *map(str, images)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return {Path(d["image"]).name: d for d in map(json.loads, proc.stdout.splitlines())}


@pytest.mark.shared
@pytest.mark.skipif(not OTHER_PYTHON, reason="EDGEDET_TFLITE_RUNTIME_PYTHON not set (scripts/test builds the "
                                             "tflite-runtime 2.14 venv where Python <= 3.11 exists)")
@pytest.mark.parametrize("model_name", [V2, V1])
def test_tflite_runtime_gives_the_same_answers(shared_models, model_name, tmp_path):
    images = [shared_models / name for name in IMAGES]
    import sys

    ours = _classify(sys.executable, "litert", shared_models / model_name, images)
    theirs = _classify(OTHER_PYTHON, "tflite-runtime", shared_models / model_name, images)
    table = []
    for name in IMAGES:
        a, b = ours[name], theirs[name]
        assert a["runtime"]["name"] == "litert" and b["runtime"]["name"] == "tflite-runtime"
        assert b["runtime"]["version"] == "2.14.0"
        assert a["top_k"][0]["class_id"] == b["top_k"][0]["class_id"], (name, a["top_k"], b["top_k"])
        score_b = {c["class_id"]: c["score"] for c in b["top_k"]}
        for c in a["top_k"][:3]:
            if c["class_id"] in score_b:
                diff = abs(c["score"] - score_b[c["class_id"]])
                table.append((name, c["class_id"], c["score"], score_b[c["class_id"]], diff))
                assert diff <= 0.05, (name, c, score_b[c["class_id"]])
    report = REPO / "benchmarks" / "results" / f"runtime_diff_{Path(model_name).stem}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps([dict(zip(("image", "class_id", "litert", "tflite_runtime", "abs_diff"), row))
                                  for row in table], indent=1))


@pytest.mark.shared
@pytest.mark.skipif(not OTHER_PYTHON, reason="EDGEDET_TFLITE_RUNTIME_PYTHON not set")
def test_published_results_hold_on_tflite_runtime(shared_models):
    v2 = _classify(OTHER_PYTHON, "tflite-runtime", shared_models / V2, [shared_models / n for n in IMAGES])
    assert v2["cat.bmp"]["top_k"][0]["class_id"] == 286 and v2["cat.bmp"]["top_k"][0]["score"] >= 0.70
    assert v2["bird.bmp"]["top_k"][0]["class_id"] == 20 and v2["bird.bmp"]["top_k"][0]["score"] >= 0.80
    assert v2["grace_hopper.bmp"]["top_k"][0]["class_id"] == 653
    v1 = _classify(OTHER_PYTHON, "tflite-runtime", shared_models / V1, [shared_models / "cat.bmp"])
    top3 = {c["class_id"]: c["score"] for c in v1["cat.bmp"]["top_k"][:3]}
    assert top3.get(283, 0) >= 0.25


def test_run_cli_reports_runtime_everywhere(tmp_path):
    import numpy as np
    import tflite_builder
    from PIL import Image

    model = tflite_builder.write(tmp_path / "tiny.tflite", tflite_builder.tiny_classifier())
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
    run = run_cli("classify", "--model", str(model), str(image))
    assert run.code == 0 and "litert" in run.out.splitlines()[0]
