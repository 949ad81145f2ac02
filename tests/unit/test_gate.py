"""The promotion gate, table-driven."""

from __future__ import annotations

import pytest

from llmops.evaluate.gate import EvalReport, SliceScore, gate_promotion
from llmops.train.config import GateSettings

GATE = GateSettings(target_metric="exact_match", margin=0.2, slice_tolerance=0.05, min_samples=50, max_leakage=0.1)


def report(em: float, slices: dict[str, float], n: int = 78, leakage: float = 0.0) -> EvalReport:
    return EvalReport("m", {k: SliceScore(13, {"exact_match": v}) for k, v in slices.items()},
                      {"exact_match": em}, n, leakage)


BASE = report(0.0, {"billing": 0.0, "plans": 0.0})


@pytest.mark.parametrize(
    ("candidate", "champion", "promote", "failed"),
    [
        (report(0.9, {"billing": 0.9, "plans": 0.9}), BASE, True, []),
        (report(0.15, {"billing": 0.1, "plans": 0.2}), BASE, False, ["beats_champion"]),
        (report(0.9, {"billing": 0.9, "plans": 0.9}, n=20), report(0.0, {"billing": 0.0}, n=20), False,
         ["enough_samples"]),
        (report(0.9, {"billing": 1.0, "plans": 0.5}), report(0.6, {"billing": 0.2, "plans": 0.7}), False,
         ["no_slice_regression"]),
        (report(0.9, {"billing": 0.9, "plans": 0.66}), report(0.6, {"billing": 0.2, "plans": 0.7}), True, []),
        (report(0.9, {"billing": 0.9}), report(0.1, {"billing": 0.1, "plans": 0.1}), False,
         ["no_slice_regression"]),
        (report(0.9, {"billing": 0.9, "plans": 0.9}, leakage=0.2), BASE, False, ["leakage_ok"]),
        (report(0.9, {"billing": 0.9, "plans": 0.9}, leakage=0.1), BASE, True, []),
        (report(0.79, {"billing": 0.8}), report(0.6, {"billing": 0.6}), False, ["beats_champion"]),
    ],
    ids=["clear-win", "too-small-gain", "too-few-samples", "slice-regression", "within-tolerance",
         "missing-slice", "leaks", "leak-at-limit", "margin-just-missed"],
)
def test_gate_table(candidate: EvalReport, champion: EvalReport, promote: bool, failed: list[str]) -> None:
    d = gate_promotion(candidate, champion, GATE)
    assert d.promote is promote, d.reasons
    assert sorted(k for k, ok in d.checks.items() if not ok) == sorted(failed)
    assert d.reasons  # always explains itself


def test_missing_target_metric_never_promotes() -> None:
    cand = EvalReport("c", {}, {"rouge_l": 1.0}, 78, 0.0)
    d = gate_promotion(cand, BASE, GATE)
    assert not d.promote and any("missing" in r for r in d.reasons)
