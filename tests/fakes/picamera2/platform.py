"""Fake of ``picamera2.platform``: which ISP the Pi has (VC4 = Pi 4 and older, PISP = Pi 5)."""

from __future__ import annotations

from enum import Enum


class Platform(Enum):
    VC4 = 0
    PISP = 1


def get_platform() -> Platform:
    # The real function reads /dev/video* driver names; the fake defaults to the stricter Pi 4 rules.
    return Platform.VC4
