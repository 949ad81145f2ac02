"""Signed webhooks: every way a call can be wrong gets its status, and only a good call yields an event."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops.webhooks import HOOKS, NonceStore, WebhookRejected, hook_event, sign, signed_headers, verify

SECRET = "s3cret-of-acme"
NOW = 1_800_000_000.0
ALL = frozenset(HOOKS)


@pytest.fixture
def nonces(tmp_path: Path) -> NonceStore:
    return NonceStore(tmp_path / "nonces.sqlite")


def call(nonces: NonceStore, body: object = None, hook: str = "repair", secret: str | None = SECRET,
         headers: dict[str, str] | None = None, raw: bytes | None = None, now: float = NOW, sent: float = NOW,
         delivery: str = "d-1", enabled: frozenset[str] = ALL, tenant: str = "acme") -> object:
    data = raw if raw is not None else json.dumps(body if body is not None else {"reason": "bad answers"}).encode()
    h = headers if headers is not None else signed_headers(SECRET, data, delivery, now=sent)
    return verify(tenant, hook, h, data, secret, enabled, nonces, now=now)


def status(fn: object) -> int:
    with pytest.raises(WebhookRejected) as err:
        fn()  # type: ignore[operator]
    return err.value.status


def test_a_signed_call_verifies_and_names_tenant_and_event(nonces: NonceStore) -> None:
    v = call(nonces)
    assert (v.tenant, v.hook, v.event) == ("acme", "repair", "llmops.regression.detected")  # type: ignore[attr-defined]
    e = hook_event(v, "2026-11-28T00:00:00+00:00", "e1")  # type: ignore[arg-type]
    assert e["resource"]["prefect.resource.id"] == "llmops.tenant.acme"
    assert e["payload"]["reason"] == "bad answers" and e["payload"]["delivery_id"] == "d-1"


@pytest.mark.parametrize(("case", "kwargs", "expected"), [
    ("unsigned", {"headers": {}}, 401),
    ("wrong signature", {"headers": {"X-Llmops-Delivery-Id": "d-1", "X-Llmops-Timestamp": str(int(NOW)),
                                     "X-Llmops-Signature": sign("other secret", "d-1", str(int(NOW)), b"{}")}}, 401),
    ("expired timestamp", {"sent": NOW - 301}, 401),
    ("timestamp from the future", {"sent": NOW + 301}, 401),
    ("timestamp not a number", {"headers": {"X-Llmops-Delivery-Id": "d", "X-Llmops-Timestamp": "yesterday",
                                            "X-Llmops-Signature": "v1,x"}}, 400),
    ("oversized", {"raw": b"{" + b" " * (300 * 1024) + b"}"}, 413),
    ("not JSON", {"raw": b"reason=bad"}, 400),
    ("wrong schema", {"body": {"reason": ""}}, 422),
    ("unknown field", {"body": {"reason": "x", "sudo": True}}, 422),
    ("unknown tenant", {"secret": None}, 403),
    ("hook not enabled for the tenant", {"enabled": frozenset({"train"})}, 403),
    ("unknown hook", {"hook": "shell"}, 404),
])
def test_rejections(nonces: NonceStore, case: str, kwargs: dict[str, object], expected: int) -> None:
    assert status(lambda: call(nonces, **kwargs)) == expected, case  # type: ignore[arg-type]


def test_a_replayed_delivery_is_refused_even_inside_the_window(nonces: NonceStore) -> None:
    call(nonces)
    assert status(lambda: call(nonces, now=NOW + 10)) == 409
    call(nonces, delivery="d-2", now=NOW + 10)  # a new id is a new call


def test_the_signature_binds_the_delivery_id_and_time(nonces: NonceStore) -> None:
    body = json.dumps({"reason": "r"}).encode()
    h = signed_headers(SECRET, body, "d-1", now=NOW)
    swapped = {**h, "X-Llmops-Delivery-Id": "d-fresh"}  # a fresh nonce on a captured call
    assert status(lambda: verify("acme", "repair", swapped, body, SECRET, ALL, nonces, now=NOW)) == 401
    later = {**h, "X-Llmops-Timestamp": str(int(NOW) + 100)}
    assert status(lambda: verify("acme", "repair", later, body, SECRET, ALL, nonces, now=NOW + 100)) == 401


def test_tenant_a_secret_cannot_trigger_tenant_b(nonces: NonceStore) -> None:
    assert status(lambda: call(nonces, tenant="beta", secret="beta's own secret")) == 401


def test_rejected_calls_burn_no_delivery_id(nonces: NonceStore) -> None:
    """A forged or invalid call never reserves the id, so it cannot block the real one."""
    status(lambda: call(nonces, body={"reason": ""}))
    call(nonces)  # the same id, now valid


def test_release_lets_an_undelivered_call_be_retried(nonces: NonceStore) -> None:
    call(nonces)
    nonces.release("acme", "d-1")
    call(nonces)


def test_ids_are_per_tenant_and_expire(nonces: NonceStore) -> None:
    assert nonces.reserve("a", "x", NOW) and nonces.reserve("b", "x", NOW)
    assert not nonces.reserve("a", "x", NOW + 1)
    assert nonces.reserve("a", "x", NOW + 2 * 300 + 1)


def test_mlflow_deliveries_verify_with_mlflows_own_signature(nonces: NonceStore) -> None:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    payload = json.dumps({"entity": "model_version", "action": "created", "timestamp": "2026-11-28T00:00:00Z",
                          "data": {"name": "support-assistant", "version": "3"}})
    ts = str(int(NOW))
    headers = {"X-MLflow-Delivery-Id": "m-1", "X-MLflow-Timestamp": ts,
               "X-MLflow-Signature": _generate_hmac_signature(SECRET, "m-1", ts, payload)}
    v = verify("acme", "mlflow", headers, payload.encode(), SECRET, ALL, nonces, now=NOW)
    assert v.event == "llmops.mlflow.model_version.created"
