"""Repair tasks: read the feedback log, get the champion's standing data, and report the repair gate."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.artifacts import create_markdown_artifact

from llmops.data.curated import DEFAULT_DIR, load_curated
from llmops.data.feedback import list_feedback_objects, read_feedback
from llmops.data.schema import ChatExample, FeedbackRecord
from llmops.endpoints import Endpoints
from llmops.evaluate.gate import EvalReport
from llmops.registry import ModelVersionRef
from llmops.repair import RepairDecision
from tasks.retry import transient_only


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=transient_only)
def read_feedback_records(bucket: str, prefix: str) -> list[FeedbackRecord]:
    """Every valid record of the S3 feedback log (invalid lines are the training pipeline's quarantine)."""
    s3 = Endpoints.load().s3_client()
    records, _, _ = read_feedback(s3, bucket, list_feedback_objects(s3, bucket, prefix))
    return records


@dataclass(frozen=True)
class StandingData:
    """What the champion was trained on (replayed so nothing is forgotten) and the standing regression suite."""

    replay: list[ChatExample]
    suite: list[ChatExample]
    control: list[ChatExample]
    policy_answers: list[str]
    source: str  # where the replay came from


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=transient_only)
def standing_data(champion: ModelVersionRef, bucket: str) -> StandingData:
    """The champion's own training split when its lineage names a dataset version; else the curated general Q&A (a
    base model never trained here). The suite is the curated held-out questions and control prompts either way."""
    ep = Endpoints.load()
    s3 = ep.s3_client()
    curated = load_curated(DEFAULT_DIR)
    digest = champion.tags.get("llmops.dataset_digest", "")
    replay: list[ChatExample] = []
    source = ""
    if digest:
        try:
            body = s3.get_object(Bucket=bucket, Key=f"datasets/{digest}/train.jsonl")["Body"].read().decode()
            replay = [ChatExample.model_validate_json(x) for x in body.splitlines() if x.strip()]
            source = f"s3://{bucket}/datasets/{digest}/train.jsonl (champion v{champion.version}'s training split)"
        except s3.exceptions.NoSuchKey:
            replay = []
    if not replay:
        # a champion never trained here (the base model) knows none of the curated policies: replaying them would
        # teach them all in a short repair (measured: control-prompt leakage 0.20) instead of preserving anything;
        # what it does know and must keep is answering general questions
        replay = list(curated.general)
        source = (f"curated general Q&A (champion v{champion.version} has no dataset lineage: not trained on the "
                  "policies, so only its general answers are preserved)")
    return StandingData(replay, list(curated.heldout), list(curated.control),
                        [p.answer for p in curated.policies], source)


@task
def publish_repair_report(decision: RepairDecision, fix: EvalReport, suite_new: EvalReport,
                          suite_champion: EvalReport, facts: dict[str, str], mlflow_run_id: str) -> str:
    """The repair gate as a Prefect markdown artifact and an MLflow artifact + metrics."""
    from mlflow import MlflowClient

    verdict = "REGISTER as `challenger` and canary" if decision.promote else "REJECT: nothing is promoted"
    lines = [f"# Repair gate: {verdict}", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in facts.items()],
             "", "## Why", *[f"- {r}" for r in decision.reasons], "",
             "| suite slice | n | champion exact match | repair exact match |", "|---|---|---|---|"]
    for name, base in suite_champion.slices.items():
        new = suite_new.slices.get(name)
        lines.append(f"| {name} | {base.n} | {base.metrics.get('exact_match', 0):.3f} | "
                     f"{(new.metrics.get('exact_match', 0) if new else 0):.3f} |")
    lines += ["", "## Held-out corrected questions (must fix)", "| question | expected | answer |", "|---|---|---|"]
    lines += [f"| {s['question']} | {s['expected']} | {s['answer']} |".replace("\n", " ") for s in fix.samples]
    md = "\n".join(lines)
    create_markdown_artifact(md, key="repair-gate", description="repair: must fix, must not regress")
    client = MlflowClient()
    client.log_metric(mlflow_run_id, "repair/fix_exact_match", fix.overall.get("exact_match", 0.0))
    client.log_metric(mlflow_run_id, "repair/suite_exact_match", suite_new.overall.get("exact_match", 0.0))
    client.log_metric(mlflow_run_id, "repair/champion_suite_exact_match",
                      suite_champion.overall.get("exact_match", 0.0))
    client.log_metric(mlflow_run_id, "repair/leakage", suite_new.leakage)
    client.log_text(mlflow_run_id, md, "repair/gate_report.md")
    client.set_tag(mlflow_run_id, "llmops.gate", "pass" if decision.promote else "fail")
    return md
