"""Real photos end to end (scikit-image's lfw_subset, faces vs not-faces): what the host measures is what
the daemon serves, and ``sweep`` -> ``bench --budget-ms`` pick the model the table implies.

Needs the ``host`` extra (TensorFlow) and scikit-image (``dev`` extra); skips with the reason otherwise.
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
pytest.importorskip("skimage", reason="needs scikit-image (the dev extra) for its lfw_subset photos")

from lfw import export_lfw, export_lfw_all
from PIL import Image

from edgedet.bench import budget_choice
from edgedet.host.cli import main as host_main

# Training from scratch on a shared 2-core machine: the module's fixtures take minutes, not seconds.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[1]


def _edgedet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "edgedet", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600, check=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lfw")
    train_dir, heldout_dir = export_lfw(root / "data")
    out = root / "train"
    assert host_main(["train", str(train_dir), "--arch", "mobilenet_v2", "--alpha", "0.35", "--size", "96",
                      "--weights", "none", "--augment", "--threads", "2", "--out", str(out)]) == 0
    model = root / "faces.tflite"
    assert host_main(["convert", str(out / "model.keras"), "--quant", "int8", "--io", "uint8",
                      "--representative", str(train_dir), "--out", str(model)]) == 0
    report = root / "eval.json"
    assert host_main(["evaluate", str(model), str(heldout_dir), "--reference", str(out / "model.keras"),
                      "--json", str(report)]) == 0
    return {"root": root, "model": model, "heldout": heldout_dir, "eval": json.loads(report.read_text())}


def test_sidecar_records_the_preprocessing(trained: dict[str, Any]) -> None:
    sidecar = json.loads(trained["model"].with_suffix(".json").read_text())
    assert sidecar["preprocess"]["resize"] == "bilinear" and sidecar["preprocess"]["crop"] == "full"
    assert sidecar["preprocess"]["backend"] in ("numpy", "opencv") and sidecar["preprocess"]["roi"] is None
    assert trained["eval"]["preprocess"]["source"] == "sidecar"


def test_training_from_scratch_without_lr_used_adams_default(trained: dict[str, Any]) -> None:
    metrics = json.loads((trained["root"] / "train" / "metrics.json").read_text())
    assert metrics["model"]["learning_rate"] == 1e-3


def test_host_evaluation_is_what_edgedet_classify_serves(trained: dict[str, Any]) -> None:
    result = trained["eval"]
    files = sorted(str(p) for p in trained["heldout"].rglob("*.png"))
    assert result["images"] == len(files) == 50
    run = _edgedet("classify", "--model", str(trained["model"]), "--json", *files, cwd=trained["root"])
    assert run.returncode == 0, run.stderr
    served = {row["image"]: row["top_k"][0]["label"] for row in map(json.loads, run.stdout.splitlines())}
    host = dict(zip(result["files"], result["predicted"]))
    agreement = np.mean([host[f] == served[f] for f in files])
    served_accuracy = np.mean([served[f] == Path(f).parent.name for f in files])
    print(f"int8 {result['accuracy']:.2f} keras {result['reference_accuracy']:.2f} "
          f"host-vs-classify agreement {agreement:.2f} classify accuracy {served_accuracy:.2f}")
    assert agreement >= 0.99
    assert served_accuracy == pytest.approx(result["accuracy"], abs=0.01)
    assert abs(result["accuracy"] - result["reference_accuracy"]) <= 0.02 + 1e-9
    assert result["reference_accuracy"] >= 0.8  # the photos are learnable: not a comparison of two coin tosses


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sweep")
    data = export_lfw_all(root / "photos")
    out = root / "sweep"
    assert host_main(["sweep", str(data), "--candidates", "v1_0.25_96,v2_0.35_96,v1_0.25_128", "--heldout", "0.2",
                      "--epochs", "1", "--weights", "none", "--lr", "1e-3", "--num-calib", "32", "--threads", "2",
                      "--out", str(out)]) == 0
    return {"root": root, "out": out, "report": json.loads((out / "sweep.json").read_text())}


def test_sweep_writes_table_and_chart(swept: dict[str, Any]) -> None:
    out, report = swept["out"], swept["report"]
    rows = report["results"]
    assert sorted(r["candidate"] for r in rows) == ["v1_0.25_128", "v1_0.25_96", "v2_0.35_96"]
    assert [r["macs"] for r in rows] == sorted(r["macs"] for r in rows)
    assert report["heldout_images"] == 40
    for row in rows:
        assert (out / row["model"]).is_file() and row["macs"] > 0 and row["params"] > 0
    best = max(r["accuracy"] for r in rows)
    assert any(r["pareto"] and r["accuracy"] == best for r in rows) and rows[0]["pareto"]
    assert (out / "sweep.csv").read_text().splitlines()[0].startswith("candidate,architecture")
    assert all(r["candidate"] in (out / "sweep.md").read_text() for r in rows)
    with Image.open(out / "sweep.png") as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape[0] > 100 and pixels.std() > 5 and (pixels < 128).mean() > 0.005


def test_bench_budget_picks_what_the_table_implies(swept: dict[str, Any]) -> None:
    out, rows = swept["out"], swept["report"]["results"]
    models = [str(out / r["model"]) for r in rows]
    chart = swept["root"] / "bench.png"
    run = _edgedet("bench", *models, "--images", swept["report"]["heldout_dir"], "--runs", "5", "--warmup", "1",
                   "--min-secs", "0", "--budget-ms", "100000", "--json", "--plot", str(chart), cwd=swept["root"])
    assert run.returncode == 0, run.stderr
    bench = json.loads(run.stdout)
    table = {r["model"]: r["accuracy"] for r in rows}
    measured = {r["model"]: r for r in bench["results"]}
    for name, accuracy in table.items():
        # Same files, the same Classifier and preprocessing: the same answers.
        assert measured[name]["accuracy"]["top1"] == pytest.approx(accuracy, abs=1e-9), name

    def implied(budget: float) -> list[str]:
        """The table's most accurate models among those whose measured median fits."""
        fitting = [n for n in table if measured[n]["latency_ms"]["p50"] <= budget]
        top = max(table[n] for n in fitting)
        return [n for n in fitting if table[n] >= top - 1e-9]

    assert bench["budget"]["model"] in implied(100000) and bench["budget"]["basis"] == "measured top-1"
    budget = sorted(r["latency_ms"]["p50"] for r in bench["results"])[1]  # between the measured medians
    assert budget_choice(bench["results"], budget)["model"] in implied(budget)
    with Image.open(chart) as image:
        assert np.asarray(image.convert("L")).std() > 5
