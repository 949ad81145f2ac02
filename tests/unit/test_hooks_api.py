"""The receiver's signed hooks and feedback API in-process (events and S3 writes go to recording fakes):
every rejected call gets its status and emits nothing; tenants are isolated; feedback is stored and counted.
The OpenAPI document is fuzzed with schemathesis: no 5xx, no event from an unsigned call."""

from __future__ import annotations

import json
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from infra.receiver.app import create_app
from infra.stack.services import endpoints_for
from llmops.stackconfig import StackConfig
from llmops.tenants import TenantSettings, ensure_local_secret
from llmops.webhooks import signed_headers

TOKEN = "am-token"


class World:
    """A receiver over a temp state dir with two tenants; records what it would send and store."""

    def __init__(self, state: Path, fail_s3: bool = False) -> None:
        self.cfg = StackConfig(state_dir=state, tenants={
            "acme": TenantSettings(), "beta": TenantSettings(hooks=("train",))})
        self.secrets = {t: ensure_local_secret(state, t).read_text() for t in self.cfg.tenants}
        self.events: list[dict[str, Any]] = []
        self.objects: dict[str, bytes] = {}
        self.fail_s3 = fail_s3
        self.app = create_app(self.cfg, endpoints_for(self.cfg), TOKEN, post_events=self.events.extend,
                              put_object=self._put, load_block=lambda name: None)
        self.client = TestClient(self.app)

    def _put(self, bucket: str, key: str, body: bytes) -> None:
        if self.fail_s3:
            raise ConnectionError("S3 down")
        self.objects[f"{bucket}/{key}"] = body

    def hook(self, tenant: str, hook: str, body: object, secret_of: str | None = None, **headers: str) -> Any:
        raw = json.dumps(body).encode()
        h = signed_headers(self.secrets[secret_of or tenant], raw, uuid.uuid4().hex)
        h.update(headers)
        return self.client.post(f"/hooks/{tenant}/{hook}", content=raw, headers=h)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_signed_repair_call_becomes_one_regression_event_for_its_tenant(world: World) -> None:
    r = world.hook("acme", "repair", {"reason": "refund answers are wrong", "bad_ratio": 0.6})
    assert r.status_code == 202, r.text
    (e,) = world.events
    assert e["event"] == "llmops.regression.detected"
    assert e["resource"]["prefect.resource.id"] == "llmops.tenant.acme" and e["payload"]["bad_ratio"] == 0.6


def test_every_bad_call_is_refused_with_its_status_and_emits_nothing(world: World) -> None:
    raw = json.dumps({"reason": "x"}).encode()
    good = signed_headers(world.secrets["acme"], raw, "fixed-id")
    cases = {
        "unsigned": (world.client.post("/hooks/acme/repair", content=raw), 401),
        "wrong signature": (world.hook("acme", "repair", {"reason": "x"}, secret_of="beta"), 401),
        "expired timestamp": (world.client.post("/hooks/acme/repair", content=raw, headers=signed_headers(
            world.secrets["acme"], raw, "old", now=datetime.now(UTC).timestamp() - 600)), 401),
        "oversized": (world.client.post("/hooks/acme/repair", content=b"{" + b" " * 300_000 + b"}",
                                        headers=good), 413),
        "malformed JSON": (world.client.post("/hooks/acme/repair", content=b"{nope", headers=signed_headers(
            world.secrets["acme"], b"{nope", "m1")), 400),
        "schema": (world.hook("acme", "repair", {"reason": "x", "rm": "-rf"}), 422),
        "unknown tenant": (world.client.post("/hooks/nobody/repair", content=raw, headers=good), 403),
        "hook not enabled for tenant": (world.hook("beta", "repair", {"reason": "x"}), 403),
        "unknown hook": (world.hook("acme", "shell", {"cmd": "id"}), 404),
    }
    for name, (resp, status) in cases.items():
        assert resp.status_code == status, (name, resp.status_code, resp.text)
        assert resp.json()["detail"], name  # says what is wrong
    assert world.events == []
    first = world.client.post("/hooks/acme/repair", content=raw, headers=good)
    replay = world.client.post("/hooks/acme/repair", content=raw, headers=good)
    assert (first.status_code, replay.status_code) == (202, 409)
    assert len(world.events) == 1


def test_tenant_a_cannot_trigger_tenant_b(world: World) -> None:
    r = world.hook("beta", "train", {"reason": "a's call"}, secret_of="acme")
    assert r.status_code == 401 and world.events == []
    ok = world.hook("beta", "train", {"reason": "b's own"})
    assert ok.status_code == 202 and world.events[0]["resource"]["prefect.resource.id"] == "llmops.tenant.beta"


def test_undelivered_event_frees_the_delivery_id_for_the_retry(tmp_path: Path) -> None:
    w = World(tmp_path)
    calls = {"n": 0}

    def flaky(events: list[dict[str, Any]]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            from fastapi import HTTPException

            raise HTTPException(502, "Prefect down")
        w.events.extend(events)

    w.app = create_app(w.cfg, endpoints_for(w.cfg), TOKEN, post_events=flaky, put_object=w._put,
                       load_block=lambda n: None)
    client = TestClient(w.app)
    raw = json.dumps({"reason": "x"}).encode()
    h = signed_headers(w.secrets["acme"], raw, "retry-me")
    assert client.post("/hooks/acme/repair", content=raw, headers=h).status_code == 502
    assert client.post("/hooks/acme/repair", content=raw, headers=h).status_code == 202
    assert len(w.events) == 1


def test_secret_from_the_environment_wins(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_WEBHOOK_SECRET_ACME", "rotated")
    assert world.hook("acme", "repair", {"reason": "x"}).status_code == 401  # the old file secret no longer works
    world.secrets["acme"] = "rotated"
    assert world.hook("acme", "repair", {"reason": "x"}).status_code == 202


def served_line(rid: str) -> str:
    return json.dumps({"request_id": rid, "tenant": "acme", "model_version": "4",
                       "messages": [{"role": "user", "content": "What is the refund window?"}],
                       "response": "30 days", "timestamp": "2026-11-28T12:00:00+00:00"})


def test_feedback_is_stored_as_a_training_record_and_counted(world: World) -> None:
    log = world.cfg.state_dir / "serving-log"
    log.mkdir(parents=True)
    (log / "node1.jsonl").write_text(served_line("req-1") + "\n")
    r = world.client.post("/v1/feedback", json={"request_id": "req-1", "verdict": "bad",
                                                "correction": "Refunds are accepted within 14 days."})
    assert r.status_code == 202, r.text
    (key, body), = world.objects.items()
    assert key.startswith("llmops/feedback/acme/")
    from llmops.data.prepare import parse_feedback_lines

    recs, bad = parse_feedback_lines(key, body.decode().splitlines())  # what the training pipeline reads
    assert not bad and recs[0].correction == "Refunds are accepted within 14 days." and recs[0].model_version == "4"
    m = world.client.get("/metrics").text
    assert 'llmops_feedback_total{model="support-assistant",model_version="4",tenant="acme",verdict="bad"} 1.0' in m
    assert 'verdict="good"} 0.0' in m  # the series exists before its first verdict


def test_feedback_for_an_unknown_request_or_with_storage_down_counts_nothing(tmp_path: Path) -> None:
    w = World(tmp_path, fail_s3=True)
    (tmp_path / "serving-log").mkdir()
    (tmp_path / "serving-log" / "n.jsonl").write_text(served_line("req-1") + "\n")
    assert w.client.post("/v1/feedback", json={"request_id": "nope", "verdict": "bad"}).status_code == 404
    assert w.client.post("/v1/feedback", json={"request_id": "req-1", "verdict": "meh"}).status_code == 422
    r = w.client.post("/v1/feedback", json={"request_id": "req-1", "verdict": "bad"})
    assert r.status_code == 502 and "retry" in r.json()["detail"]
    assert 'verdict="bad"} 1.0' not in w.client.get("/metrics").text


# --- fuzzing the published OpenAPI document ---------------------------------------------------------------------
_FUZZ_STATE = Path(tempfile.mkdtemp(prefix="llmops-fuzz-"))
_FUZZ = World(_FUZZ_STATE)
schema = schemathesis.openapi.from_asgi("/openapi.json", _FUZZ.app)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_no_5xx_and_no_event_from_an_unsigned_call(case: Any) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text)
    assert _FUZZ.events == [], "a fuzzed (unsigned) call produced an event"


def test_a_feedback_batch_hook_stores_all_or_nothing(world: World) -> None:
    log = world.cfg.state_dir / "serving-log"
    log.mkdir(parents=True)
    (log / "n.jsonl").write_text(served_line("a") + "\n" + served_line("b") + "\n")
    items = [{"request_id": "a", "verdict": "bad", "correction": "14 days"}, {"request_id": "zzz", "verdict": "good"}]
    r = world.hook("acme", "feedback", {"items": items})
    assert r.status_code == 404 and "zzz" in r.json()["detail"]
    assert world.objects == {} and world.events == []
    blank = world.hook("acme", "feedback", {"items": [{"request_id": "a", "verdict": "bad", "correction": ""}]})
    assert blank.status_code == 422 and world.objects == {}  # as /v1/feedback: a blank correction is refused
    items[1]["request_id"] = "b"
    ok = world.hook("acme", "feedback", {"items": items})
    assert ok.status_code == 202, ok.text
    assert len(world.objects) == 2 and world.events[0]["event"] == "llmops.feedback.batch"
    assert world.events[0]["payload"]["stored"] == 2 and "items" not in world.events[0]["payload"]
