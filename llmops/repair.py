"""Quality regressions (pure): when the bad-feedback ratio says the champion is wrong, and what the repair flow
trains on.

The receiver counts feedback as `llmops_feedback_total{tenant, model, model_version, verdict}`; the rule
`RegressionDetected` fires when, over `window_s`, at least `min_feedback` verdicts arrived and more than `bad_ratio`
of them were bad, for `for_s`. Alertmanager -> receiver turns it into the Prefect event
`llmops.regression.detected`, which triggers the `repair` deployment.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from llmops.config import StrictModel


class RepairPolicy(StrictModel):
    """When a pool's answers count as regressed, and how a repair is trained and gated."""

    bad_ratio: float = Field(0.3, gt=0, lt=1)  # share of bad verdicts that signals a regression
    window_s: float = Field(120.0, ge=10)  # over this window
    min_feedback: int = Field(10, ge=1)  # and only with at least this many verdicts in it
    for_s: float = Field(10.0, ge=0)  # Prometheus `for:`


def _dur(seconds: float) -> str:
    return f"{max(int(round(seconds)), 0)}s"


def regression_rules(model: str, policy: RepairPolicy, tenant: str = "default") -> dict[str, Any]:
    """The rule group (for the pool's rule file) with the `RegressionDetected` alert."""
    sel = f'model="{model}",tenant="{tenant}"'
    w = _dur(policy.window_s)
    total = f"sum(increase(llmops_feedback_total{{{sel}}}[{w}]))"
    bad = f'sum(increase(llmops_feedback_total{{{sel},verdict="bad"}}[{w}]))'
    labels = {"model": model, "pool": model, "tenant": tenant}
    return {"name": f"llmops-quality-{model}", "rules": [
        {"record": "llmops:pool_bad_feedback_ratio", "expr": f"({bad} or vector(0)) / {total}", "labels": labels},
        {"alert": "RegressionDetected",
         "expr": f"(({bad} or vector(0)) / {total} > {policy.bad_ratio:g}) and ({total} >= {policy.min_feedback})",
         "for": _dur(policy.for_s),
         "labels": {**labels, "severity": "page", "action": "repair"},
         "annotations": {"summary": f"more than {policy.bad_ratio:.0%} of the feedback on {model} is bad "
                                    f"(window {w}, at least {policy.min_feedback} verdicts)",
                         "value_bad_ratio": "{{ $value }}"}},
    ]}
