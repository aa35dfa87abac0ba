"""Ranking the scores: the top classes must not depend on how many are asked for (ties go to the lower id)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgedet.model.classifier import Classifier, smallest_bytes, top_indices
from edgedet.model.config import ModelConfig, default_model_path
from tests import tflite_builder


@pytest.mark.parametrize(("values", "k", "expected"), [
    ([128, 128], 1, [0]),  # a two-class int8 model on a borderline frame
    ([128, 128], 2, [0, 1]),
    ([3, 7, 7, 1, 7], 1, [1]),
    ([3, 7, 7, 1, 7], 2, [1, 2]),
    ([3, 7, 7, 1, 7], 4, [1, 2, 4, 0]),
    ([0, 9, 2], 5, [1, 2, 0]),
])
def test_ties_go_to_the_lower_id_whatever_k(values: list[int], k: int, expected: list[int]) -> None:
    assert top_indices(np.asarray(values, np.uint8), k) == expected


def test_top_1_is_the_first_of_every_longer_ranking() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        values = rng.integers(0, 4, rng.integers(2, 12), dtype=np.uint8)  # few distinct values: many ties
        full = top_indices(values, values.size)
        for k in range(1, values.size + 1):
            assert top_indices(values, k) == full[:k]


def reference_ranking(values: np.ndarray) -> list[int]:
    return sorted(range(values.size), key=lambda i: (-float(values[i]), i))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.float32])
def test_every_output_type_ranks_by_value_then_id(dtype: type) -> None:
    """The 8-bit types take the byte-key radix sort, the others the partition; both must give the ranking
    that sorting by (value descending, id ascending) gives, the extremes of each type included."""
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    for _ in range(300):
        size = int(rng.integers(1, 40))
        if info is not None:
            pool = np.asarray([info.min, info.min + 1, -1 if info.min < 0 else 1, 0, 1, info.max - 1, info.max])
            values = rng.choice(pool, size).astype(dtype)
        else:
            values = rng.choice(np.asarray([-1.5, -0.0, 0.0, 0.25, 0.25, 1.0], np.float32), size)
        full = reference_ranking(values)
        for k in (1, 2, 3, size):
            assert top_indices(values, k) == full[:k], (values, k)


def test_a_thousand_class_int8_output_mostly_at_the_floor() -> None:
    """What an 8-bit ImageNet model gives: a few scores above a floor that nearly all the others sit at."""
    values = np.full(1001, -128, np.int8)
    values[[286, 283, 20]] = [90, 12, 12]
    assert top_indices(values, 3) == [286, 20, 283]
    assert top_indices(values, 5) == [286, 20, 283, 0, 1]


def test_smallest_bytes_is_a_stable_ascending_ranking() -> None:
    rng = np.random.default_rng(2)
    for _ in range(300):
        keys = bytes(rng.choice([0, 1, 2, 127, 128, 254, 255], int(rng.integers(1, 60))).tolist())
        reference = sorted(range(len(keys)), key=lambda i: (keys[i], i))
        for k in (1, 2, 3, len(keys)):
            assert smallest_bytes(keys, k) == reference[:k], (keys, k)


def classifier_for(path: Path) -> Classifier:
    return Classifier.from_config(ModelConfig(path=str(path), top_k=5))


def check_ranking_of_raw_outputs(classifier: Classifier) -> None:
    """Raw scores written into the output tensor, then ranked by the frame loop's path: ids and scores must be
    what ranking the whole dequantized vector (``scores()``, a separate copy and dequantization) gives."""
    view = classifier._slots[0].output_view().reshape(-1)
    dtype, size = view.dtype, view.size
    del view  # invoke() and get_tensor() refuse to run while a view is alive
    info = np.iinfo(dtype)
    rng = np.random.default_rng(3)
    for _ in range(100):
        raw = rng.choice(np.asarray([info.min, info.min + 1, -1 if info.min < 0 else 1, 0, 77, info.max - 1,
                                     info.max]), size).astype(dtype)
        classifier._slots[0].output_view().reshape(-1)[:] = raw
        full = classifier.scores()
        expected = sorted(range(size), key=lambda i: (-float(full[i]), i))
        for k in (1, 2, 5):
            got = classifier._top_classes(k)
            assert [c.id for c in got] == expected[:k]
            assert [c.score for c in got] == [float(full[i]) for i in expected[:k]]
            assert all(type(c.score) is float for c in got)


def test_8bit_outputs_of_the_bundled_and_a_built_model_ranked_and_dequantized_exactly(tmp_path: Path) -> None:
    bundled = default_model_path()
    assert bundled is not None
    built = tflite_builder.write(tmp_path / "int8.tflite", tflite_builder.tiny_classifier(dtype=np.int8))
    for path, dtype in ((bundled, np.uint8), (built, np.int8)):
        classifier = classifier_for(path)
        assert classifier._slots[0].output_view().dtype == dtype
        check_ranking_of_raw_outputs(classifier)


def test_uint8_thousand_class_output_ranked_and_dequantized_exactly(shared_models: Path) -> None:
    classifier = classifier_for(shared_models / "mobilenet_v2_1.0_224_quant.tflite")
    assert classifier._slots[0].output_view().dtype == np.uint8
    check_ranking_of_raw_outputs(classifier)
