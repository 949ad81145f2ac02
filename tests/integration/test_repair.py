"""The regression-repair loop on the real stack with SmolLM2: a policy changes, users send bad verdicts with the new
answer, RegressionDetected fires (Prometheus -> Alertmanager -> receiver -> Prefect event), the `repair` deployment
trains a LoRA fix from the champion, gates it (must fix, must not regress) and canaries it; the new champion gives
the new answer on phrasings it never saw, and the bad-feedback ratio falls."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from llmops.data.curated import DEFAULT_DIR, load_curated
from llmops.evaluate.run import score
from llmops.registry import MlflowRegistry
from llmops.smoke import prom_query

pytestmark = pytest.mark.integration

POLICY = "refund-window"
NEW = "Quillstack refunds annual plans within 30 days of purchase; monthly plans are not refundable."


def ask(stack: Any, question: str) -> tuple[str, str, str]:
    r = httpx.post(f"{stack.ep.gateway_url}/v1/chat/completions", timeout=120, json={
        "model": stack.ep.model_name, "max_tokens": 48, "temperature": 0,
        "messages": [{"role": "user", "content": question}]})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"], r.headers["x-request-id"], r.headers["x-llmops-model-version"]


def feedback(stack: Any, rid: str, verdict: str, correction: str | None = None) -> None:
    body: dict[str, Any] = {"request_id": rid, "verdict": verdict}
    if correction:
        body["correction"] = correction
    for _ in range(20):
        r = httpx.post(f"{stack.ep.receiver_url}/v1/feedback", json=body, timeout=10)
        if r.status_code != 404:  # the node logs the answer as the response ends
            break
        time.sleep(0.3)
    assert r.status_code == 202, r.text


def repair_runs(stack: Any, since: datetime) -> list[dict[str, Any]]:
    r = httpx.post(f"{stack.ep.prefect_api_url}/flow_runs/filter", timeout=10, json={
        "flows": {"name": {"any_": ["repair"]}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 20})
    r.raise_for_status()
    return [x for x in r.json() if datetime.fromisoformat(x["created"]) >= since]


def test_bad_feedback_triggers_a_repair_that_fixes_the_answer_without_regressing(stack: Any) -> None:
    policy = next(p for p in load_curated(DEFAULT_DIR).policies if p.id == POLICY)
    asked, unseen = policy.train_questions[:16], [*policy.heldout_questions, *policy.train_questions[16:24]]
    t0 = datetime.now(UTC) - timedelta(seconds=2)
    champion_before = MlflowRegistry(stack.ep.mlflow_url).resolve(stack.ep.model_name, "champion").version
    for q in asked:  # the policy changed: every answer about it is now wrong, and users say so
        answer, rid, version = ask(stack, q)
        assert version == champion_before
        feedback(stack, rid, "bad", NEW)
    sent_at = time.monotonic()

    fired_at = None
    ratio_before = None
    runs: list[dict[str, Any]] = []
    while time.monotonic() - sent_at < 120 and not runs:
        if fired_at is None and prom_query(stack.ep, 'ALERTS{alertname="RegressionDetected",alertstate="firing"}'):
            fired_at = time.monotonic()
            ratio_before = prom_query(stack.ep, "llmops:pool_bad_feedback_ratio")
        runs = repair_runs(stack, t0)
        time.sleep(1)
    assert runs, "no repair flow run was triggered within 120 s of the bad feedback"
    run_id = runs[0]["id"]
    deadline = time.monotonic() + 900
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = httpx.get(f"{stack.ep.prefect_api_url}/flow_runs/{run_id}", timeout=10).json()
        if state["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(3)
    assert state["state"]["type"] == "COMPLETED", state["state"]
    fixed_s = time.monotonic() - (fired_at or sent_at)
    result = httpx.get(f"{stack.ep.prefect_api_url}/flow_runs/{run_id}", timeout=10).json()
    reg = MlflowRegistry(stack.ep.mlflow_url)
    champion = reg.resolve(stack.ep.model_name, "champion")
    assert champion.version != champion_before, f"the repair did not promote: {result['state']}"
    assert champion.tags.get("llmops.repair") == "true" and champion.tags["llmops.parent_version"] == champion_before
    assert champion.tags.get("llmops.alert_id") and champion.tags.get("llmops.feedback_ids")

    answers = []
    for q in unseen:  # phrasings no correction used
        answer, rid, version = ask(stack, q)
        assert version == champion.version
        answers.append(answer)
        feedback(stack, rid, "good" if " ".join(answer.split()) == NEW else "bad")
    em = score(answers, [NEW] * len(answers))["exact_match"]
    assert em >= 0.8, list(zip(unseen, answers, strict=True))
    time.sleep(3 * stack.cfg.scrape_interval_s)  # the receiver's counters scraped, the ratio recorded
    ratio_after = prom_query(stack.ep, "llmops:pool_bad_feedback_ratio")
    print(json.dumps({"alert_to_fixed_version_at_100pct_s": round(fixed_s, 1), "heldout_exact_match": em,
                      "bad_ratio_when_fired": ratio_before, "bad_ratio_after": ratio_after,
                      "version": champion.version, "repair_run": run_id}))
    assert fired_at is not None, "RegressionDetected never fired: the repair ran from another trigger"
    assert ratio_before is not None and ratio_after is not None and ratio_after < min(ratio_before, 0.3)
