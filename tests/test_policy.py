"""on_change with per-class thresholds and consensus: scripted label sequences and what they publish."""

from __future__ import annotations

import pytest

from edgedet.config import build_config
from edgedet.errors import ConfigError
from edgedet.publish.policy import PublishPolicy

P, Q = "pikachu", "no-pikachu"

# frame, top label, score, published label ("" = nothing) with thresholds {pikachu: 0.8, default: 0.5}
# and consensus 3 of 5.
CONSENSUS_TABLE = [
    (1, P, 0.90, ""),   # P 1 of 1
    (2, P, 0.70, ""),   # below pikachu's 0.8: no vote
    (3, P, 0.85, ""),   # P 2 of 3
    (4, Q, 0.60, ""),   # P 2, Q 1
    (5, P, 0.95, P),    # P 3 of 5: published
    (6, Q, 0.55, ""),   # P 2, Q 2
    (7, Q, 0.55, Q),    # Q 3 of the last 5 (frames 3..7): published
    (8, P, 0.99, ""),   # Q still 3 of 5, already the state
    (9, Q, 0.40, ""),   # below the default 0.5: no vote; P 2, Q 2
    (10, P, 0.90, ""),  # P 2 (frames 8, 10)
    (11, P, 0.90, P),   # P 3 of 5 (8, 10, 11): published
]


def _published(policy: PublishPolicy, rows: list[tuple[int, str, float, str]]) -> list[tuple[int, str]]:
    out = []
    for frame, label, score, _ in rows:
        decision = policy.decide(label, score, float(frame))
        if decision.publish:
            assert decision.reason == "change"
            out.append((frame, decision.label or ""))
    return out


def test_consensus_with_thresholds_publishes_exactly_the_table() -> None:
    policy = PublishPolicy("on_change", thresholds={P: 0.8, "default": 0.5}, consensus=(3, 5), republish_s=0)
    expected = [(frame, label) for frame, _, _, label in CONSENSUS_TABLE if label]
    assert _published(policy, CONSENSUS_TABLE) == expected == [(5, P), (7, Q), (11, P)]


# The same frames through debounce_frames: 3 (consecutive): the noisy frames keep restarting the run.
def test_debounce_with_thresholds_on_the_same_frames() -> None:
    policy = PublishPolicy("on_change", thresholds={P: 0.8, "default": 0.5}, debounce_frames=3, republish_s=0)
    rows = [*CONSENSUS_TABLE, (12, P, 0.9, "")]
    assert _published(policy, rows) == [(12, P)]  # the first run of 3 consecutive P frames is 10, 11, 12


def test_threshold_falls_back_to_default_then_min_score() -> None:
    assert PublishPolicy("on_change", min_score=0.3).threshold(P) == 0.3
    assert PublishPolicy("on_change", min_score=0.3, thresholds={"default": 0.6}).threshold(Q) == 0.6
    assert PublishPolicy("on_change", min_score=0.3, thresholds={P: 0.9, "default": 0.6}).threshold(P) == 0.9


def test_per_class_threshold_gates_only_that_class() -> None:
    policy = PublishPolicy("on_change", thresholds={P: 0.8}, republish_s=0)
    rows = [(1, P, 0.7, ""), (2, Q, 0.3, Q), (3, P, 0.79, ""), (4, P, 0.8, P)]
    assert _published(policy, rows) == [(2, Q), (4, P)]


@pytest.mark.parametrize("consensus", [(2, 4), (3, 2), (0, 1)])
def test_consensus_must_be_a_majority(consensus: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="more than half"):
        PublishPolicy("on_change", consensus=consensus)


@pytest.mark.parametrize(("publish", "message"), [
    ({"consensus": {"frames": 2, "of": 4}},
     "publish.consensus: frames (2) must be more than half of of (4) and at most of, e.g. {frames: 3, of: 5}"),
    ({"consensus": {"frames": 3, "of": 5}, "debounce_frames": 2},
     "publish: set debounce_frames or consensus, not both"),
    ({"thresholds": {P: 1.5}}, "publish.thresholds: each threshold must be a score in 0..1, got pikachu=1.5"),
])
def test_config_errors_are_one_line(publish: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"publish": publish}, "cfg.yaml")
    text = str(err.value)
    assert "\n" not in text and message in text


def test_config_builds_the_policy_the_sink_uses() -> None:
    cfg = build_config({"publish": {"mode": "on_change", "thresholds": {P: 0.8},
                                    "consensus": {"frames": 3, "of": 5}}}, "cfg.yaml")
    assert cfg.publish.consensus is not None and (cfg.publish.consensus.frames, cfg.publish.consensus.of) == (3, 5)
    assert cfg.publish.thresholds == {P: 0.8}
