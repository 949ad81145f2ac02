"""Canary judgement and traffic split, table-driven."""

from __future__ import annotations

import pytest

from llmops.config import parse_config
from llmops.errors import ConfigError
from llmops.rollout import CanaryObservation, CanaryPolicy, Verdict, judge_canary, split_weights

P = CanaryPolicy(min_requests=20, max_wait_s=60, max_error_ratio=0.02, max_error_ratio_increase=0.01,
                 max_p95_ratio=1.5, p95_noise_floor_s=0.25, min_quality=0.6)


def obs(**kw: object) -> CanaryObservation:
    base = dict(waited_s=30.0, canary_requests=40.0, canary_errors=0.0, canary_p95_s=1.0,
                baseline_requests=300.0, baseline_errors=0.0, baseline_p95_s=1.0, quality=0.9)
    base.update(kw)
    return CanaryObservation(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("o", "verdict", "says"),
    [
        (obs(canary_requests=0, canary_p95_s=None), Verdict.WAIT, "0/20"),
        (obs(canary_requests=5), Verdict.WAIT, "5/20"),
        (obs(quality=None), Verdict.WAIT, "pending"),
        (obs(canary_requests=5, waited_s=61), Verdict.FAIL, "not enough data"),
        (obs(), Verdict.PASS, "error ratio 0.000"),
        (obs(canary_p95_s=3.0), Verdict.FAIL, "p95 3.000s > 1.500s"),
        (obs(canary_errors=4), Verdict.FAIL, "error ratio 0.100 > 0.010"),
        (obs(quality=0.2), Verdict.FAIL, "quality 0.200 < 0.600"),
        # noisy but fine: one error in 100 while the baseline also errs, p95 a bit higher
        (obs(canary_requests=100, canary_errors=1, baseline_errors=3, canary_p95_s=1.3), Verdict.PASS, "<="),
        # a tiny baseline latency: +0.2 s is within the noise floor even though it is 3x
        (obs(baseline_p95_s=0.1, canary_p95_s=0.3), Verdict.PASS, "p95 0.300s <= 0.350s"),
        (obs(canary_p95_s=None), Verdict.FAIL, "p95 latency unknown"),
        (obs(baseline_requests=0, canary_errors=1, canary_requests=100), Verdict.PASS, "<= 0.020"),
    ],
    ids=["no-data", "few-requests", "quality-pending", "no-data-timeout", "healthy", "slow", "erroring",
         "garbage-answers", "noisy-but-fine", "noise-floor", "p95-missing", "no-baseline"],
)
def test_judge_canary(o: CanaryObservation, verdict: Verdict, says: str) -> None:
    v = judge_canary(o, P)
    assert v.verdict is verdict, v.reasons
    assert any(says in r for r in v.reasons), v.reasons


@pytest.mark.parametrize(("share", "nodes"), [(10, 1), (50, 1), (10, 2), (50, 3), (10, 7), (33, 4), (90, 1)])
def test_split_weights_hit_the_share(share: int, nodes: int) -> None:
    c, b = split_weights(share, nodes)
    assert 1 <= c <= 256 and 1 <= b <= 256
    assert abs(c / (c + nodes * b) - share / 100) < 0.005


def test_split_weight_edges() -> None:
    assert split_weights(100, 3) == (256, 0)
    assert split_weights(0, 3) == (0, 256)
    assert split_weights(40, 0) == (256, 0)


@pytest.mark.parametrize("steps", [[50, 10, 100], [10, 50], [0, 100], [10, 10, 100]])
def test_bad_ramps_are_refused(steps: list[int]) -> None:
    with pytest.raises(ConfigError, match="steps"):
        parse_config({"steps": steps}, CanaryPolicy)
