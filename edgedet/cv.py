"""OpenCV, optional (the ``opencv`` extra): imported in one place so its own stderr noise is silenced first."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Optional


def import_cv2() -> Optional[ModuleType]:
    """``cv2``, or None when OpenCV is not installed.

    OpenCV and its FFmpeg backend print their own lines on stderr ("[tcp @ 0x...] Connection refused",
    "[ WARN:0@0.5] global cap.cpp ..."); edgedet reports the same problems as one line of its own. The
    variables are read when cv2 is first imported, so every import goes through here.
    """
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        import cv2
    except ImportError:
        return None
    return cv2
