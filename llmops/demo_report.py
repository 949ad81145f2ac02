"""Gather the demo's report from the running stack and publish it (file, MLflow artifact, Prefect artifact).

Reads: Prometheus (`query_range`) for the timeline, the Prefect API for flow runs and the rollout-step tables the
rollout flow published, MLflow for the eval metrics of each gated version. Writes `<state>/reports/demo-<stamp>.html`
(and the PNG beside it), logs both to the MLflow experiment `llmops-demo`, and creates the Prefect markdown artifact
`demo-report` that links to them.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from llmops.endpoints import Endpoints
from llmops.prefect_api import PrefectApi
from llmops.report import (
    DemoReport,
    collect_timeline,
    gate_rows,
    markdown_summary,
    plot_timeline,
    render_html,
    timestamp,
)


def prometheus_range(url: str):  # type: ignore[no-untyped-def]
    def query(expr: str, start: float, end: float, step: float) -> list[tuple[dict[str, str],
                                                                             list[tuple[float, float]]]]:
        r = httpx.get(f"{url}/api/v1/query_range", timeout=30,
                      params={"query": expr, "start": start, "end": end, "step": step})
        r.raise_for_status()
        return [(res["metric"], [(float(t), float(v)) for t, v in res["values"]])
                for res in r.json()["data"]["result"]]
    return query


def prometheus_value(url: str, expr: str, at: float) -> float | None:
    r = httpx.get(f"{url}/api/v1/query", timeout=10, params={"query": expr, "time": at})
    res = r.json().get("data", {}).get("result", []) if r.status_code == 200 else []
    return float(res[0]["value"][1]) if res else None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def flow_runs_between(api: PrefectApi, t0: float, t1: float) -> list[dict[str, Any]]:
    """Flow runs that started in [t0, t1], with their flow's name."""
    runs = api.flow_runs({"flow_runs": {"start_time": {"after_": _iso(t0), "before_": _iso(t1)}},
                          "sort": "START_TIME_ASC", "limit": 200})
    flows = {str(f["id"]): str(f["name"]) for f in api.json("POST", "/flows/filter", json={"limit": 200})}
    return [{**r, "flow_name": flows.get(str(r.get("flow_id")), str(r.get("name")))} for r in runs]


def rollout_tables(api: PrefectApi, t0: float) -> list[dict[str, Any]]:
    """The `rollout-steps` table artifacts the rollout flow published since t0, oldest first."""
    arts = api.json("POST", "/artifacts/filter", json={
        "artifacts": {"key": {"any_": ["rollout-steps"]}}, "sort": "CREATED_DESC", "limit": 50})
    out = []
    for a in reversed(arts):
        created = timestamp(a["created"])
        if created is None or created < t0:
            continue
        data = a.get("data")
        rows = json.loads(data) if isinstance(data, str) else data
        out.append({"title": a.get("description") or "rollout", "rows": list(rows or [])})
    return out


def gate_tables(mlflow_url: str, model: str, t0: float) -> list[dict[str, Any]]:
    """One table per version registered since t0: eval metrics of champion vs challenger, and the verdict."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_url)
    out = []
    for mv in sorted(client.search_model_versions(f"name = '{model}'"), key=lambda v: int(v.version)):
        if mv.creation_timestamp / 1000 < t0 or "llmops.gate" not in mv.tags:
            continue
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        rows = gate_rows(metrics)
        for key in ("repair/fix_exact_match", "repair/suite_exact_match", "repair/champion_suite_exact_match"):
            if key in metrics:
                rows.append({"metric": key, "champion": None, "challenger": metrics[key], "delta": None})
        kind = "repair" if mv.tags.get("llmops.repair") == "true" else "training"
        out.append({"title": f"v{mv.version} ({kind})", "verdict": f"gate {mv.tags['llmops.gate']}",
                    "rows": rows})
    return out


def cost_summary(prom_url: str, model: str, t0: float, t1: float) -> dict[str, float | None]:
    spent0 = prometheus_value(prom_url, f'llmops_pool_cost{{model="{model}"}}', t0)
    spent1 = prometheus_value(prom_url, f'llmops_pool_cost{{model="{model}"}}', t1)
    budget = prometheus_value(prom_url, f'llmops_pool_budget_per_hour{{model="{model}"}}', t1)
    hours = (t1 - t0) / 3600
    spent = (spent1 - spent0) if spent0 is not None and spent1 is not None else spent1
    return {"hours": round(hours, 3), "spent": spent, "budget_per_hour": budget,
            "budget_for_the_period": budget * hours if budget is not None else None,
            "share_of_budget": (spent / (budget * hours)) if spent is not None and budget else None}


WORK_TASKS = ("fine_tune", "score_model", "roll_out_canary", "autoscale")  # training, evaluation, serving


def overhead_split(runs: list[dict[str, Any]], tasks: list[dict[str, Any]], wall_s: float, stack_up_s: float,
                   nodes_s: float = 0.0, foreground: set[str] | None = None) -> dict[str, float]:
    """Where the demo's wall time went (pure). Overhead = bringing the stack's services up and registering the model
    (`stack_up_s` less `nodes_s`, the serving nodes' start) + each foreground flow run's wait from due to start
    (worker pick-up, process spawn) + its time outside the work tasks (Prefect and MLflow calls, data snapshots,
    registration). Work = training, evaluation and serving tasks; time outside flow runs (the demo's own traffic and
    waits) counts as serving. A subflow belongs to its parent's run (the repair's canary is the rollout subflow):
    its work is the parent's, its time inside the parent's.

    Foreground runs are the ones the demo waits on (`foreground`: their ids; None: every run). The others (the
    alert-triggered `scale` runs, the scheduled `reconcile` runs, a repair trigger recorded against the running
    repair) run beside the story and lengthen its wall time only by the CPU they take: their orchestration time is
    reported as `background_*`, not added to the overhead."""
    by_id = {str(r["id"]): r for r in runs}
    task_run_flow = {str(t["id"]): str(t.get("flow_run_id")) for t in tasks if t.get("id")}

    def root(rid: str) -> str:
        seen: set[str] = set()
        while (parent := by_id.get(rid, {}).get("parent_task_run_id")) and rid not in seen:
            seen.add(rid)
            owner = task_run_flow.get(str(parent))
            if owner is None or owner not in by_id:
                break
            rid = owner
        return rid

    work_of: dict[str, float] = {}
    for t in tasks:
        if str(t.get("task_key", t.get("name", ""))).split("-")[0] in WORK_TASKS:
            rid = root(str(t.get("flow_run_id")))
            work_of[rid] = work_of.get(rid, 0.0) + float(t.get("total_run_time") or 0.0)
    sums = {side: {"runs": 0.0, "in_flows": 0.0, "work": 0.0, "waits": 0.0} for side in ("fg", "bg")}
    for r in runs:
        if r.get("parent_task_run_id") and root(str(r["id"])) != str(r["id"]):
            continue  # a subflow: inside its parent
        rid = str(r["id"])
        side = sums["fg" if foreground is None or rid in foreground else "bg"]
        due, started = timestamp(r.get("expected_start_time")), timestamp(r.get("start_time"))
        side["runs"] += 1
        side["in_flows"] += float(r.get("total_run_time") or 0.0)
        side["work"] += work_of.get(rid, 0.0)
        if due is not None and started is not None:  # due: a triggered run's creation, a scheduled one's slot
            side["waits"] += max(0.0, started - due)
    fg, bg = sums["fg"], sums["bg"]
    stack = max(stack_up_s - nodes_s, 0.0)
    overhead = stack + fg["waits"] + max(fg["in_flows"] - fg["work"], 0.0)
    return {"wall_s": round(wall_s, 1), "stack_up_s": round(stack, 1), "nodes_start_s": round(nodes_s, 1),
            "flow_runs": int(fg["runs"]), "flow_start_waits_s": round(fg["waits"], 1),
            "in_flows_s": round(fg["in_flows"], 1), "work_tasks_s": round(fg["work"], 1),
            "overhead_s": round(overhead, 1), "overhead_share": round(overhead / wall_s, 3) if wall_s else 0.0,
            "background_runs": int(bg["runs"]), "background_start_waits_s": round(bg["waits"], 1),
            "background_outside_work_s": round(max(bg["in_flows"] - bg["work"], 0.0), 1)}


FLOW_RUN_URL = re.compile(r"/runs/flow-run/([0-9a-f-]{36})")


def stage_flow_runs(report: DemoReport) -> set[str]:
    """The flow runs the demo's stages waited on: the ones each stage linked to."""
    return {m.group(1) for s in report.stages for _, url in s.links if (m := FLOW_RUN_URL.search(url))}


def orchestration_split(api: PrefectApi, runs: list[dict[str, Any]], wall_s: float, stack_up_s: float,
                        nodes_s: float = 0.0, foreground: set[str] | None = None) -> dict[str, float]:
    """`overhead_split` on the demo's flow runs and their task runs from the Prefect API."""
    ids = [str(r["id"]) for r in runs]
    tasks = (api.json("POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": ids}}, "limit": 200}) or []
             ) if ids else []
    return overhead_split(runs, list(tasks), wall_s, stack_up_s, nodes_s, foreground)


def publish(ep: Endpoints, report: DemoReport, t1: float | None = None) -> Path:
    """Build the page from the stack's records and publish it; returns the HTML file."""
    t1 = t1 or time.time()
    api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
    runs = flow_runs_between(api, report.started_at, t1)
    tl = collect_timeline(prometheus_range(ep.prometheus_url), runs, report.model, report.started_at, t1)
    report.gates = gate_tables(ep.mlflow_url, report.model, report.started_at)
    report.rollouts = rollout_tables(api, report.started_at)
    report.cost = cost_summary(ep.prometheus_url, report.model, report.started_at, t1)
    up = next((s.seconds for s in report.stages if s.name.endswith("stack up")), 0.0)
    report.overhead = orchestration_split(api, runs, t1 - report.started_at, up, report.nodes_start_s,
                                          stage_flow_runs(report))
    png = None if tl.empty else plot_timeline(tl, f"{report.model}: the demo on one time axis")
    stamp = datetime.fromtimestamp(report.started_at, UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = ep.state_dir / "reports"
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / f"demo-{stamp}.html"
    png_path = out_dir / f"demo-{stamp}-timeline.png"
    if png:
        png_path.write_bytes(png)

    import mlflow

    mlflow.set_tracking_uri(ep.mlflow_url)
    mlflow.set_experiment("llmops-demo")
    with mlflow.start_run(run_name=f"demo-{stamp}") as run:
        url = f"{ep.mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts"
        report.links.append(("MLflow run with this report", url))
        html_path.write_text(render_html(report, png))
        mlflow.log_artifact(str(html_path), "report")
        if png:
            mlflow.log_artifact(str(png_path), "report")
        mlflow.set_tags({"llmops.demo": "completed" if report.ok else "stopped"})
        mlflow.log_metric("demo/seconds", t1 - report.started_at)
        mlflow.log_metric("demo/orchestration_overhead_share", report.overhead.get("overhead_share", 0.0))
        for s in report.stages:
            mlflow.log_metric(f"demo/stage_seconds/{s.name.split(' ')[0].strip('[]').replace('/', '_of_')}",
                              s.seconds)
    api.json("POST", "/artifacts/", json={
        "key": "demo-report", "type": "markdown", "description": report.title,
        "data": markdown_summary(report, url) + f"\n\nLocal file: `{html_path}`"})
    return html_path
