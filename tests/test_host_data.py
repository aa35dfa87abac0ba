"""Image folder loading, split and sidecar/flatbuffer helpers: edgedet-host without TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgedet.errors import EdgedetError
from edgedet.host.data import confusion_matrix, imbalance_note, load_folder
from edgedet.host.sidecar import build_sidecar, inspect_flatbuffer, read_sidecar, write_sidecar
from edgedet.host.synth import generate
from edgedet.host.train import imagenet_weights_file, learning_rate_for, split_indices


def test_unreadable_images_are_skipped_and_listed(tmp_path: Path) -> None:
    generate(tmp_path, per_class=3, size=32)
    broken = tmp_path / "pikachu" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated jpeg")
    (tmp_path / "no-pikachu" / "notes.txt").write_text("not an image")
    folder = load_folder(tmp_path, 48)
    assert folder.images.shape == (6, 48, 48, 3) and folder.images.dtype == np.uint8
    assert folder.class_names == ["no-pikachu", "pikachu"]
    assert folder.counts() == {"no-pikachu": 3, "pikachu": 3}
    skipped = {path.name: reason for path, reason in folder.skipped}
    assert set(skipped) == {"broken.jpg", "notes.txt"}
    assert "not an image Pillow can decode" in skipped["broken.jpg"]


def test_class_without_readable_images_is_refused(tmp_path: Path) -> None:
    generate(tmp_path, per_class=2, size=32)
    for image in (tmp_path / "pikachu").iterdir():
        image.write_bytes(b"garbage")
    with pytest.raises(EdgedetError, match="without readable images: pikachu"):
        load_folder(tmp_path, 32)


def test_imbalance_is_reported_only_when_large() -> None:
    assert imbalance_note({"a": 10, "b": 8}) is None
    note = imbalance_note({"no-pikachu": 100, "pikachu": 20})
    assert note is not None and "no-pikachu=100, pikachu=20" in note and "0.20" in note


def test_split_is_stratified_seeded_and_disjoint() -> None:
    class_ids = np.array([0] * 10 + [1] * 30)
    train, val = split_indices(class_ids, 0.2, seed=4)
    assert not set(train) & set(val) and len(train) + len(val) == 40
    assert (class_ids[val] == 0).sum() == 2 and (class_ids[val] == 1).sum() == 6
    again_train, again_val = split_indices(class_ids, 0.2, seed=4)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert len(split_indices(class_ids, 0.0, seed=4)[1]) == 0


def test_confusion_matrix_rows_are_truth() -> None:
    assert confusion_matrix(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]), 2) == [[1, 1], [1, 2]]


def test_keras_weight_file_names() -> None:
    assert imagenet_weights_file("mobilenet_v1", 0.25, 128) == "mobilenet_2_5_128_tf_no_top.h5"
    assert (imagenet_weights_file("mobilenet_v2", 0.35, 96)
            == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5")


def test_sidecar_round_trip(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    sidecar = build_sidecar(architecture="mobilenet_v1", alpha=0.25, input_size=[128, 128], labels=["a", "b"],
                            quantization="int8", io_dtype="uint8", min_runtime="1.14.0",
                            tool_versions={"tensorflow": "2.21.0", "edgedet": "0"}, source_model="x.keras")
    assert write_sidecar(model, sidecar) == tmp_path / "m.json"
    assert read_sidecar(model) == json.loads((tmp_path / "m.json").read_text()) == sidecar
    (tmp_path / "m.json").write_text('{"format": "other"}')
    with pytest.raises(EdgedetError, match="not an edgedet-sidecar/1 sidecar"):
        read_sidecar(model)


@pytest.mark.shared
def test_inspect_reference_model(shared_models: Path) -> None:
    from conftest import V1

    info = inspect_flatbuffer(shared_models / V1)
    assert info.inputs[0].shape == [1, 128, 128, 3] and info.inputs[0].dtype == "uint8"
    assert info.outputs[0].dtype == "uint8"
    assert {"CONV_2D", "DEPTHWISE_CONV_2D"} <= {name for name, _ in info.ops}
    assert not info.custom_ops


def test_inspect_refuses_a_non_flatbuffer(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x01\x02\x03")
    with pytest.raises(EdgedetError, match=r"junk\.tflite: not a readable TFLite flatbuffer"):
        inspect_flatbuffer(junk)


def test_learning_rate_is_adams_default_from_scratch_and_small_for_trained_weights() -> None:
    assert learning_rate_for("none") == 1e-3
    assert learning_rate_for("imagenet") == 1e-4
    assert learning_rate_for("/some/weights.h5") == 1e-4
    assert learning_rate_for("none", 5e-4) == 5e-4  # --lr wins
