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
