"""scikit-image's ``lfw_subset`` as an image folder: 200 real 25x25 greyscale photos (a test-only dependency).

The first 100 are faces, the other 100 are not. They are written upscaled (a camera gives more pixels than
the model takes, so the host's and the daemon's resizing both matter) into ``train/`` and ``heldout/``, each
with ``faces/`` and ``not-faces/`` sub-folders, and a seeded, stratified split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("faces", "not-faces")


def export_lfw(root: Path, side: int = 100, heldout_per_class: int = 25, seed: int = 0) -> tuple[Path, Path]:
    """Write the photos as PNGs; return the (train, heldout) folders."""
    from skimage.data import lfw_subset

    photos = (np.clip(lfw_subset(), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)  # float64 in [0, 1]
    rng = np.random.default_rng(seed)
    for class_index, name in enumerate(CLASSES):
        members = rng.permutation(np.arange(100) + 100 * class_index)
        for part, chosen in (("heldout", members[:heldout_per_class]), ("train", members[heldout_per_class:])):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                image = Image.fromarray(photos[index]).resize((side, side), Image.Resampling.BICUBIC)
                image.save(folder / f"lfw_{index:03d}.png")
    return root / "train", root / "heldout"


def export_lfw_all(root: Path, side: int = 100) -> Path:
    """All 200 photos in one folder of class folders (for commands that split it themselves)."""
    from skimage.data import lfw_subset

    photos = (np.clip(lfw_subset(), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    for index, photo in enumerate(photos):
        folder = root / CLASSES[index // 100]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).resize((side, side), Image.Resampling.BICUBIC).save(folder / f"lfw_{index:03d}.png")
    return root
