"""scale and reconcile: the pool follows the traffic, within min, max and the budget.

    scale      triggered at once by `llmops.alert.firing` events (Alertmanager -> receiver -> Prefect); only
               scales out: promotes warm standby nodes, starts cold ones, refills the standby.
    reconcile  every 60 s (prefect.yaml schedule): replaces dead nodes, brings the pool to min, refills the
               standby, and is the only one that scales in (after the cool-down, draining first).
Each tenant's pool is its own: the alert names the pool (its model) and the tenant, and only that pool is looked
at, under its own lock, policy and budget; reconcile passes over every tenant's pool in turn.

    python -m flows.scale --reconcile        prefect deployment run scale/scale  (or the Prefect UI)
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from typing import Any

from prefect import flow, get_run_logger
from prefect.events import emit_event

from llmops.alerts import pool_resource_id
from llmops.endpoints import Endpoints
from llmops.pool.manager import POOL_LOCK_LEASE_S
from llmops.stackconfig import TenantPool, load_effective_config
from tasks.scale import autoscale, log_spend


def _locked_pass(tp: TenantPool, allow_scale_in: bool, alerts: list[str], trigger: str,
                 wait_s: float) -> dict[str, Any]:
    from prefect.concurrency.sync import concurrency

    log = get_run_logger()
    resource = {"prefect.resource.id": pool_resource_id(tp.tenant, tp.model), "llmops.pool": tp.model,
                "llmops.tenant": tp.tenant}
    with ExitStack() as held:
        try:  # the lock shared with rollouts: never resize a pool under a running canary
            held.enter_context(concurrency(f"pool-{tp.model}", occupy=1, strict=True, timeout_seconds=wait_s,
                                          lease_duration=POOL_LOCK_LEASE_S))
        except TimeoutError:
            log.warning("pool %s is busy (a rollout or another scaling action holds it): nothing done; "
                        "the next reconcile looks again", tp.model)
            emit_event("llmops.scale.deferred", payload={"trigger": trigger, "alerts": alerts}, resource=resource)
            return {"action": "deferred", "trigger": trigger}
        result = autoscale(tp.model, allow_scale_in, alerts, trigger)
    d = result.decision
    changed = d.action.value != "hold" or bool(result.standby_started) or result.reconciled.changed
    spend = log_spend(tp.model, trigger) if changed else {}  # MLflow gets the spend whenever the pool changes
    if "budget" in d.capped_by:
        emit_event("llmops.scale.capped", resource=resource,
                   payload={"wanted": d.wanted, "desired": d.desired, "capped_by": list(d.capped_by),
                            "reasons": list(d.reasons), "trigger": trigger})
    if changed:
        emit_event(f"llmops.scale.{d.action.value}", resource=resource,
                   payload={"current": d.current, "desired": d.desired, "promoted": result.promoted,
                            "started": result.started, "removed": result.removed, "trigger": trigger})
    return {"action": d.action.value, "current": d.current, "desired": d.desired, "reasons": list(d.reasons),
            "capped_by": list(d.capped_by), "promoted": result.promoted, "started": result.started,
            "standby_started": result.standby_started, "removed": result.removed, "errors": result.errors,
            "reconciled": result.reconciled.summary(), "seconds": result.seconds, "spend": spend}


@flow(name="scale", log_prints=True)
def scale_flow(alert: str = "", tenant: str = "default", pool: str = "", event_id: str = "") -> dict[str, Any]:
    """Scale out `pool` (a model name; default: the tenant's pool) now if it needs it; never scales in. The pool
    must belong to `tenant`: an alert never acts on another tenant's nodes."""
    from llmops.errors import ConfigError

    cfg = load_effective_config(Endpoints.load().state_dir)
    tp = cfg.pool_for(pool) if pool else cfg.pool_of_tenant(tenant)
    if tp.tenant != tenant:
        raise ConfigError(f"pool {tp.model!r} belongs to tenant {tp.tenant!r}, not {tenant!r}: nothing done",
                          "alerts carry their pool's own tenant label (llmops/scaling_rules.py); check the rule")
    trigger = f"alert {alert} ({event_id})" if alert else "manual"
    return _locked_pass(tp, False, [alert] if alert else [], trigger, wait_s=20)


@flow(name="reconcile", log_prints=True)
def reconcile_flow(tenant: str = "") -> dict[str, Any]:
    """The safety net, for every tenant's pool in turn (or `tenant`'s only): replace dead nodes, keep min and the
    standby, scale in after the cool-down. Returns the default tenant's result, with every pool's under `pools`."""
    cfg = load_effective_config(Endpoints.load().state_dir)
    pools = [cfg.pool_of_tenant(tenant)] if tenant else cfg.pools()
    results = {tp.model: _locked_pass(tp, True, [], "reconcile", wait_s=5) for tp in pools}
    return {**results[pools[0].model], "pools": results}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="One scaling pass over the running stack's pool.")
    ap.add_argument("--reconcile", action="store_true", help="the reconcile pass (may scale in)")
    a = ap.parse_args()
    print(reconcile_flow() if a.reconcile else scale_flow())
