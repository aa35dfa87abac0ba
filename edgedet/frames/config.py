"""Configuration of the frame source (``source:`` in config.yaml)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field

from edgedet.model.config import Strict

SourceType = Literal["auto", "picamera2", "opencv", "images", "synthetic"]


class SourceConfig(Strict):
    type: SourceType = "auto"
    # images: a directory or glob; opencv: a camera index, /dev/videoN, an RTSP/HTTP URL or a video file.
    # Optional/Union, not "|": pydantic evaluates this annotation at runtime, also on Python 3.9.
    path: Optional[Union[str, int]] = None
    width: int = Field(default=640, ge=1, le=16384)
    height: int = Field(default=480, ge=1, le=16384)
    fps: float = Field(default=30.0, ge=0)  # 0 = as fast as possible
    loop: bool = True
    timeout_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=0, ge=0)  # 0 = retry forever
    # synthetic: scenes = drawn scenes with and without the creature the bundled model knows; gradient = a
    # colour field (cheap, content-free, for benchmarks)
    pattern: Literal["scenes", "halves", "gradient"] = "scenes"
