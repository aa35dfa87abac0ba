"""Configuration of the frame source (``source:`` in config.yaml)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, Optional, Union

from edgedet.section import Range, Section

SourceType = Literal["auto", "picamera2", "opencv", "images", "synthetic"]


@dataclasses.dataclass(init=False)
class SourceConfig(Section):
    type: SourceType = "auto"
    # images: a directory or glob; opencv: a camera index, /dev/videoN, an RTSP/HTTP URL or a video file.
    # Optional/Union, not "|": the annotation is evaluated at run time, also on Python 3.9.
    path: Optional[Union[str, int]] = None
    width: Annotated[int, Range(ge=1, le=16384)] = 640
    height: Annotated[int, Range(ge=1, le=16384)] = 480
    fps: Annotated[float, Range(ge=0)] = 30.0  # 0 = as fast as possible
    loop: bool = True
    timeout_s: Annotated[float, Range(gt=0)] = 5.0
    max_retries: Annotated[int, Range(ge=0)] = 0  # 0 = retry forever
    # synthetic: scenes = drawn scenes with and without the creature the bundled model knows; gradient = a
    # colour field (cheap, content-free, for benchmarks)
    pattern: Literal["scenes", "halves", "gradient"] = "scenes"
