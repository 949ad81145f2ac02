"""Feedback and signed hooks on the real stack: an answer's X-Request-Id -> a verdict stored in S3 and counted in
Prometheus; a signed call becomes a Prefect event, a forged one does not."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from llmops.data.prepare import parse_feedback_lines
from llmops.prefect_api import PrefectApi
from llmops.smoke import answer_with_id, send_feedback, wait_metric
from llmops.tenants import secret_file
from llmops.webhooks import signed_headers

pytestmark = pytest.mark.integration


def events_named(stack: Any, name: str, since: datetime) -> list[dict[str, Any]]:
    api = PrefectApi(stack.ep.prefect_api_url, stack.ep.prefect_ui_url)
    return api.events({"filter": {"event": {"name": [name]}, "occurred": {
        "since": since.isoformat(), "until": (datetime.now(UTC) + timedelta(minutes=1)).isoformat()}}})


def test_a_verdict_on_a_served_answer_reaches_the_feedback_log_and_prometheus(stack: Any) -> None:
    answer, rid, version = answer_with_id(stack.ep, "What is the refund window?", max_tokens=12)
    stored = send_feedback(stack.ep, rid, "bad", "Refunds are accepted within 14 days.")  # 202, else it raises
    bucket, key = str(stored["stored"]).removeprefix("s3://").split("/", 1)
    s3 = stack.ep.s3_client()
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    finally:  # this test's verdict must not become training data of the pipeline tests on the same stack
        s3.delete_object(Bucket=bucket, Key=key)
    recs, bad = parse_feedback_lines(key, body.splitlines())  # exactly what the training pipeline reads
    assert not bad and recs[0].response == answer and recs[0].model_version == version
    assert recs[0].messages[-1].content == "What is the refund window?"
    assert wait_metric(stack.ep, f'sum(llmops_feedback_total{{verdict="bad",model_version="{version}"}})', 1) >= 1
    unknown = httpx.post(f"{stack.ep.receiver_url}/v1/feedback", json={"request_id": "never-served",
                                                                       "verdict": "bad"}, timeout=10)
    assert unknown.status_code == 404 and "serving log" in unknown.json()["detail"]


def test_signed_hook_becomes_an_event_and_a_forged_one_does_not(stack: Any) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    secret = secret_file(stack.cfg.state_dir, "default").read_text().strip()
    reason = f"integration {uuid.uuid4().hex[:8]}"
    body = json.dumps({"reason": reason}).encode()
    url = f"{stack.ep.receiver_url}/hooks/default/repair"
    forged = httpx.post(url, content=body, timeout=10, headers=signed_headers("not the secret", body, "f-1"))
    assert forged.status_code == 401
    ok = httpx.post(url, content=body, timeout=10, headers=signed_headers(secret, body, uuid.uuid4().hex))
    assert ok.status_code == 202, ok.text
    found: list[dict[str, Any]] = []
    for _ in range(20):
        found = [e for e in events_named(stack, "llmops.regression.detected", since)
                 if e.get("payload", {}).get("reason") == reason]
        if found:
            break
        time.sleep(0.5)
    assert len(found) == 1 and found[0]["resource"]["prefect.resource.id"] == "llmops.tenant.default"
    spec = httpx.get(f"{stack.ep.receiver_url}/openapi.json", timeout=10).json()
    assert "/hooks/{tenant}/{hook}" in spec["paths"] and "/v1/feedback" in spec["paths"]
