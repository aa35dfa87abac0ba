"""Still images from a directory or a glob, replayed at ``source.fps`` (optionally looping)."""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgedet.errors import SourceError
from edgedet.frames.base import Frame, FramePacer, FrameSource

log = logging.getLogger(__name__)

GLOB_CHARS = set("*?[")
# Decoded images are kept while they fit in this budget, so a looping replay decodes each file once;
# beyond it they are decoded again on every pass (memory stays bounded for large folders).
CACHE_BYTES = 256 * 1024 * 1024


def list_candidates(path: str) -> list[Path]:
    """The files named by ``path``: a directory's files, a glob's matches, or a single file."""
    if any(c in path for c in GLOB_CHARS):
        return [Path(p) for p in sorted(glob.glob(path, recursive=True)) if Path(p).is_file()]
    target = Path(path).expanduser()
    if target.is_dir():
        return sorted(p for p in target.iterdir() if p.is_file() and not p.name.startswith("."))
    if target.is_file():
        return [target]
    raise SourceError("no such directory or file", where=f"source.path {path!r}",
                      fix="point source.path at a folder of images or a glob such as 'photos/*.jpg'")


def decode_rgb(path: Path) -> np.ndarray:
    """Decode with PIL, honour the EXIF orientation, convert to HxWx3 uint8 RGB."""
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


class ImagesSource(FrameSource):
    def __init__(self, path: str, fps: float, loop: bool) -> None:
        super().__init__()
        self.path, self.fps, self.loop = path, fps, loop
        self.files: list[Path] = []
        self.skipped: list[Path] = []
        self._position = 0
        self._cache: dict[Path, np.ndarray] = {}
        self._cache_bytes = 0
        self._pacer = FramePacer(fps, self._closed)

    def open(self) -> None:
        self._closed.clear()
        self._pacer.reset()
        self._position = 0
        self._next_frame_id = 0
        self.files, self.skipped = [], []
        for candidate in list_candidates(self.path):
            # Image.open reads only the header: cheap, and enough to tell an image from anything else.
            try:
                with Image.open(candidate):
                    pass
            except (UnidentifiedImageError, OSError) as exc:
                self._skip(candidate, exc)
                continue
            self.files.append(candidate)
        if not self.files:
            raise SourceError("contains no readable images", where=f"source.path {self.path!r}",
                              fix="add JPEG/PNG/BMP files or fix the glob")
        log.info("images source: %d image(s) from %s, %s fps, loop=%s", len(self.files), self.path,
                 self.fps or "max", self.loop)

    def _skip(self, path: Path, exc: BaseException) -> None:
        self.skipped.append(path)
        log.warning("%s: not an image, skipped (%s)", path, exc)

    def _image(self, path: Path) -> np.ndarray:
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        image = decode_rgb(path)
        image.flags.writeable = False
        if self._cache_bytes + image.nbytes <= CACHE_BYTES:
            self._cache[path] = image
            self._cache_bytes += image.nbytes
        return image

    def read(self, timeout_s: float) -> Frame | None:
        while True:
            if self.closed or not self.files:
                return None
            if self._position >= len(self.files):
                if not self.loop:
                    return None
                self._position = 0
            path = self.files[self._position]
            try:
                image = self._image(path)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                # A header that parsed but a body that does not decode (truncated, bomb): skip for good.
                self.files.pop(self._position)
                self._skip(path, exc)
                continue
            self._position += 1
            if not self._pacer.wait(timeout_s):
                return None
            return self._make_frame(image)

    def close(self) -> None:
        super().close()
        self._cache.clear()
        self._cache_bytes = 0

    @property
    def on_demand(self) -> bool:
        return self.fps == 0

    def describe(self) -> dict[str, Any]:
        first = self._cache.get(self.files[0]) if self.files else None
        resolution = [int(first.shape[1]), int(first.shape[0])] if first is not None else None
        return {"type": "images", "path": self.path, "resolution": resolution, "images": len(self.files),
                "skipped": len(self.skipped), "fps": self.fps, "loop": self.loop}
