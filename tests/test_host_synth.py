"""The synthetic dataset: the seed's folder shape, deterministic by seed, and classes that differ visibly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgedet.errors import EdgedetError
from edgedet.host.synth import NEGATIVE, POSITIVE, generate


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.png"))}


def _red_cheek_fraction(path: Path) -> float:
    """Share of pixels that are the cheeks' saturated red."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red = (pixels[..., 0] > 190) & (pixels[..., 1] < 70) & (pixels[..., 2] < 70)
    return float(red.mean())


def test_layout_size_and_counts(tmp_path: Path) -> None:
    counts = generate(tmp_path, per_class=3, size=64, seed=5)
    assert counts == {NEGATIVE: 3, POSITIVE: 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-pikachu", "pikachu"]
    for path in tmp_path.rglob("*.png"):
        with Image.open(path) as image:
            assert image.size == (64, 64) and image.mode == "RGB"


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    generate(tmp_path / "a", per_class=4, size=48, seed=1)
    generate(tmp_path / "b", per_class=4, size=48, seed=1)
    generate(tmp_path / "c", per_class=4, size=48, seed=2)
    first, again = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert first == again
    other = set(_digests(tmp_path / "c").values())
    assert not other & set(first.values())


def test_creatures_have_red_cheeks_and_most_negatives_do_not(tmp_path: Path) -> None:
    generate(tmp_path, per_class=20, size=96, seed=3)
    positive = [_red_cheek_fraction(p) for p in sorted((tmp_path / POSITIVE).glob("*.png"))]
    negative = [_red_cheek_fraction(p) for p in sorted((tmp_path / NEGATIVE).glob("*.png"))]
    assert np.median(positive) > 0.001
    assert np.median(positive) > 5 * max(np.median(negative), 1e-5)


@pytest.mark.parametrize(("per_class", "size"), [(0, 64), (2, 8)])
def test_bad_arguments_are_refused(tmp_path: Path, per_class: int, size: int) -> None:
    with pytest.raises(EdgedetError):
        generate(tmp_path, per_class=per_class, size=size)
