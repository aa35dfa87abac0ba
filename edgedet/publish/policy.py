"""When to publish a detection: ``every_frame`` or ``on_change`` (debounced, score-gated, re-published).

Pure: the caller passes the top label, its score and a monotonic time, so the rules are unit-testable
without clocks or brokers.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Reason = Literal["every_frame", "change", "republish"]


class Decision(NamedTuple):
    publish: bool
    reason: Reason | None
    label: str | None  # the published state (on_change) or this frame's label (every_frame)


class PublishPolicy:
    """``on_change``: publish when a new top label has held for ``debounce_frames`` consecutive frames, each
    with score >= ``min_score``; re-publish the current state every ``republish_s`` (0 = never)."""

    def __init__(self, mode: str = "every_frame", *, min_score: float = 0.0, debounce_frames: int = 1,
                 republish_s: float = 0.0) -> None:
        if mode not in ("every_frame", "on_change"):
            raise ValueError(f"publish.mode must be every_frame or on_change, got {mode!r}")
        if debounce_frames < 1:
            raise ValueError("publish.debounce_frames must be >= 1")
        self.mode = mode
        self.min_score = min_score
        self.debounce_frames = debounce_frames
        self.republish_s = republish_s
        self.state: str | None = None  # the label last published
        self._candidate: str | None = None
        self._held = 0
        self._last_publish: float | None = None

    def decide(self, label: str | None, score: float, now: float) -> Decision:
        if self.mode == "every_frame":
            self.state = label
            self._last_publish = now
            return Decision(True, "every_frame", label)

        if label is not None and score >= self.min_score:
            if label == self._candidate:
                self._held += 1
            else:
                self._candidate, self._held = label, 1
        else:
            # A weak or empty frame breaks the run: "consecutive" means consecutive.
            self._candidate, self._held = None, 0

        held_long_enough = self._candidate is not None and self._held >= self.debounce_frames
        if held_long_enough and self._candidate != self.state:
            self.state = self._candidate
            self._last_publish = now
            return Decision(True, "change", self.state)

        if (self.state is not None and self.republish_s > 0 and self._last_publish is not None
                and now - self._last_publish >= self.republish_s):
            self._last_publish = now
            return Decision(True, "republish", self.state)
        return Decision(False, None, self.state)
