"""Alertmanager webhook payloads -> Prefect events (pure).

Alertmanager posts a group of alerts (webhook payload version 4). Each alert becomes one Prefect event
`llmops.alert.firing` or `llmops.alert.resolved` on the resource `llmops.pool.<tenant>.<pool>`, so deployment
triggers in prefect.yaml can match a tenant's pool and pass the alert to the `scale` flow as parameters.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmops.errors import LlmopsError
from llmops.scaling import ScalePolicy

DEFAULT_TENANT = "default"


class AmAlert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: str = Field(pattern="^(firing|resolved)$")
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: str = ""
    endsAt: str = ""
    fingerprint: str = ""


class AmPayload(BaseModel):
    """The fields of Alertmanager's webhook body we use (version 4)."""

    model_config = ConfigDict(extra="ignore")

    version: str = "4"
    status: str = ""
    receiver: str = ""
    groupKey: str = ""
    alerts: list[AmAlert] = Field(min_length=1)


def pool_resource_id(tenant: str, pool: str) -> str:
    return f"llmops.pool.{tenant}.{pool}"


def alert_events(payload: dict[str, Any], now: datetime | None = None) -> list[dict[str, Any]]:
    """Prefect events (JSON-ready dicts for `POST /api/events`) of one Alertmanager webhook call.

    An alert without a `pool` label cannot be routed to a pool: refused with the fix, nothing emitted.
    """
    body = AmPayload.model_validate(payload)
    occurred = (now or datetime.now(UTC)).isoformat()
    events = []
    for a in body.alerts:
        name = a.labels.get("alertname")
        pool = a.labels.get("pool")
        if not name or not pool:
            raise LlmopsError(f"alert {a.labels} has no {'alertname' if not name else 'pool'} label",
                              "give every llmops alert rule the labels `pool` (the model name) and `tenant`")
        tenant = a.labels.get("tenant", DEFAULT_TENANT)
        values = {k.removeprefix("value_"): v for k, v in a.annotations.items() if k.startswith("value_")}
        action = a.labels.get("action", "none")
        # a quality regression is its own event (the `repair` deployment's trigger); the rest are alerts
        kind = ("llmops.regression." + ("detected" if a.status == "firing" else "resolved") if action == "repair"
                else f"llmops.alert.{a.status}")
        events.append({
            "id": str(uuid.uuid4()),
            "occurred": occurred,
            "event": kind,
            "resource": {"prefect.resource.id": pool_resource_id(tenant, pool), "prefect.resource.name": pool,
                         "llmops.tenant": tenant, "llmops.pool": pool, "llmops.alert": name,
                         "llmops.action": action},
            "related": [],
            "payload": {"alert": name, "status": a.status, "tenant": tenant, "pool": pool,
                        "severity": a.labels.get("severity", ""), "summary": a.annotations.get("summary", ""),
                        "values": values, "starts_at": a.startsAt, "fingerprint": a.fingerprint,
                        "group_key": body.groupKey},
        })
    return events


HELD = "llmops.alert.held"


def hold_reason(event: dict[str, Any], serving: int, standby: int, last_scale_out_at: float | None,
                policy: ScalePolicy, now: float) -> str | None:
    """Why a firing scale-out (or scale-in) alert of a pool cannot lead to any action now, or None if it can.

    A held alert is still posted (as `llmops.alert.held`, with the reason) but starts no `scale` run: at the cap
    (serving nodes at max_replicas or what the budget pays, no standby to promote) or inside the scale-out
    cool-down, the flow could only decide `hold`, and on a saturated host each useless run is a process start that
    competes with the nodes for CPU. Alertmanager re-sends a still-firing alert (repeat_interval), and `reconcile`
    runs on its schedule, so a held alert is acted on once an action is possible again."""
    if event.get("event") != "llmops.alert.firing":
        return None
    if event["resource"].get("llmops.action") == "scale_in":  # LowUtilisation triggers reconcile: only above min
        return None if serving > policy.min_replicas else f"at min replicas ({serving} serving): nothing to scale in"
    if event["resource"].get("llmops.action") != "scale_out":
        return None
    cap = policy.serving_cap
    if serving >= cap and standby == 0 and serving >= policy.min_replicas:
        return (f"at the cap: {serving} serving, cap {cap} (max_replicas {policy.max_replicas}, budget pays "
                f"{policy.affordable_nodes} node(s) incl. {policy.warm_standby} standby)")
    if last_scale_out_at is not None and now - last_scale_out_at < policy.up_cooldown_s and serving >= \
            policy.min_replicas:
        return f"inside the scale-out cool-down ({policy.up_cooldown_s - (now - last_scale_out_at):.0f} s left)"
    return None
