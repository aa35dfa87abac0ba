"""Deterministic generated frames, for demos, tests and benchmarks on machines without a camera."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgedet.frames.base import Frame, FramePacer, FrameSource

# Frames are precomputed once and cycled, so producing a frame costs nothing next to inference
# (a 640x480 source at fps 0 delivers tens of thousands of frames per second).
DEFAULT_CYCLE = 8
# Caps the precomputed set for very large frames (16384x16384 would otherwise need 6 GB).
MAX_CYCLE_BYTES = 64 * 1024 * 1024


def make_pattern(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth colour field plus seeded noise blocks: varied enough to exercise a classifier."""
    rng = np.random.default_rng(seed)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
    channels = [
        127.5 + 127.5 * np.sin(2 * np.pi * (xs * (1 + c) + ys * (2 - c)) + phase[c]) for c in range(3)
    ]
    image = np.stack(channels, axis=-1)
    # Coarse random blocks, upsampled by repetition (no resize library needed).
    block = 16
    blocks = rng.integers(0, 64, size=(height // block + 1, width // block + 1, 3), dtype=np.int16)
    noise = np.repeat(np.repeat(blocks, block, axis=0), block, axis=1)[:height, :width]
    return np.clip(image + noise - 32, 0, 255).astype(np.uint8)


SCENE_SIDE = 192  # scenes are drawn square at this size, then stretched to the frame


def make_scenes(width: int, height: int, seed: int, count: int = DEFAULT_CYCLE) -> list[np.ndarray]:
    """Alternating scenes with and without the creature (``edgedet.frames.scenes``), stretched to WxH.

    Drawn square and stretched, so a model that squeezes the whole frame back to a square input (the
    default ``crop: full``) sees them undistorted: the bundled model classifies them out of the box.
    """
    from PIL import Image

    from edgedet.frames.scenes import make_image

    rng = np.random.default_rng([seed, 2024])
    count = max(1, min(count, MAX_CYCLE_BYTES // max(1, width * height * 3)))
    frames = []
    for n in range(count):
        scene = make_image(rng, SCENE_SIDE, positive=n % 2 == 0)
        frame = np.asarray(scene.resize((width, height), Image.Resampling.BILINEAR))
        frame.flags.writeable = False
        frames.append(frame)
    return frames


def make_halves(width: int, height: int, seed: int, count: int = DEFAULT_CYCLE) -> list[np.ndarray]:
    """Two scenes side by side in every frame: the creature in the left half, a scene without it in the right
    (each drawn square and stretched to its half), for several classifiers each on one region."""
    from PIL import Image

    from edgedet.frames.scenes import make_image

    rng = np.random.default_rng([seed, 2025])
    count = max(1, min(count, MAX_CYCLE_BYTES // max(1, width * height * 3)))
    left_w = width // 2
    frames = []
    for _ in range(count):
        left = make_image(rng, SCENE_SIDE, positive=True).resize((left_w, height), Image.Resampling.BILINEAR)
        right = make_image(rng, SCENE_SIDE, positive=False).resize((width - left_w, height),
                                                                   Image.Resampling.BILINEAR)
        frame = np.concatenate([np.asarray(left), np.asarray(right)], axis=1)
        frame.flags.writeable = False
        frames.append(frame)
    return frames


class SyntheticSource(FrameSource):
    """``source.width`` x ``source.height`` frames at ``source.fps`` (0 = as fast as possible).

    Frame ``n`` is always the same image for the same seed and size, cycled over a few precomputed frames
    (read-only views). ``pattern``: ``scenes`` (default in config) alternates drawn scenes with and without
    the creature the bundled model knows; ``halves`` shows the creature in the left half and a scene without
    it in the right; ``gradient`` is a colour field shifted diagonally by ``n``.
    """

    def __init__(self, width: int, height: int, fps: float, *, seed: int = 0,
                 max_frames: int | None = None, pattern: str = "gradient") -> None:
        super().__init__()
        self.width, self.height, self.fps, self.seed = width, height, fps, seed
        self.pattern = pattern
        self.max_frames = max_frames
        self._frames: list[np.ndarray] = []
        self._hold = 1
        self._pacer = FramePacer(fps, self._closed)

    def open(self) -> None:
        self._closed.clear()
        self._pacer.reset()
        self._next_frame_id = 0
        if self.pattern in ("scenes", "halves"):
            make = make_scenes if self.pattern == "scenes" else make_halves
            self._frames = make(self.width, self.height, self.seed)
            # a scene stays in view for about a second, like something passing in front of a camera
            self._hold = max(1, round(self.fps))
            return
        self._hold = 1
        base = make_pattern(self.width, self.height, self.seed)
        cycle = max(1, min(DEFAULT_CYCLE, MAX_CYCLE_BYTES // max(1, base.nbytes)))
        step_y = max(1, self.height // (4 * cycle))
        step_x = max(1, self.width // (4 * cycle))
        self._frames = []
        for n in range(cycle):
            frame = np.roll(base, shift=(n * step_y, n * step_x), axis=(0, 1))
            frame.flags.writeable = False
            self._frames.append(frame)

    def read(self, timeout_s: float) -> Frame | None:
        frames = self._frames  # a local reference: close() may clear the list from another thread
        if not frames:
            if self.closed:
                return None
            raise RuntimeError("SyntheticSource.read() before open()")
        if self.max_frames is not None and self._next_frame_id >= self.max_frames:
            return None
        if not self._pacer.wait(timeout_s):
            return None
        return self._make_frame(frames[(self._next_frame_id // self._hold) % len(frames)])

    def close(self) -> None:
        super().close()
        self._frames = []

    @property
    def on_demand(self) -> bool:
        return self.fps == 0

    def describe(self) -> dict[str, Any]:
        return {"type": "synthetic", "resolution": [self.width, self.height], "fps": self.fps,
                "seed": self.seed, "pattern": self.pattern}
