"""The regression-repair loop on the real stack with SmolLM2 (`llmops.smoke.run_regression`, also the last step of
`make demo`): a policy changes, users send bad verdicts with the new answer, RegressionDetected fires (Prometheus ->
Alertmanager -> receiver -> Prefect event), the `repair` deployment trains a LoRA fix from the champion, gates it
(must fix, must not regress) and canaries it; the new champion gives the new answer on phrasings no correction used,
and the bad-feedback ratio falls."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmops.smoke import run_regression

pytestmark = pytest.mark.integration


def test_bad_feedback_triggers_a_repair_that_fixes_the_answer_without_regressing(stack: Any) -> None:
    r = run_regression(stack.ep)
    print(json.dumps({k: v for k, v in r.items() if k not in ("answers", "champion_tags")}))
    assert r["alert_fired"], "RegressionDetected never fired: the repair ran from another trigger"
    assert r["run_state"] == "COMPLETED"
    assert r["champion_after"] != r["champion_before"], "the repair was not promoted"
    tags = r["champion_tags"]
    assert tags.get("llmops.repair") == "true" and tags.get("llmops.parent_version") == r["champion_before"]
    assert tags.get("llmops.alert_id") and tags.get("llmops.feedback_ids")
    assert all(version == r["champion_after"] for _, _, version, _ in r["answers"])
    assert r["heldout_exact_match"] >= 0.8, r["answers"]
    assert r["ratio_after"] is not None and r["ratio_after"] < min(r["ratio_when_fired"] or 1.0, 0.3)
