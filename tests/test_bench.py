"""`edgedet bench` with the real runtime and the shared models (short runs: no timing asserts here)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from edgedet.bench import bench_main, budget_choice, label_ids_for, latency_stats
from edgedet.model.labels import load_labels
from tests.conftest import REPO, V1, V1_EDGETPU, V2
from tests.tflite_builder import tiny_classifier, write

SCHEMA = json.loads((REPO / "docs" / "schemas" / "bench.schema.json").read_text())
QUICK = ["--runs", "3", "--warmup", "1", "--min-secs", "0"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    code = bench_main(argv)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if not line.startswith("edgedet: warning:")]
    return code, captured.out, errors


def test_json_report_validates_and_is_sorted(shared_models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, errors = run([str(shared_models / V2), str(shared_models / V1), "--json", *QUICK], capsys)
    assert (code, errors) == (0, [])
    report = json.loads(out)
    jsonschema.validate(report, SCHEMA)
    v1, v2 = report["results"]  # sorted by median: the 0.25/128 model is ~20x cheaper
    assert (v1["model"], v2["model"]) == (V1, V2)
    assert v1["relative_to_fastest"] == 1.0 and v2["relative_to_fastest"] > 1.0
    assert (v1["macs"], v1["params"]) == (13_570_304, 467_593)
    assert v2["input_shape"] == [1, 224, 224, 3] and v2["input_dtype"] == "uint8"
    assert v1["image"].endswith("cat.bmp")  # a real image, found beside the model
    assert v1["labels"] == "metadata" and v1["warnings"] == []  # both models embed their 1001 labels
    assert v1["sha256"] == (shared_models / "SHA256SUMS").read_text().split(V1)[0].split()[-1]
    for r in report["results"]:
        lat = r["latency_ms"]
        assert lat["count"] >= 3
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["runtime"] == "litert" and r["threads"] == 1 and r["delegate"] == "cpu"
        assert r["file_bytes"] == (shared_models / r["model"]).stat().st_size
        assert r["peak_rss_mb"] > 10


def hand_checked_images(shared_models: Path, root: Path) -> Path:
    """5 images whose V2 predictions are known (shared/models/README.md and a manual run):
    cat->Egyptian cat (top-1), bird->chickadee (top-1), grace_hopper->military uniform (top-1),
    cat as 'Tiger Cat' (3rd for V2: top-5 only), cat as 'goldfish' (neither)."""
    for folder, image in [("Egyptian cat", "cat.bmp"), ("chickadee", "bird.bmp"),
                          ("military uniform", "grace_hopper.bmp"), ("Tiger Cat", "cat.bmp"),
                          ("goldfish", "cat.bmp")]:
        (root / folder).mkdir(parents=True)
        (root / folder / image).symlink_to(shared_models / image)
    return root


def test_accuracy_folder_matches_hand_count(shared_models: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    images = hand_checked_images(shared_models, tmp_path / "set")
    labels = shared_models / "imagenet_labels.txt"
    code, out, errors = run([str(shared_models / V2), "--images", str(images), "--labels", str(labels),
                             "--json", *QUICK], capsys)
    assert (code, errors) == (0, [])
    report = json.loads(out)
    jsonschema.validate(report, SCHEMA)
    # Without --image, latency is timed on the first labelled image (folders sorted by name).
    assert report["results"][0]["image"] == str(images / "Egyptian cat" / "cat.bmp")
    assert report["results"][0]["labels"] == str(labels)
    accuracy = report["results"][0]["accuracy"]
    assert accuracy["images"] == 5
    assert accuracy["top1"] == pytest.approx(3 / 5)
    assert accuracy["top5"] == pytest.approx(4 / 5)
    assert accuracy["per_label"]["Tiger Cat"] == {"images": 1, "top1": 0.0, "top5": 1.0,
                                                  "most_confused_with": "Egyptian cat"}
    assert accuracy["per_label"]["goldfish"]["top5"] == 0.0
    assert {(c["true"], c["predicted"], c["count"]) for c in accuracy["confusions"]} == {
        ("Tiger Cat", "Egyptian cat", 1), ("goldfish", "Egyptian cat", 1)}


def test_accuracy_is_measured_once_per_model_across_thread_counts(shared_models: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from edgedet.bench import measure

    calls: list[int] = []
    original = measure.accuracy
    monkeypatch.setattr(measure, "accuracy", lambda classifier, items: calls.append(len(items)) or
                        original(classifier, items))
    images = hand_checked_images(shared_models, tmp_path / "set")
    code, out, errors = run([str(shared_models / V1), "--images", str(images), "--labels",
                             str(shared_models / "imagenet_labels.txt"), "--threads", "1,2", "--json", *QUICK],
                            capsys)
    assert (code, errors) == (0, [])
    report = json.loads(out)
    jsonschema.validate(report, SCHEMA)
    assert calls == [5] and sorted(r["threads"] for r in report["results"]) == [1, 2]
    first, second = (r["accuracy"] for r in report["results"])
    assert first == second and first["threads"] == 1  # measured by the 1-thread run, shown for both


def test_accuracy_csv_and_budget(shared_models: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    listing = tmp_path / "set.csv"
    listing.write_text("file,label\n"
                       f"{shared_models / 'cat.bmp'},egyptian CAT\n"
                       f"{shared_models / 'bird.bmp'},chickadee\n"
                       f"{shared_models / 'grace_hopper.bmp'},military uniform\n")
    code, out, errors = run([str(shared_models / V1), str(shared_models / V2), "--images", str(listing),
                             "--labels", str(shared_models / "imagenet_labels.txt"), "--budget-ms", "100000",
                             "--json", *QUICK], capsys)
    assert (code, errors) == (0, [])
    report = json.loads(out)
    top1 = {r["model"]: r["accuracy"]["top1"] for r in report["results"]}
    # With the daemon's preprocessing (TFLite half-pixel bilinear) V1 0.25/128 says tiger cat (Egyptian cat
    # 2nd) for cat.bmp and an academic gown for Grace Hopper's uniform; V2 gets all three.
    assert top1 == {V1: pytest.approx(1 / 3), V2: 1.0}
    assert report["budget"]["model"] == V2 and report["budget"]["basis"] == "measured top-1"


def test_budget_choice_rules() -> None:
    def result(name: str, p50: float, top1: float | None, macs: int) -> dict:
        return {"model": name, "threads": 1, "macs": macs, "latency_ms": {"p50": p50},
                "accuracy": None if top1 is None else {"top1": top1}}

    measured = [result("fast", 2.0, 0.4, 10), result("mid", 9.0, 0.7, 50), result("slow", 30.0, 0.9, 300)]
    assert budget_choice(measured, 10.0)["model"] == "mid"
    assert budget_choice(measured, 1.0)["model"] is None
    unmeasured = [result("fast", 2.0, None, 10), result("mid", 9.0, None, 50)]
    choice = budget_choice(unmeasured, 10.0)
    assert choice["model"] == "mid" and choice["basis"].startswith("MACs")


def test_table_csv_and_plot(shared_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "chart.png"
    code, out, errors = run([str(shared_models / V1), "--threads", "1,2", "--csv", "--plot", str(plot),
                             *QUICK], capsys)
    assert (code, errors) == (0, [])
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [int(r["threads"]) for r in rows] in ([1, 2], [2, 1])
    assert {r["macs"] for r in rows} == {"13570304"} and rows[0]["input_shape"] == "1x128x128x3"
    with Image.open(plot) as image:
        assert image.format == "PNG"
        # no --images: latency, MACs and parameters panels only, figsize (5 * 3, 3 + 0.5 * 2 settings) at 100 dpi
        assert image.size == (1500, 400)
    code, out, _ = run([str(shared_models / V1), *QUICK, "--budget-ms", "0.000001"], capsys)
    assert code == 0
    assert "p50" in out.splitlines()[0] and V1 in out
    assert "budget 1e-06 ms: none of the models fits" in out


def test_missing_model_among_several(shared_models: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.tflite"
    code, out, errors = run([str(missing), str(shared_models / V1), "--json", *QUICK], capsys)
    assert code == 2
    assert errors == [f"edgedet: error: {missing}: model file not found; check the path"]
    report = json.loads(out)
    jsonschema.validate(report, SCHEMA)
    assert [r["model"] for r in report["results"]] == [V1]
    assert report["errors"][0]["model"] == str(missing)


def test_edgetpu_model_on_cpu(shared_models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, errors = run([str(shared_models / V1_EDGETPU), "--delegate", "cpu", *QUICK], capsys)
    assert code == 2 and out == ""
    assert len(errors) == 1 and "compiled for the Edge TPU" in errors[0] and "--delegate edgetpu" in errors[0]


@pytest.mark.parametrize("argv, needle", [
    (["--runs", "0"], "--runs: must be 1 or more, got 0"),
    (["--runs", "-5"], "--runs: must be 1 or more, got -5"),
    (["--warmup", "-1"], "--warmup: must be 0 or more"),
    (["--threads", "2,0"], "--threads: must be 1 or more"),
    (["--budget-ms", "0"], "--budget-ms: must be more than 0"),
    (["--json", "--csv"], "not allowed with argument"),
    (["--edgetpu-device", "usb0"], "--edgetpu-device: must be one of usb, usb:N, pci, pci:N or :N"),
])
def test_bad_options(shared_models: Path, argv: list[str], needle: str,
                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, errors = run([str(shared_models / V1), *argv], capsys)
    assert code == 2 and out == ""
    assert len(errors) == 1 and needle in errors[0]


def test_empty_images_folder(shared_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "tiger cat").mkdir(parents=True)
    code, out, errors = run([str(shared_models / V1), "--images", str(tmp_path / "empty"), *QUICK], capsys)
    assert code == 2 and out == ""
    assert len(errors) == 1 and "no labelled images found" in errors[0] and "empty" in errors[0]


def test_unknown_label_is_one_line(shared_models: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "set" / "tigr cat").mkdir(parents=True)
    (tmp_path / "set" / "tigr cat" / "cat.bmp").symlink_to(shared_models / "cat.bmp")
    code, _, errors = run([str(shared_models / V1), "--images", str(tmp_path / "set"),
                           "--labels", str(shared_models / "imagenet_labels.txt"), *QUICK], capsys)
    assert code == 2 and len(errors) == 1 and "'tigr cat'" in errors[0] and "matches no label" in errors[0]


def test_model_without_labels(shared_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write(tmp_path / "tiny.tflite", tiny_classifier())  # no metadata, no labels beside it
    image = ["--image", str(shared_models / "cat.bmp")]
    assert bench_main([str(model), *image, "--json", *QUICK]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)["results"][0]
    # Latency needs no labels; the core's "no labels" warning is kept in the report and printed once.
    assert result["labels"] == "none" and any("no labels" in w for w in result["warnings"])
    assert [line for line in captured.err.splitlines() if "no labels" in line] == [
        f"edgedet: warning: tiny.tflite: {result['warnings'][0]}"]
    (tmp_path / "set" / "tiger cat").mkdir(parents=True)
    (tmp_path / "set" / "tiger cat" / "cat.bmp").symlink_to(shared_models / "cat.bmp")
    code, out, errors = run([str(model), *image, "--images", str(tmp_path / "set"), *QUICK], capsys)
    assert code == 2 and out == ""
    assert len(errors) == 1 and "--images needs labels" in errors[0] and "--labels" in errors[0]


def test_label_matching(shared_models: Path) -> None:
    labels = load_labels(shared_models / "imagenet_labels.txt")
    assert label_ids_for("tiger cat", labels) == {283}
    assert label_ids_for("TIGER_CAT", labels) == {283}
    assert label_ids_for("tabby", labels) == {282}  # a synonym after the comma: "tabby, tabby cat"
    assert label_ids_for("crane", labels) == {135, 518}  # the bird and the machine share a name
    assert label_ids_for("cat", labels) == set()


def test_latency_stats_by_hand() -> None:
    stats = latency_stats([4.0, 1.0, 3.0, 2.0])
    assert stats == {"count": 4, "mean": 2.5, "std": pytest.approx(1.2909944), "min": 1.0, "p50": 2.5,
                     "p90": pytest.approx(3.7), "p99": pytest.approx(3.97), "max": 4.0}


def test_edgetpu_delegate_absent_is_one_line(shared_models: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import ctypes.util

    if ctypes.util.find_library("edgetpu"):
        pytest.skip("libedgetpu is installed here; this checks the message when it is not")
    code = bench_main([str(shared_models / V1_EDGETPU), "--delegate", "edgetpu", *QUICK])
    err = [line for line in capfd.readouterr().err.splitlines() if "warning:" not in line]
    assert code == 2
    assert len(err) == 1 and "cannot load the Edge TPU library" in err[0]  # no "Exception ignored" trace


def test_bench_says_when_preprocessing_ran_without_opencv(shared_models: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``backend: auto`` on a machine without OpenCV resizes with numpy, several times slower: the report names
    the backend, and says so once; with OpenCV (this venv's), it names OpenCV and says nothing."""
    from edgedet.cv import import_cv2

    code, out, errors = run([str(shared_models / V1), "--json", *QUICK], capsys)
    assert (code, errors) == (0, [])
    (result,) = json.loads(out)["results"]
    with_opencv = import_cv2() is not None
    assert result["preprocess_backend"] == ("opencv" if with_opencv else "numpy")
    assert any("OpenCV is not installed" in w for w in result["warnings"]) is not with_opencv

    monkeypatch.setattr("edgedet.model.preprocess.opencv_resize", lambda: None)  # as if OpenCV were absent
    code, out, errors = run([str(shared_models / V1), "--json", *QUICK], capsys)
    assert (code, errors) == (0, [])
    report = json.loads(out)
    jsonschema.validate(report, SCHEMA)
    (result,) = report["results"]
    assert result["preprocess_backend"] == "numpy"
    assert [w for w in result["warnings"] if "OpenCV" in w] == [
        "preprocessing ran on numpy: OpenCV is not installed; pip install 'edgedet[opencv]' resizes several "
        "times faster (README, Performance)"]
