"""Evaluation tasks: score a model on the held-out set and gate the challenger against the champion."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from llmops.data.schema import ChatExample
from llmops.endpoints import Endpoints
from llmops.evaluate.answers import book_json, book_key, load_book, save_book
from llmops.evaluate.gate import EvalReport, PromotionDecision, gate_promotion
from llmops.evaluate.run import evaluate_model, report_markdown
from llmops.train.config import GateSettings
from tasks.retry import transient_only


@task(timeout_seconds=1800)
def score_model(model_dir: str, label: str, heldout: list[ChatExample], control: list[ChatExample],
                policy_answers: list[str], model_sha256: str = "", bucket: str = "") -> EvalReport:
    """Score a model; with its registered sha256 and the bucket, prompts it answered before (its answer book) are
    not generated again."""
    known = load_book(Endpoints.load().s3_client(), bucket, model_sha256) if model_sha256 and bucket else {}
    report = evaluate_model(Path(model_dir), label, heldout, control, policy_answers, known=known)
    if report.reused:
        get_run_logger().info("%s: %d of %d answers read from its answer book (%s)", label, report.reused,
                              len(report.answers), book_key(model_sha256))
    return report


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=transient_only)
def keep_answers(report: EvalReport, model_sha256: str, bucket: str, mlflow_run_id: str) -> str:
    """Add the report's answers to the model's answer book in the object store and log the book to the MLflow run
    (nothing to write when every answer came from the book)."""
    from mlflow import MlflowClient

    key = book_key(model_sha256)
    if report.reused == len(report.answers):
        return key
    s3 = Endpoints.load().s3_client()
    save_book(s3, bucket, model_sha256, report.answers)
    MlflowClient().log_text(mlflow_run_id, book_json(model_sha256, report.answers),
                            f"eval/answers/{model_sha256[:16]}.json")
    return key


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
