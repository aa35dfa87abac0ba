"""When to publish a detection: ``every_frame`` or ``on_change`` (debounced or by consensus, score-gated,
re-published).

Pure: the caller passes the top label, its score and a monotonic time, so the rules are unit-testable
without clocks or brokers.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from typing import Literal, NamedTuple, Optional

Reason = Literal["every_frame", "change", "republish"]


class Decision(NamedTuple):
    publish: bool
    reason: Reason | None
    label: str | None  # the published state (on_change) or this frame's label (every_frame)


class PublishPolicy:
    """``on_change``: publish when a new top label has held for ``debounce_frames`` consecutive frames, each
    with a score of at least its threshold; re-publish the current state every ``republish_s`` (0 = never).

    ``thresholds`` maps a label to the score its frames need (``default`` for the labels not named; else
    ``min_score``). ``consensus = (k, n)`` replaces the consecutive run: a new label is published once it is
    the top label, above its threshold, in ``k`` of the last ``n`` frames (``k`` a majority of ``n``, so only
    one label can win), which tolerates an odd misclassified frame that would restart a debounce run.
    """

    def __init__(self, mode: str = "every_frame", *, min_score: float = 0.0, debounce_frames: int = 1,
                 republish_s: float = 0.0, thresholds: Optional[Mapping[str, float]] = None,
                 consensus: Optional[tuple[int, int]] = None) -> None:
        if mode not in ("every_frame", "on_change"):
            raise ValueError(f"publish.mode must be every_frame or on_change, got {mode!r}")
        if debounce_frames < 1:
            raise ValueError("publish.debounce_frames must be >= 1")
        if consensus is not None:
            k, n = consensus
            if not 1 <= k <= n or 2 * k <= n:
                raise ValueError(f"publish.consensus: frames ({k}) must be more than half of of ({n}) and <= it")
        self.mode = mode
        self.min_score = min_score
        self.debounce_frames = debounce_frames
        self.republish_s = republish_s
        self.thresholds = dict(thresholds or {})
        self.consensus = consensus
        self.state: str | None = None  # the label last published
        self._candidate: str | None = None
        self._held = 0
        self._votes: deque[str | None] = deque(maxlen=consensus[1] if consensus else 1)
        self._last_publish: float | None = None

    def threshold(self, label: str) -> float:
        """The score a frame of ``label`` needs to count."""
        return self.thresholds.get(label, self.thresholds.get("default", self.min_score))

    def _winner(self, label: str | None, score: float) -> str | None:
        """The label this frame's vote makes the candidate for the state, or None."""
        vote = label if label is not None and score >= self.threshold(label) else None
        if self.consensus is not None:
            self._votes.append(vote)
            counts = Counter(v for v in self._votes if v is not None)
            top = counts.most_common(1)
            return top[0][0] if top and top[0][1] >= self.consensus[0] else None
        if vote is not None:
            if vote == self._candidate:
                self._held += 1
            else:
                self._candidate, self._held = vote, 1
        else:
            # A weak or empty frame breaks the run: "consecutive" means consecutive.
            self._candidate, self._held = None, 0
        return self._candidate if self._held >= self.debounce_frames else None

    def decide(self, label: str | None, score: float, now: float) -> Decision:
        if self.mode == "every_frame":
            self.state = label
            self._last_publish = now
            return Decision(True, "every_frame", label)

        winner = self._winner(label, score)
        if winner is not None and winner != self.state:
            self.state = winner
            self._last_publish = now
            return Decision(True, "change", self.state)

        if (self.state is not None and self.republish_s > 0 and self._last_publish is not None
                and now - self._last_publish >= self.republish_s):
            self._last_publish = now
            return Decision(True, "republish", self.state)
        return Decision(False, None, self.state)
