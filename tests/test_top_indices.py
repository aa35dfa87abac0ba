"""Ranking the scores: the top classes must not depend on how many are asked for (ties go to the lower id)."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.model.classifier import top_indices


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
