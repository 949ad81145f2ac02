"""The promotion gate: a pure function from two evaluation reports to a decision with its reasons."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmops.train.config import GateSettings


@dataclass(frozen=True)
class SliceScore:
    n: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class EvalReport:
    """Scores of one model on the held-out set, by slice, plus the control-prompt leakage."""

    model: str  # e.g. "challenger v3" / "champion v1"
    slices: dict[str, SliceScore]
    overall: dict[str, float]
    n: int
    leakage: float
    control_n: int = 0
    samples: list[dict[str, str]] = field(default_factory=list)
    # per held-out item, in the order evaluated: (slice, exact match 0/1); pairs two models' answers on one item
    items: list[tuple[str, int]] = field(default_factory=list)
    # every answer by prompt key (held-out and control), for the model's answer book; how many were read from it
    answers: dict[str, str] = field(default_factory=dict)
    reused: int = 0


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reasons: tuple[str, ...]
    checks: dict[str, bool]


def gate_promotion(candidate: EvalReport, champion: EvalReport, gate: GateSettings) -> PromotionDecision:
    """Promote only if every check passes:

    - enough samples: the held-out set has at least `min_samples` examples;
    - beats the champion on `target_metric` by at least `margin`;
    - no slice regresses by more than `slice_tolerance` on the target metric;
    - leakage on control prompts is at most `max_leakage`.
    """
    t = gate.target_metric
    checks: dict[str, bool] = {}
    reasons: list[str] = []

    checks["enough_samples"] = candidate.n >= gate.min_samples and champion.n >= gate.min_samples
    if not checks["enough_samples"]:
        reasons.append(f"only {min(candidate.n, champion.n)} held-out samples; the gate needs {gate.min_samples}")

    cand, champ = candidate.overall.get(t), champion.overall.get(t)
    if cand is None or champ is None:
        checks["beats_champion"] = False
        reasons.append(f"target metric {t!r} missing from a report")
    else:
        checks["beats_champion"] = cand >= champ + gate.margin
        verdict = "beats" if checks["beats_champion"] else "does not beat"
        reasons.append(f"{t}: {cand:.3f} vs champion {champ:.3f} ({verdict} it by the margin {gate.margin:.2f})")

    regressed = []
    for name, base in champion.slices.items():
        got = candidate.slices.get(name)
        if got is None or got.n == 0:
            regressed.append(f"{name} (missing)")
            continue
        if got.metrics.get(t, 0.0) < base.metrics.get(t, 0.0) - gate.slice_tolerance:
            regressed.append(f"{name} ({got.metrics.get(t, 0.0):.3f} < {base.metrics.get(t, 0.0):.3f})")
    checks["no_slice_regression"] = not regressed
    if regressed:
        reasons.append(f"slices regressed beyond {gate.slice_tolerance:.2f}: {', '.join(regressed)}")

    checks["leakage_ok"] = candidate.leakage <= gate.max_leakage
    reasons.append(f"control-prompt leakage {candidate.leakage:.3f} (max {gate.max_leakage:.2f})")

    return PromotionDecision(all(checks.values()), tuple(reasons), checks)
