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


class SyntheticSource(FrameSource):
    """``source.width`` x ``source.height`` frames at ``source.fps`` (0 = as fast as possible).

    Frame ``n`` is always the same image for the same seed and size: a base pattern shifted
    diagonally by ``n`` (cycled over a few precomputed frames). Images are read-only views.
    """

    def __init__(self, width: int, height: int, fps: float, *, seed: int = 0,
                 max_frames: int | None = None) -> None:
        super().__init__()
        self.width, self.height, self.fps, self.seed = width, height, fps, seed
        self.max_frames = max_frames
        self._frames: list[np.ndarray] = []
        self._pacer = FramePacer(fps, self._closed)

    def open(self) -> None:
        self._closed.clear()
        self._pacer.reset()
        self._next_frame_id = 0
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
        return self._make_frame(frames[self._next_frame_id % len(frames)])

    def close(self) -> None:
        super().close()
        self._frames = []

    def describe(self) -> dict[str, Any]:
        return {"type": "synthetic", "resolution": [self.width, self.height], "fps": self.fps,
                "seed": self.seed}
