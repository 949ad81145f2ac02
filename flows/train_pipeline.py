"""train_pipeline: collect -> fine-tune -> evaluate (challenger vs champion) -> gate -> register.

    llmops train --config configs/train/smollm2_lora.yaml
    python -m flows.train_pipeline --config configs/train/smollm2_lora.yaml
    prefect deployment run train-pipeline/train-pipeline      (or the Prefect UI)
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from llmops.data.curated import DEFAULT_DIR, load_curated
from llmops.endpoints import Endpoints
from llmops.train.config import load_train_config
from tasks.data import collect_dataset, load_split, snapshot_inputs
from tasks.evaluate import decide_promotion, keep_answers, score_model
from tasks.register import pull_base, register_challenger
from tasks.train import fine_tune

ROOT = Path(__file__).resolve().parents[1]


def _git_commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


@flow(name="train-pipeline", log_prints=True)
def train_pipeline_flow(config: str = "configs/train/smollm2_lora.yaml") -> dict[str, Any]:
    import mlflow

    log = get_run_logger()
    cfg = load_train_config(ROOT / config if not Path(config).is_absolute() else config)  # bad config: fails here
    ep = Endpoints.load()
    mlflow.set_tracking_uri(ep.mlflow_url)
    base_ref, base_dir = pull_base(cfg.model_name, cfg.base_version)  # unknown version: fails before training

    inputs = snapshot_inputs(cfg.data)
    info = collect_dataset(cfg.data, inputs, cfg.hyper.seed)
    train, evaluation = load_split(info, "train"), load_split(info, "eval")
    heldout, control = load_split(info, "heldout"), load_split(info, "control")  # the same version's files
    policy_answers = [p.answer for p in load_curated(cfg.data.curated_dir or DEFAULT_DIR).policies]

    mlflow.set_experiment(f"{cfg.model_name}-training")
    with mlflow.start_run(run_name=f"{cfg.method.value}-{flow_run.get_name() or 'local'}") as run:
        run_id = run.info.run_id
        mlflow.log_params({"method": cfg.method.value, "base_version": base_ref.version, **{
            f"hyper.{k}": v for k, v in cfg.hyper.model_dump().items()}})
        mlflow.set_tags({"llmops.dataset_digest": info.digest, "llmops.base_version": base_ref.version,
                         "llmops.git_commit": _git_commit(), "prefect.flow_run_id": str(flow_run.get_id())})
        _log_dataset(info.uri, info.digest, train)
        work = ep.state_dir / "runs" / run_id
        out = fine_tune(cfg, base_dir, train, evaluation, str(work), run_id, base=base_ref)
        mlflow.log_metrics({"train/seconds": out.seconds, "train/final_loss": out.final_loss,
                            "output/merged_bytes": out.merged_bytes, "output/adapter_bytes": out.adapter_bytes})
        bucket = cfg.data.feedback_bucket
        champion = score_model(base_dir, f"champion v{base_ref.version}", heldout, control, policy_answers,
                               model_sha256=base_ref.sha256, bucket=bucket)
        challenger = score_model(out.merged_dir, "challenger", heldout, control, policy_answers)
        decision, _ = decide_promotion(challenger, champion, cfg.gate, run_id)
        tags = {"llmops.dataset_digest": info.digest, "llmops.base_version": base_ref.version,
                "llmops.method": cfg.method.value, "llmops.git_commit": _git_commit(),
                "llmops.gate": "pass" if decision.promote else "fail",
                "llmops.eval.exact_match": f"{challenger.overall['exact_match']:.4f}",
                "llmops.eval.rouge_l": f"{challenger.overall['rouge_l']:.4f}",
                "llmops.eval.leakage": f"{challenger.leakage:.4f}",
                "llmops.adapter_sha256": out.adapter_sha256 or ""}
        ref = register_challenger(cfg.model_name, out.merged_dir, out.adapter_dir, run_id, tags, decision.promote)
        # both models' answers, by their registered sha256: a later gate or repair on either reads them back
        keep_answers(champion, base_ref.sha256, bucket, run_id)
        keep_answers(challenger, ref.sha256, bucket, run_id)
    verdict = "passed the gate: alias `challenger`" if decision.promote else "failed the gate: no alias"
    log.info("registered %s v%s; %s", ref.name, ref.version, verdict)
    return {"version": ref.version, "promoted": decision.promote, "reasons": list(decision.reasons),
            "exact_match": challenger.overall["exact_match"], "champion_exact_match": champion.overall["exact_match"],
            "leakage": challenger.leakage, "dataset_digest": info.digest, "mlflow_run_id": run_id}


def _log_dataset(uri: str, digest: str, train: list[Any]) -> None:
    """Log the dataset version as an MLflow dataset input of the run (source: its S3 prefix)."""
    import pandas as pd

    import mlflow

    df = pd.DataFrame([{"prompt": ex.prompt[-1].content, "completion": ex.completion, "slice": ex.slice}
                       for ex in train])
    ds = mlflow.data.from_pandas(df, source=uri, name=f"support-{digest[:12]}", digest=digest[:32])
    mlflow.log_input(ds, context="training")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run the training pipeline against the running stack.")
    parser.add_argument("--config", default="configs/train/smollm2_lora.yaml")
    print(train_pipeline_flow(config=parser.parse_args().config))
