"""Canary rollout decisions (pure): traffic weights per step and the verdict of each step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from pydantic import Field, field_validator

from llmops.config import StrictModel

MAX_WEIGHT = 256  # HAProxy server weights are 0-256


class CanaryPolicy(StrictModel):
    """How a canary is ramped and judged (configs/rollout/*.yaml)."""

    steps: tuple[int, ...] = (10, 50, 100)  # % of traffic on the canary at each step
    min_requests: int = Field(20, ge=1)  # no verdict before the canary has served this many
    max_wait_s: float = Field(90.0, gt=0)  # ... or this long; too little traffic by then fails safe
    max_error_ratio: float = Field(0.02, ge=0, le=1)  # absolute ceiling for the canary
    max_error_ratio_increase: float = Field(0.01, ge=0, le=1)  # over the baseline's own ratio
    max_p95_ratio: float = Field(1.5, ge=1)  # canary p95 / baseline p95
    p95_noise_floor_s: float = Field(0.25, ge=0)  # latency differences below this never fail a step
    min_quality: float = Field(0.6, ge=0, le=1)  # quality probe score (format compliance, ROUGE-L...)
    lock_wait_s: float = Field(60.0, ge=0)  # wait this long for a scaling pass holding the pool lock; then refuse

    @field_validator("steps")
    @classmethod
    def _ramp(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or list(v) != sorted(set(v)) or v[-1] != 100 or v[0] <= 0:
            raise ValueError("steps must be increasing percentages ending at 100, e.g. [10, 50, 100]")
        return v


class Verdict(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"


@dataclass(frozen=True)
class CanaryObservation:
    """What Prometheus and the quality probe say about one step so far."""

    waited_s: float
    canary_requests: float
    canary_errors: float
    canary_p95_s: float | None
    baseline_requests: float
    baseline_errors: float
    baseline_p95_s: float | None
    quality: float | None  # None: the probe has not run yet


@dataclass(frozen=True)
class CanaryVerdict:
    verdict: Verdict
    reasons: tuple[str, ...]


def _ratio(errors: float, requests: float) -> float:
    return errors / requests if requests > 0 else 0.0


def judge_canary(obs: CanaryObservation, policy: CanaryPolicy) -> CanaryVerdict:
    """PASS, FAIL or WAIT for one step. Never passes on missing data; an erroring, slow or low-quality
    canary fails as soon as it has served enough requests to say so."""
    if obs.canary_requests < policy.min_requests or obs.quality is None:
        if obs.waited_s < policy.max_wait_s:
            return CanaryVerdict(Verdict.WAIT, (f"{obs.canary_requests:.0f}/{policy.min_requests} canary requests, "
                                                f"quality {'pending' if obs.quality is None else 'done'}",))
        return CanaryVerdict(Verdict.FAIL, (f"not enough data after {obs.waited_s:.0f}s: {obs.canary_requests:.0f} "
                                            f"canary requests (need {policy.min_requests}) and quality "
                                            f"{'missing' if obs.quality is None else 'measured'}",))
    reasons: list[str] = []
    failed = False
    c_err, b_err = _ratio(obs.canary_errors, obs.canary_requests), _ratio(obs.baseline_errors, obs.baseline_requests)
    limit = min(policy.max_error_ratio, b_err + policy.max_error_ratio_increase) if obs.baseline_requests else \
        policy.max_error_ratio
    if c_err > limit:
        failed = True
        reasons.append(f"error ratio {c_err:.3f} > {limit:.3f} (baseline {b_err:.3f})")
    else:
        reasons.append(f"error ratio {c_err:.3f} <= {limit:.3f}")
    if obs.canary_p95_s is None or math.isnan(obs.canary_p95_s):
        failed = True
        reasons.append("canary p95 latency unknown while it served requests")
    elif obs.baseline_p95_s and not math.isnan(obs.baseline_p95_s):
        bound = max(obs.baseline_p95_s * policy.max_p95_ratio, obs.baseline_p95_s + policy.p95_noise_floor_s)
        if obs.canary_p95_s > bound:
            failed = True
            reasons.append(f"p95 {obs.canary_p95_s:.3f}s > {bound:.3f}s (baseline {obs.baseline_p95_s:.3f}s)")
        else:
            reasons.append(f"p95 {obs.canary_p95_s:.3f}s <= {bound:.3f}s")
    if obs.quality < policy.min_quality:
        failed = True
        reasons.append(f"quality {obs.quality:.3f} < {policy.min_quality:.3f}")
    else:
        reasons.append(f"quality {obs.quality:.3f} >= {policy.min_quality:.3f}")
    return CanaryVerdict(Verdict.FAIL if failed else Verdict.PASS, tuple(reasons))


def split_weights(share_percent: int, baseline_nodes: int) -> tuple[int, int]:
    """HAProxy weights (canary, each baseline node) that send `share_percent` of traffic to the canary.

    Chooses the pair within 0-256 whose share is closest to the target (ties: larger weights, finer later
    adjustments). 100% -> (256, 0); 0% -> (0, 256).
    """
    if not 0 <= share_percent <= 100:
        raise ValueError("share_percent must be within 0-100")
    if baseline_nodes <= 0 or share_percent == 100:
        return (MAX_WEIGHT, 0)
    if share_percent == 0:
        return (0, MAX_WEIGHT)
    target = share_percent / 100
    best = (1, MAX_WEIGHT)
    best_err = math.inf
    for b in range(1, MAX_WEIGHT + 1):
        c = round(target * baseline_nodes * b / (1 - target))
        if not 1 <= c <= MAX_WEIGHT:
            continue
        err = abs(c / (c + baseline_nodes * b) - target)
        if err < best_err - 1e-12 or (abs(err - best_err) <= 1e-12 and c + b > sum(best)):
            best, best_err = (c, b), err
    return best
