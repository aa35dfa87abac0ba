"""SIGHUP caught from the first line of ``edgedet run``, before the slow imports and the model load.

The default action of SIGHUP ends the process; a reload asked for while the daemon is still starting (a
config management run right after a service start) must not kill it. ``ServiceSignals.install`` replays
what arrived meanwhile. Standard library only: this module is imported before anything heavy.
"""

from __future__ import annotations

import signal
from types import FrameType

_pending: list[int] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)


def install() -> None:
    signal.signal(signal.SIGHUP, _remember)


def take() -> list[int]:
    """The signals caught so far (each once)."""
    caught = list(_pending)
    _pending.clear()
    return caught
