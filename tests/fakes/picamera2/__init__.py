"""A fake of the ``picamera2`` package for machines without a Raspberry Pi camera.

Only tests import it (by putting ``tests/fakes`` first on ``sys.path``). It mirrors the parts of the real
API that edgedet uses, as ``raspberrypi/picamera2`` defines them (picamera2/picamera2.py, request.py,
platform.py), including the checks the real library makes in ``configure`` (lores no larger than main,
lores must be YUV on VC4, even sizes, valid stream keys) and the array layouts of ``make_array``
(YUV420 as a (h*3/2, stride) plane with padding; ``BGR888`` delivered in R,G,B byte order).

What the real hardware does and the fake only imitates: frames complete on a schedule set by
``FrameDurationLimits``; their pixels are a deterministic scene (``fake.scene``); ``queue=True`` hands
back the last completed frame (possibly older than the call), ``queue=False`` waits for the next one.
Tests steer it through ``picamera2.fake`` (cameras present, platform, stalls).
"""

from __future__ import annotations

from .picamera2 import Picamera2
from .request import CompletedRequest

__all__ = ["CompletedRequest", "Picamera2"]
