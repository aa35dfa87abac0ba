"""A generated image dataset in the seed's shape: ``pikachu/`` and ``no-pikachu/``.

The drawing itself lives in ``edgedet.frames.scenes`` (the daemon's synthetic source draws the same scenes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgedet.errors import EdgedetError
from edgedet.frames.scenes import NEGATIVE, POSITIVE, make_image

__all__ = ["NEGATIVE", "POSITIVE", "generate", "make_image"]


def generate(out: Path, per_class: int = 100, size: int = 96, seed: int = 0) -> dict[str, int]:
    """Write ``per_class`` PNGs into ``out/pikachu`` and ``out/no-pikachu``; return the count per class.

    The two classes draw from independent generators derived from ``seed``, so a dataset with more images
    per class starts with the same images as a smaller one.
    """
    if per_class < 1:
        raise EdgedetError(f"--per-class must be >= 1, got {per_class}")
    if size < 16:
        raise EdgedetError(f"--size must be >= 16 pixels, got {size}")
    counts: dict[str, int] = {}
    for class_index, name in enumerate((NEGATIVE, POSITIVE)):
        folder = out / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise EdgedetError(f"cannot create the folder ({err.strerror})", where=folder,
                               fix="choose a writable output path") from None
        rng = np.random.default_rng([seed, class_index])
        for index in range(per_class):
            make_image(rng, size, positive=name == POSITIVE).save(folder / f"{name}_{seed}_{index:05d}.png")
        counts[name] = per_class
    return counts
