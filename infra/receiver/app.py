"""The webhook receiver: Alertmanager alerts and signed external calls become Prefect events; users' feedback goes
to the S3 feedback log; `/metrics` publishes the pools' size, spend and budget, and the feedback counts.

- `POST /alertmanager`: Alertmanager's webhook (bearer token), alerts -> `llmops.alert.*` /
  `llmops.regression.*` events;
- `POST /hooks/{tenant}/{hook}`: HMAC-signed calls (llmops/webhooks.py), one event each;
- `POST /v1/feedback`: a verdict on an answer by the gateway's `X-Request-Id` -> S3 feedback log + counter.

    python -m infra.receiver --state-dir .llmops        (started by `llmops stack up`)

Bound to loopback. Alertmanager authenticates with a bearer token generated into the state dir (never in the
repo). A call that cannot become an event gets a 4xx with the problem and the fix and emits nothing; a Prefect
server that does not take the events gets a 502, so Alertmanager retries.
"""

from __future__ import annotations

import argparse
import hmac
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from infra.stack.services import endpoints_for
from llmops.alerts import HELD, alert_events, hold_reason
from llmops.data.serving_log import FeedbackCall, ServingLog, feedback_record
from llmops.endpoints import Endpoints
from llmops.errors import LlmopsError, ServiceError
from llmops.pool.state import pool_store
from llmops.prefect_api import PrefectApi
from llmops.repair import RepairStore
from llmops.stackconfig import StackConfig, load_effective_config
from llmops.tenants import resolve_secret
from llmops.webhooks import FeedbackHook, NonceStore, WebhookRejected, hook_event, verify

MAX_BODY = 1 << 20  # 1 MiB: Alertmanager groups are small
MAX_HOOK_BODY = 256 * 1024
FEEDBACK_BUCKET = "llmops"
FEEDBACK_PREFIX = "feedback/"  # what configs/train/*.yaml read (data.feedback_prefix)


REGRESSION, REGRESSION_HELD = "llmops.regression.detected", "llmops.regression.held"


def prefect_secret_block(api_url: str) -> Callable[[str], str | None]:
    """Read a Prefect Secret block's value through the server's REST API (None if there is no such block)."""
    def load(name: str) -> str | None:
        r = httpx.get(f"{api_url}/block_types/slug/secret/block_documents/name/{name}",
                      params={"include_secrets": "true"}, timeout=10)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        value = r.json().get("data", {}).get("value")
        return str(value) if value else None
    return load


def s3_put(ep: Endpoints) -> Callable[[str, str, bytes], None]:
    client: list[Any] = []

    def put(bucket: str, key: str, body: bytes) -> None:
        if not client:
            client.append(ep.s3_client())
        client[0].put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-ndjson")
    return put


def create_app(cfg: StackConfig, ep: Endpoints, token: str,
               post_events: Callable[[list[dict[str, Any]]], None] | None = None,
               put_object: Callable[[str, str, bytes], None] | None = None,
               load_block: Callable[[str], str | None] | None = None) -> FastAPI:
    """The receiver app. `post_events`, `put_object` and `load_block` default to the stack's Prefect server, S3
    and Prefect Secret blocks (unit tests pass fakes)."""
    app = FastAPI(title="elastic-llmops receiver", version="1",
                  description="Alertmanager and signed webhook calls -> Prefect events; user feedback -> the S3 "
                              "feedback log; pool spend and feedback metrics.")
    reg = CollectorRegistry()
    alerts_in = Counter("llmops_receiver_alerts", "Alerts received from Alertmanager", ["alert", "status"],
                        registry=reg)
    events_out = Counter("llmops_receiver_events", "Events posted to Prefect", ["event"], registry=reg)
    nodes = Gauge("llmops_pool_nodes", "Nodes of a pool by role", ["model", "role"], registry=reg)
    node_s = Gauge("llmops_pool_node_seconds", "Node-seconds spent by a pool since its state began", ["model"],
                   registry=reg)
    cost = Gauge("llmops_pool_cost", "Spend of a pool so far (node-seconds x price per hour / 3600)", ["model"],
                 registry=reg)
    burn = Gauge("llmops_pool_cost_per_hour", "What the pool costs per hour at its current size", ["model"],
                 registry=reg)
    budget = Gauge("llmops_pool_budget_per_hour", "The pool's hourly budget", ["model"], registry=reg)
    desired = Gauge("llmops_pool_desired_replicas", "Serving nodes wanted by the last scaling decision", ["model"],
                    registry=reg)
    feedback_n = Counter("llmops_feedback", "User verdicts received", ["tenant", "model", "model_version", "verdict"],
                         registry=reg)
    hooks_in = Counter("llmops_receiver_hooks", "Signed webhook calls by outcome", ["tenant", "hook", "status"],
                       registry=reg)
    store = pool_store(cfg.state_dir, cfg.pool_database)
    prefect = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
    nonces = NonceStore(cfg.state_dir / "receiver" / "nonces.sqlite")
    served_log = ServingLog(cfg.state_dir / "serving-log")
    block_loader = load_block if load_block is not None else prefect_secret_block(ep.prefect_api_url)
    put = put_object if put_object is not None else s3_put(ep)

    tenant_models = {p.tenant: p.model for p in cfg.pools()}

    def model_of(tenant: str) -> str:
        """The model a tenant's answers came from (its pool's); a tenant without a pool: the stack's."""
        return tenant_models.get(tenant, cfg.model.name)

    def store_feedback(calls: list[FeedbackCall]) -> list[dict[str, Any]]:
        """Every call's request must be in the serving log, else nothing is stored (404 naming them); each verdict
        becomes one JSON-lines object in the S3 feedback log, then is counted."""
        found = [(c, served_log.get(c.request_id)) for c in calls]
        unknown = [c.request_id for c, f in found if f is None]
        if unknown:
            raise HTTPException(404, f"request id(s) {', '.join(repr(u) for u in unknown[:5])} not in the serving "
                                     "log: send the X-Request-Id the gateway returned with the answer (CPU nodes log "
                                     "every answered chat completion); nothing was stored")
        out: list[dict[str, Any]] = []
        for call, served in found:
            assert served is not None
            now = datetime.now(UTC)
            rec = feedback_record(call, served, now)
            key = f"{FEEDBACK_PREFIX}{rec.tenant}/{now:%Y/%m/%d}/{now:%H%M%S}-{uuid.uuid4().hex[:12]}.jsonl"
            try:
                put(FEEDBACK_BUCKET, key, (rec.model_dump_json() + "\n").encode())
            except Exception as err:  # noqa: BLE001 - any storage failure: the client retries; this one is not counted
                raise HTTPException(502, f"feedback log unavailable ({type(err).__name__}: {err}); "
                                         f"{len(out)} of {len(calls)} stored; retry the rest") from None
            feedback_n.labels(rec.tenant, model_of(rec.tenant), rec.model_version, rec.verdict.value).inc()
            out.append({"stored": f"s3://{FEEDBACK_BUCKET}/{key}", "tenant": rec.tenant,
                        "model_version": rec.model_version})
        return out

    pools = {p.model: p for p in cfg.pools()}

    def pool_hold_reason(event: dict[str, Any]) -> str | None:
        pool = pools.get(event["payload"]["pool"])
        if pool is None or pool.tenant != event["payload"]["tenant"]:
            return None  # not a pool of that tenant: the scale flow refuses it with the reason
        state = store.read()
        serving, standby = state.serving_and_standby(pool.model)
        return hold_reason(event, serving, standby, state.scaling_of(pool.model).last_scale_out_at, pool.scaling,
                           time.time())

    repairs = RepairStore(cfg.state_dir / "repair" / "state.json")

    def repair_hold_reason(event: dict[str, Any]) -> str | None:
        """A RegressionDetected re-sent (Alertmanager's repeat_interval) while a repair runs is recorded against
        that repair here, as the repair flow would do, without starting a flow run that could only do that."""
        if event["event"] != REGRESSION:
            return None
        p = event["payload"]
        running = repairs.record_if_running({"event_id": event["id"], "trigger": REGRESSION,
                                             "reason": f"{p['alert']} on {p['pool']} ({p['tenant']})"}, time.time())
        return f"repair {running.run_id} is running: this trigger is recorded against it" if running else None

    def send(events: list[dict[str, Any]]) -> None:
        if post_events is not None:
            post_events(events)
            return
        try:  # Prefect's 503 ("SQLite busy, retry") is retried with backoff, as Prefect's own client does
            r = prefect.request("POST", "/events", json=events)
        except (httpx.HTTPError, ServiceError) as err:
            raise HTTPException(502, f"Prefect server unreachable: {err}") from None
        if r.status_code >= 300:
            raise HTTPException(502, f"Prefect refused the events: HTTP {r.status_code} {r.text[:200]}")

    def check_token(authorization: str | None) -> None:
        if not authorization or not hmac.compare_digest(authorization, f"Bearer {token}"):
            raise HTTPException(401, "missing or wrong bearer token: Alertmanager reads it from "
                                     f"{cfg.state_dir / 'receiver' / 'token'} (see alertmanager.yml)")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/alertmanager", status_code=202)
    async def alertmanager(request: Request, authorization: str | None = Header(None)) -> dict[str, Any]:
        check_token(authorization)
        body = await request.body()
        if len(body) > MAX_BODY:
            raise HTTPException(413, f"body of {len(body)} bytes exceeds {MAX_BODY}")
        try:
            events = alert_events(json.loads(body or b"null"))
        except (ValueError, ValidationError) as err:
            raise HTTPException(422, f"not an Alertmanager webhook payload (version 4): {err}") from None
        except LlmopsError as err:
            raise HTTPException(422, f"{err.problem}; fix: {err.fix}") from None
        for e in events:  # alerts that could only lead to `hold` start no flow run (llmops.alerts.hold_reason)
            why = pool_hold_reason(e) or repair_hold_reason(e)
            if why:
                e["event"] = REGRESSION_HELD if e["event"] == REGRESSION else HELD
                e["payload"]["held"] = why
        await run_in_threadpool(send, events)  # may wait out Prefect's 503 retries: never on the event loop
        for e in events:
            alerts_in.labels(e["payload"]["alert"], e["payload"]["status"]).inc()
            events_out.labels(e["event"]).inc()
        return {"events": [{"id": e["id"], "event": e["event"], "resource": e["resource"]["prefect.resource.id"]}
                           for e in events]}

    @app.post("/hooks/{tenant}/{hook}", status_code=202, responses={
        400: {"description": "malformed: bad timestamp or body not JSON"},
        401: {"description": "unsigned, wrong signature, or timestamp outside the replay window"},
        403: {"description": "unknown tenant, or a hook the tenant has not enabled"},
        404: {"description": "no such hook"}, 409: {"description": "delivery id already received (replay)"},
        413: {"description": "body over the limit"}, 422: {"description": "body does not match the hook's schema"},
        502: {"description": "the Prefect server did not take the event; retry with the same delivery id"}})
    async def hook(tenant: str, hook: str, request: Request) -> dict[str, Any]:
        """A signed call becomes one Prefect event on `llmops.tenant.<tenant>`. Headers: `X-Llmops-Delivery-Id`,
        `X-Llmops-Timestamp` (Unix s), `X-Llmops-Signature: v1,<base64 HMAC-SHA256(secret,
        "<id>.<timestamp>.<body>")>` (MLflow registry webhooks: their `X-MLflow-*` headers). Schemas: train
        `{config, reason}`, repair `{reason, model_version, bad_ratio}`, feedback `{items: [{request_id, verdict,
        correction}]}`, rollout `{version, policy}`, mlflow `{entity, action, timestamp, data}`."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_HOOK_BODY:
            hooks_in.labels(tenant[:40], hook[:40], "413").inc()
            raise HTTPException(413, f"body of {declared} bytes exceeds the {MAX_HOOK_BODY}-byte limit")
        body = b""
        async for chunk in request.stream():  # read at most the limit + 1 byte, whatever the header said
            body += chunk
            if len(body) > MAX_HOOK_BODY:
                break
        settings = cfg.tenants.get(tenant)
        try:
            secret = (await run_in_threadpool(resolve_secret, tenant, settings, cfg.state_dir, block_loader)
                      if settings else None)
            v = verify(tenant, hook, request.headers, body, secret,
                       frozenset(settings.hooks) if settings else frozenset(), nonces, max_body=MAX_HOOK_BODY)
        except WebhookRejected as err:
            hooks_in.labels(tenant[:40] if settings else "unknown", hook[:40], str(err.status)).inc()
            raise HTTPException(err.status, err.message) from None
        event = hook_event(v, datetime.now(UTC).isoformat(), str(uuid.uuid4()))
        if isinstance(v.body, FeedbackHook):  # a batch of verdicts: stored like POST /v1/feedback, all or none
            try:
                stored = await run_in_threadpool(store_feedback, list(v.body.items))
            except HTTPException as err:  # 404 (unknown request ids) or 502 (S3 down)
                nonces.release(v.tenant, v.delivery_id)
                hooks_in.labels(tenant, hook, str(err.status_code)).inc()
                raise
            event["payload"] = {k: val for k, val in event["payload"].items() if k != "items"}
            event["payload"]["stored"] = len(stored)
        try:
            await run_in_threadpool(send, [event])
        except HTTPException:
            nonces.release(v.tenant, v.delivery_id)  # not delivered: the sender's retry must not be a "replay"
            hooks_in.labels(tenant, hook, "502").inc()
            raise
        hooks_in.labels(tenant, hook, "202").inc()
        events_out.labels(event["event"]).inc()
        return {"event": event["event"], "id": event["id"], "resource": event["resource"]["prefect.resource.id"]}

    @app.post("/v1/feedback", status_code=202, responses={
        404: {"description": "request id not in the serving log"}, 422: {"description": "invalid body"},
        502: {"description": "the feedback log (S3) did not take the record; nothing was counted"}})
    def feedback(call: FeedbackCall) -> dict[str, Any]:
        """A user's verdict on one answer, named by the `X-Request-Id` the gateway returned with it. Stored in the
        S3 feedback log the training pipeline reads (one JSON line), and counted by tenant, model version and
        verdict for the `RegressionDetected` alert."""
        return store_feedback([call])[0]

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        # every version that served answers gets its feedback series at 0 before its first verdict, so that
        # Prometheus' increase() sees the first one
        served_log.refresh()
        for t, version in served_log.versions():
            for verdict in ("good", "bad"):
                feedback_n.labels(t, model_of(t), version, verdict)
        state, now = store.read(), time.time()
        models = {n.model for n in state.nodes.values()} | set(state.scaling) | set(pools)
        for model in models:
            policy = pools[model].scaling if model in pools else cfg.scaling  # a pool since removed: the stack's
            serving, standby = state.serving_and_standby(model)
            nodes.labels(model, "serving").set(serving)
            nodes.labels(model, "standby").set(standby)
            spent = state.node_seconds(model, now)
            node_s.labels(model).set(spent)
            cost.labels(model).set(spent * policy.node_price_per_hour / 3600)
            burn.labels(model).set((serving + standby) * policy.node_price_per_hour)
            budget.labels(model).set(policy.budget_per_hour)
            last = state.scaling_of(model).last_decision
            want = (last or {}).get("desired")
            if isinstance(want, int):
                desired.labels(model).set(want)
        return PlainTextResponse(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state-dir", required=True, type=Path)
    args = ap.parse_args(argv)
    cfg = load_effective_config(args.state_dir)
    ep = endpoints_for(cfg)
    token = (cfg.state_dir / "receiver" / "token").read_text().strip()
    uvicorn.run(create_app(cfg, ep, token), host=cfg.host, port=cfg.ports.receiver, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
