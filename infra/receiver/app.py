"""The webhook receiver: Alertmanager alerts (and, with the repair issue, signed external calls) become Prefect
events; `/metrics` publishes the pools' size, spend and budget for Prometheus.

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
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import ValidationError

from infra.stack.services import endpoints_for
from llmops.alerts import alert_events
from llmops.endpoints import Endpoints
from llmops.errors import LlmopsError
from llmops.pool.state import PoolStore
from llmops.stackconfig import StackConfig, load_effective_config

MAX_BODY = 1 << 20  # 1 MiB: Alertmanager groups are small


def create_app(cfg: StackConfig, ep: Endpoints, token: str) -> FastAPI:
    app = FastAPI(title="elastic-llmops receiver", version="1",
                  description="Alertmanager and webhook calls -> Prefect events; pool spend metrics.")
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
    store = PoolStore(cfg.state_dir / "pool" / "pool.json")
    http = httpx.Client(timeout=10)

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
        try:
            r = http.post(f"{ep.prefect_api_url}/events", json=events)
        except httpx.HTTPError as err:
            raise HTTPException(502, f"Prefect server unreachable: {err}") from None
        if r.status_code >= 300:
            raise HTTPException(502, f"Prefect refused the events: HTTP {r.status_code} {r.text[:200]}")
        for e in events:
            alerts_in.labels(e["payload"]["alert"], e["payload"]["status"]).inc()
            events_out.labels(e["event"]).inc()
        return {"events": [{"id": e["id"], "event": e["event"], "resource": e["resource"]["prefect.resource.id"]}
                           for e in events]}

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        state, now = store.read(), time.time()
        policy = cfg.scaling
        models = {n.model for n in state.nodes.values()} | set(state.scaling) | {cfg.model.name}
        for model in models:
            mine = [n for n in state.nodes.values() if n.model == model]
            standby = sum(1 for n in mine if n.standby)
            nodes.labels(model, "serving").set(len(mine) - standby)
            nodes.labels(model, "standby").set(standby)
            spent = state.node_seconds(model, now)
            node_s.labels(model).set(spent)
            cost.labels(model).set(spent * policy.node_price_per_hour / 3600)
            burn.labels(model).set(len(mine) * policy.node_price_per_hour)
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
