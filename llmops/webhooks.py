"""Signed webhooks: verification, replay protection and the schema of each hook (no HTTP here).

A call to `POST /hooks/{tenant}/{hook}` carries three headers, the scheme MLflow 3 uses for its registry webhooks
(and Standard Webhooks): a delivery id (unique per call: the nonce), a Unix timestamp, and
`v1,<base64 HMAC-SHA256(secret, "<delivery id>.<timestamp>.<raw body>")>`. Our own hooks send them as
`X-Llmops-Delivery-Id`, `X-Llmops-Timestamp`, `X-Llmops-Signature`; MLflow's deliveries (`X-MLflow-*`) are taken
as they come. The signature binds the nonce and the time to the body, so neither can be swapped.

Checks, in order, each with its status: unknown tenant or a hook the tenant has not enabled (403); body over the
limit (413); a header missing (401 unsigned); a timestamp that is not an integer (400); outside the replay window
either way (401 expired); a signature that does not match the tenant's secret (401); a delivery id already seen
inside the window (409); a body that is not JSON (400) or not the hook's schema (422). Only a call that passes every
check becomes an event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmops.data.serving_log import FeedbackCall

SIGNATURE_VERSION = "v1"
REPLAY_WINDOW_S = 300
MAX_BODY = 256 * 1024
HEADERS = {"llmops": ("x-llmops-delivery-id", "x-llmops-timestamp", "x-llmops-signature"),
           "mlflow": ("x-mlflow-delivery-id", "x-mlflow-timestamp", "x-mlflow-signature")}


class WebhookRejected(Exception):
    """A call that must not become an event: the HTTP status and what to fix."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` over `<delivery id>.<timestamp>.<body>` (MLflow 3's webhook signature)."""
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(mac).decode()}"


def signed_headers(secret: str, body: bytes, delivery_id: str, now: float | None = None) -> dict[str, str]:
    """The headers a sender adds (used by `llmops hook` and the tests)."""
    ts = str(int(now if now is not None else time.time()))
    return {"X-Llmops-Delivery-Id": delivery_id, "X-Llmops-Timestamp": ts,
            "X-Llmops-Signature": sign(secret, delivery_id, ts, body)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainHook(_Strict):
    """Start the training pipeline."""

    config: str = Field("configs/train/smollm2_lora.yaml", min_length=1, max_length=300,
                        pattern=r"^configs/train/[A-Za-z0-9_.-]+\.ya?ml$")
    reason: str = Field("", max_length=500)


class RepairHook(_Strict):
    """An external monitor reports a regression (the same event as the RegressionDetected alert)."""

    reason: str = Field(min_length=1, max_length=500)
    model_version: str = Field("", max_length=50)
    bad_ratio: float | None = Field(None, ge=0, le=1)


class FeedbackHook(_Strict):
    """A batch of user feedback: each item is exactly a `POST /v1/feedback` body."""

    items: list[FeedbackCall] = Field(min_length=1, max_length=500)


class RolloutHook(_Strict):
    """Canary a registered version."""

    version: str = Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.@-]+$")
    policy: str = Field("", max_length=300)


class MlflowHook(BaseModel):
    """MLflow 3 registry webhook delivery: {entity, action, timestamp, data}."""

    model_config = ConfigDict(extra="allow", frozen=True)
    entity: str = Field(min_length=1, max_length=100, pattern=r"^[a-z_]+$")
    action: str = Field(min_length=1, max_length=100, pattern=r"^[a-z_]+$")
    timestamp: str = Field(min_length=1, max_length=100)
    data: dict[str, Any]


@dataclass(frozen=True)
class Hook:
    schema: type[BaseModel]
    scheme: str  # which headers carry the signature

    def event(self, name: str, body: BaseModel) -> str:
        if isinstance(body, MlflowHook):
            return f"llmops.mlflow.{body.entity}.{body.action}"
        return {"repair": "llmops.regression.detected", "feedback": "llmops.feedback.batch"}.get(
            name, f"llmops.hook.{name}")


HOOKS: dict[str, Hook] = {
    "train": Hook(TrainHook, "llmops"), "repair": Hook(RepairHook, "llmops"),
    "feedback": Hook(FeedbackHook, "llmops"), "rollout": Hook(RolloutHook, "llmops"),
    "mlflow": Hook(MlflowHook, "mlflow"),
}


class NonceStore:
    """Delivery ids seen inside the replay window, in SQLite (survives a receiver restart; one writer at a time).

    `reserve` is atomic: of two identical calls racing, one gets True. `release` gives a reserved id back when the
    call could not be delivered (Prefect down), so the sender's retry is not refused as a replay."""

    def __init__(self, path: Path, window_s: float = REPLAY_WINDOW_S) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.window_s = window_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS nonces (tenant TEXT, id TEXT, seen REAL, "
                         "PRIMARY KEY (tenant, id))")

    def reserve(self, tenant: str, delivery_id: str, now: float) -> bool:
        with self._lock:
            # a timestamp may lie up to the window in the future: keep ids for two windows
            self._db.execute("DELETE FROM nonces WHERE seen < ?", (now - 2 * self.window_s,))
            try:
                self._db.execute("INSERT INTO nonces VALUES (?, ?, ?)", (tenant, delivery_id, now))
            except sqlite3.IntegrityError:
                return False
            return True

    def release(self, tenant: str, delivery_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM nonces WHERE tenant = ? AND id = ?", (tenant, delivery_id))


@dataclass(frozen=True)
class Verified:
    tenant: str
    hook: str
    delivery_id: str
    event: str
    body: BaseModel


def verify(tenant: str, hook: str, headers: Mapping[str, str], body: bytes, secret: str | None,
           enabled: frozenset[str], nonces: NonceStore, now: float | None = None,
           window_s: float = REPLAY_WINDOW_S, max_body: int = MAX_BODY) -> Verified:
    """Check one call; raise WebhookRejected with the status and the fix, or return what to emit.
    `secret` None means the tenant is unknown; `enabled` the hooks it accepts."""
    now = time.time() if now is None else now
    spec = HOOKS.get(hook)
    if spec is None:
        raise WebhookRejected(404, f"no hook {hook!r}: the hooks are {', '.join(sorted(HOOKS))}")
    if secret is None or hook not in enabled:
        raise WebhookRejected(403, f"tenant {tenant!r} does not accept hook {hook!r}: check the tenant name in the "
                                   "URL and its `hooks` list in the tenants file")
    if len(body) > max_body:
        raise WebhookRejected(413, f"body of {len(body)} bytes exceeds the {max_body}-byte limit: send smaller "
                                   "batches")
    lower = {k.lower(): v for k, v in headers.items()}
    id_h, ts_h, sig_h = HEADERS[spec.scheme]
    missing = [h for h in (id_h, ts_h, sig_h) if not lower.get(h)]
    if missing:
        raise WebhookRejected(401, f"unsigned call: header(s) {', '.join(missing)} missing; sign with the tenant's "
                                   f"secret (see `llmops hook --help`)")
    delivery_id, ts, sig = lower[id_h], lower[ts_h], lower[sig_h]
    if len(delivery_id) > 200:
        raise WebhookRejected(400, "delivery id longer than 200 characters")
    try:
        sent = int(ts)
    except ValueError:
        raise WebhookRejected(400, f"timestamp {ts[:40]!r} is not Unix seconds") from None
    if abs(now - sent) > window_s:
        raise WebhookRejected(401, f"timestamp {sent} is {now - sent:+.0f} s from the receiver's clock, outside the "
                                   f"{window_s:.0f} s replay window: sign at send time and check the clocks")
    expected = sign(secret, delivery_id, ts, body)
    if not any(hmac.compare_digest(expected, s.strip()) for s in sig.split(" ") if s.strip()):
        raise WebhookRejected(401, f"signature does not match tenant {tenant!r}'s secret over "
                                   "'<delivery id>.<timestamp>.<raw body>'")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise WebhookRejected(400, f"body is not JSON: {err}") from None
    try:
        parsed = spec.schema.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise WebhookRejected(422, f"{hook} hook: {where}: {first['msg']} ({err.error_count()} error(s); "
                                   "see the OpenAPI document at /openapi.json)") from None
    if not nonces.reserve(tenant, delivery_id, now):
        raise WebhookRejected(409, f"delivery id {delivery_id!r} was already received: a replay (send each call "
                                   "with a new id)")
    return Verified(tenant, hook, delivery_id, spec.event(hook, parsed), parsed)


def hook_event(v: Verified, now_iso: str, event_id: str) -> dict[str, Any]:
    """The Prefect event of a verified call; the tenant is in the resource id."""
    return {"id": event_id, "occurred": now_iso, "event": v.event,
            "resource": {"prefect.resource.id": f"llmops.tenant.{v.tenant}", "llmops.tenant": v.tenant,
                         "llmops.hook": v.hook},
            "payload": {"tenant": v.tenant, "hook": v.hook, "delivery_id": v.delivery_id,
                        **v.body.model_dump(mode="json")}}
