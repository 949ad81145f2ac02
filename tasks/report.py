"""Report tasks: rollout progress as a Prefect artifact, a PNG plot and an MLflow run."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from llmops.canary import RolloutReport
from llmops.endpoints import Endpoints
from llmops.plots import plot_rollout


@task
def publish_rollout_report(report: RolloutReport) -> str:
    """Table per step (Prefect), the plot and the timeline (MLflow run in `<model>-rollouts`); returns its id."""
    import mlflow

    ep = Endpoints.load()
    rows = [{"step": f"{s.share}%", "verdict": s.verdict, "seconds": round(s.seconds, 1),
             "canary requests": round(s.observation.canary_requests) if s.observation else 0,
             "why": "; ".join(s.reasons)} for s in report.steps]
    create_table_artifact(rows, key="rollout-steps", description=f"v{report.candidate}: {report.reason}")
    mlflow.set_tracking_uri(ep.mlflow_url)
    mlflow.set_experiment(f"{report.model}-rollouts")
    with mlflow.start_run(run_name=f"rollout-v{report.candidate}") as run:
        mlflow.log_params({"candidate": report.candidate, "baseline": report.baseline})
        mlflow.set_tags({"llmops.rollout": "promoted" if report.promoted else "rolled_back",
                         "llmops.rollout_reason": report.reason[:500]})
        mlflow.log_metric("rollout/seconds", report.seconds)
        for i, p in enumerate(report.timeline):
            mlflow.log_metrics({k: v for k, v in {"share": float(p.share), "canary_error_ratio": p.canary_error_ratio,
                                                  "canary_p95_s": p.canary_p95_s, "baseline_p95_s": p.baseline_p95_s,
                                                  "canary_requests": p.canary_requests}.items() if v is not None},
                               step=i)
        png = plot_rollout(report, ep.state_dir / "reports" / f"rollout-v{report.candidate}-{run.info.run_id}.png")
        mlflow.log_artifact(str(png), "rollout")
        url = f"{ep.mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    create_markdown_artifact(f"# Rollout of v{report.candidate}: {'promoted' if report.promoted else 'rolled back'}\n\n"
                             f"{report.reason}\n\nPlot and timeline: [{url}]({url})", key="rollout-report")
    return run.info.run_id
