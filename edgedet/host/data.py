"""Loading an image folder (one sub-folder per class) into memory, without TensorFlow.

Datasets for this workflow are small (hundreds to a few thousand images), so they are decoded once into one
``uint8`` array; unreadable files are skipped and listed instead of stopping a training run halfway, which is
what ``tf.keras.utils.image_dataset_from_directory`` would do.

Every image is decoded, cropped and resized by the daemon's own code (:mod:`edgedet.model.preprocess`), with
the settings that go into the sidecar, so the model is trained and evaluated on the pixels it will be served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np

from edgedet.errors import EdgedetError, ImageError
from edgedet.model import preprocess
from edgedet.model.config import PREPROCESS_DEFAULTS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# A class with fewer images than this fraction of the largest class is reported as imbalanced.
IMBALANCE_RATIO = 0.5


class ImageFolder(NamedTuple):
    images: np.ndarray  # (N, size, size, 3) uint8 RGB
    class_ids: np.ndarray  # (N,) int64 index into class_names
    class_names: list[str]
    files: list[Path]  # the file of each image, in the same order
    skipped: list[tuple[Path, str]]  # unreadable files and why

    def counts(self) -> dict[str, int]:
        return {name: int((self.class_ids == i).sum()) for i, name in enumerate(self.class_names)}


class PreprocessSpec(NamedTuple):
    """How the daemon turns a frame into the model's pixels; recorded in the sidecar's ``preprocess``."""

    resize: str = PREPROCESS_DEFAULTS["resize"]  # model.preprocess.resize
    crop: str = PREPROCESS_DEFAULTS["crop"]  # model.preprocess.crop
    backend: str = PREPROCESS_DEFAULTS["backend"]  # model.preprocess.backend; resolved by pixel_preprocessor
    roi: Any = None  # a region of interest is not applied by the host script yet

    def as_dict(self) -> dict[str, Any]:
        return dict(self._asdict())


DEFAULT_SPEC = PreprocessSpec()
Size = Union[int, tuple[int, int]]  # side, or (width, height)


def pixel_preprocessor(size: Size, spec: PreprocessSpec = DEFAULT_SPEC) -> preprocess.Preprocessor:
    """The daemon's Preprocessor with an identity quantization: image -> 1xHxWx3 uint8 model pixels.

    Its ``backend`` attribute is the implementation actually used (``auto`` resolved), for the sidecar.
    """
    width, height = (size, size) if isinstance(size, int) else size
    identity = preprocess.InputQuantization(np.dtype(np.uint8), np.ones(3, np.float32), np.zeros(3, np.float32),
                                            raw=True)
    try:
        return preprocess.Preprocessor(width, height, identity, spec.resize, spec.crop, spec.backend)
    except ImportError as err:
        raise EdgedetError(str(err), fix="or use backend auto/numpy") from None


def resolved(spec: PreprocessSpec) -> PreprocessSpec:
    """``spec`` with ``backend: auto`` replaced by the implementation this machine uses."""
    return spec._replace(backend=pixel_preprocessor(32, spec).backend)


def load_image(path: Path, size: Size, spec: PreprocessSpec = DEFAULT_SPEC,
               preprocessor: preprocess.Preprocessor | None = None) -> np.ndarray:
    """Decode ``path`` and prepare it as the daemon does (crop, resize), as HxWx3 uint8 RGB."""
    prepare = preprocessor or pixel_preprocessor(size, spec)
    return prepare(preprocess.load_image(path))[0]  # a new array per call (Preprocessor.__call__)


def class_folders(data_dir: Path) -> list[Path]:
    """The class sub-folders of ``data_dir``, sorted by name; refuses a missing, empty or one-class folder."""
    if not data_dir.is_dir():
        raise EdgedetError("data folder not found", where=data_dir,
                           fix="pass a folder with one sub-folder of images per class, e.g. pikachu/ and "
                           "no-pikachu/")
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise EdgedetError("data folder has no class sub-folders", where=data_dir,
                           fix="put the images of each class in their own sub-folder, e.g. pikachu/ and "
                           "no-pikachu/")
    if len(folders) == 1:
        raise EdgedetError(f"only one class ({folders[0].name}); a classifier needs at least two",
                           where=data_dir,
                           fix="add a sub-folder of counter-examples, e.g. no-pikachu/")
    return folders


def load_folder(data_dir: Path, size: Size, limit_per_class: int | None = None,
                spec: PreprocessSpec = DEFAULT_SPEC) -> ImageFolder:
    """Decode every image under ``data_dir/<class>/`` at ``size`` px; skip and list unreadable files."""
    data_dir = Path(data_dir)
    folders = class_folders(data_dir)
    prepare = pixel_preprocessor(size, spec)
    images: list[np.ndarray] = []
    class_ids: list[int] = []
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for class_id, folder in enumerate(folders):
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        taken = 0
        for path in paths:
            if limit_per_class is not None and taken >= limit_per_class:
                break
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((path, "not an image file name"))
                continue
            try:
                images.append(load_image(path, size, preprocessor=prepare))
            except (ImageError, preprocess.FrameError) as err:
                skipped.append((path, str(err)))
                continue
            class_ids.append(class_id)
            files.append(path)
            taken += 1
    if not images:
        raise EdgedetError(f"no readable images in any class folder ({len(skipped)} files skipped)",
                           where=data_dir, fix="put PNG/JPEG/BMP images in the class sub-folders")
    names = [f.name for f in folders]
    ids = np.asarray(class_ids, dtype=np.int64)
    empty = [name for i, name in enumerate(names) if not (ids == i).any()]
    if empty:
        raise EdgedetError(f"class folder(s) without readable images: {', '.join(empty)}", where=data_dir,
                           fix="add images to them or remove them")
    return ImageFolder(np.stack(images), ids, names, files, skipped)


def imbalance_note(counts: dict[str, int]) -> str | None:
    """A one-line warning when the smallest class has under half the images of the largest, else None."""
    largest, smallest = max(counts.values()), min(counts.values())
    if smallest < largest * IMBALANCE_RATIO:
        listing = ", ".join(f"{name}={count}" for name, count in counts.items())
        return (f"class imbalance: {listing} (smallest/largest = {smallest / largest:.2f}); accuracy alone "
                "will flatter the model, read the confusion matrix")
    return None


def normalize(images: np.ndarray, mean: float | np.ndarray = 127.5, std: float | np.ndarray = 127.5) -> np.ndarray:
    """uint8 pixels -> float32 model input, real = (pixel - mean) / std."""
    return (images.astype(np.float32) - mean) / std


def confusion_matrix(true_ids: np.ndarray, predicted_ids: np.ndarray, num_classes: int) -> list[list[int]]:
    """Rows are the true class, columns the predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true_ids, predicted_ids), 1)
    return matrix.tolist()
