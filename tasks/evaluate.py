"""Evaluation tasks: score a model on the held-out set and gate the challenger against the champion."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from llmops.data.schema import ChatExample
from llmops.evaluate.gate import EvalReport, PromotionDecision, gate_promotion
from llmops.evaluate.run import evaluate_model, report_markdown
from llmops.train.config import GateSettings


@task(timeout_seconds=1800)
def score_model(model_dir: str, label: str, heldout: list[ChatExample], control: list[ChatExample],
                policy_answers: list[str]) -> EvalReport:
    return evaluate_model(Path(model_dir), label, heldout, control, policy_answers)


@task
def decide_promotion(challenger: EvalReport, champion: EvalReport, gate: GateSettings, mlflow_run_id: str
                     ) -> tuple[PromotionDecision, str]:
    """Apply the gate; publish the report as a Prefect markdown artifact, MLflow metrics and an MLflow artifact."""
    from mlflow import MlflowClient

    decision = gate_promotion(challenger, champion, gate)
    md = report_markdown(challenger, champion, decision, gate.target_metric)
    create_markdown_artifact(md, key="eval-gate", description="challenger vs champion on the held-out set")
    client = MlflowClient()
    for who, rep in (("challenger", challenger), ("champion", champion)):
        for k, v in rep.overall.items():
            client.log_metric(mlflow_run_id, f"eval/{who}/{k}", v)
        client.log_metric(mlflow_run_id, f"eval/{who}/leakage", rep.leakage)
        for name, s in rep.slices.items():
            for k, v in s.metrics.items():
                client.log_metric(mlflow_run_id, f"eval/{who}/{name}/{k}", v)
    client.log_text(mlflow_run_id, md, "eval/gate_report.md")
    client.set_tag(mlflow_run_id, "llmops.gate", "pass" if decision.promote else "fail")
    return decision, md
