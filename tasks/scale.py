"""Scaling tasks: one autoscaler pass over the stack's pool, and the pool's spend in MLflow."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from llmops.autoscaler import Autoscaler, ScaleResult
from llmops.endpoints import Endpoints
from llmops.metrics import PrometheusMetrics
from llmops.pool.manager import stack_pool
from llmops.stackconfig import load_effective_config

ROOT = Path(__file__).resolve().parents[1]


@task(timeout_seconds=900)
def autoscale(model: str, allow_scale_in: bool, alerts: list[str], trigger: str) -> ScaleResult:
    """Reconcile `model`'s pool with HAProxy, observe, decide and act under its tenant's policy and budget (the
    caller holds the pool lock). Only this pool's nodes are looked at or touched."""
    log = get_run_logger()
    ep = Endpoints.load()
    cfg = load_effective_config(ep.state_dir)
    tp = cfg.pool_for(model)
    pool = stack_pool(cfg, ep.mlflow_url, ep.haproxy_socket, ROOT, model=tp.model,
                      prefect_api_url=ep.prefect_api_url)
    scaler = Autoscaler(pool, PrometheusMetrics(ep.prometheus_url), tp.scaling, alias=cfg.model.alias,
                        engine=cfg.serving.engine.value, say=log.info)
    from prefect.runtime import flow_run

    result = scaler.run(allow_scale_in, frozenset(alerts), trigger, run_id=str(flow_run.get_id() or ""))
    d = result.decision
    rows = [("trigger", trigger or "-"), ("action", d.action.value), ("serving", f"{d.current} -> {d.desired}"),
            ("demand before caps", str(d.wanted)), ("why", "; ".join(d.reasons)),
            ("capped by", ", ".join(d.capped_by) or "-"), ("reconciled", result.reconciled.summary()),
            ("promoted standby", ", ".join(result.promoted) or "-"), ("started", ", ".join(result.started) or "-"),
            ("standby started", ", ".join(result.standby_started) or "-"),
            ("drained and stopped", ", ".join(result.removed) or "-"), ("errors", "; ".join(result.errors) or "-"),
            ("seconds", f"{result.seconds:.1f}")]
    md = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    create_markdown_artifact(md, key=f"scale-{tp.model}", description=f"{tp.tenant} scaling decision: {d.action.value}")
    return result


@task
def log_spend(model: str, trigger: str) -> dict[str, float]:
    """The pool's node-seconds and cost so far as MLflow metrics of the run `pool-<model>` (one per pool, in the
    experiment `<model>-serving`), against its tenant's own budget."""
    from mlflow import MlflowClient

    ep = Endpoints.load()
    cfg = load_effective_config(ep.state_dir)
    tp = cfg.pool_for(model)
    pool = stack_pool(cfg, ep.mlflow_url, ep.haproxy_socket, ROOT, model=tp.model,
                      prefect_api_url=ep.prefect_api_url)
    state, now = pool.read_state(), time.time()
    node_s = state.node_seconds(tp.model, now)
    nodes = pool.nodes()
    values = {"pool/node_seconds": node_s, "pool/cost": node_s * tp.scaling.node_price_per_hour / 3600,
              "pool/serving": float(sum(1 for n in nodes if not n.standby)),
              "pool/standby": float(sum(1 for n in nodes if n.standby)),
              "pool/cost_per_hour": len(nodes) * tp.scaling.node_price_per_hour,
              "pool/budget_per_hour": tp.scaling.budget_per_hour}
    client = MlflowClient(ep.mlflow_url)
    exp = client.get_experiment_by_name(f"{tp.model}-serving")
    exp_id = exp.experiment_id if exp else client.create_experiment(f"{tp.model}-serving")
    runs = client.search_runs([exp_id], filter_string=f"tags.llmops.pool = '{tp.model}'", max_results=1)
    run_id = runs[0].info.run_id if runs else client.create_run(
        exp_id, run_name=f"pool-{tp.model}", tags={"llmops.pool": tp.model, "llmops.tenant": tp.tenant}).info.run_id
    ts = int(now * 1000)
    for k, v in values.items():
        client.log_metric(run_id, k, v, timestamp=ts, step=int(now))
    client.set_tag(run_id, "llmops.last_trigger", trigger)
    return values
