"""The fine-tune task: one at a time (global concurrency limit `fine-tune`), metrics streamed to MLflow."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.concurrency.sync import concurrency

from llmops.data.schema import ChatExample
from llmops.hashing import dir_sha256
from llmops.train.adapters import merge_adapter, train_adapter
from llmops.train.config import TrainConfig

FINE_TUNE_LIMIT = "fine-tune"


@dataclass(frozen=True)
class FineTuneOutput:
    merged_dir: str
    adapter_dir: str | None
    merged_sha256: str
    adapter_sha256: str | None
    merged_bytes: int
    adapter_bytes: int
    steps: int
    final_loss: float
    seconds: float
    resumed_from: str | None


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@task(timeout_seconds=3600)
def fine_tune(cfg: TrainConfig, base_dir: str, train: list[ChatExample], evaluation: list[ChatExample],
              work_dir: str, mlflow_run_id: str) -> FineTuneOutput:
    """Train (adapter methods here; full fine-tunes through their launcher), merge, hash the outputs."""
    from mlflow.entities import Metric

    from mlflow import MlflowClient

    log = get_run_logger()
    client = MlflowClient()
    out = Path(work_dir)

    def sink(row: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        client.log_batch(mlflow_run_id, metrics=[Metric(f"train/{k}", v, now, step) for k, v in row.items()])
        if step % 5 == 0 or "eval_loss" in row:
            log.info("step %d: %s", step, {k: round(v, 4) for k, v in row.items()})

    with concurrency(FINE_TUNE_LIMIT, occupy=1, strict=True):
        if cfg.method.is_adapter:
            adapter, result = train_adapter(cfg, Path(base_dir), train, evaluation, out, sink)
            merged = merge_adapter(Path(base_dir), adapter, out / "merged")
            steps, loss, secs, resumed = result.steps, result.final_loss, result.seconds, result.resumed_from
            adapter_sha, adapter_bytes = dir_sha256(adapter), _size(adapter)
        else:
            from llmops.train.full import launch_full

            full = launch_full(cfg, Path(base_dir), train, out)
            merged, adapter = full.model_dir, None
            steps, loss, secs, resumed = full.steps, full.losses[-1], full.seconds, None
            adapter_sha, adapter_bytes = None, 0
            for i, v in enumerate(full.losses, start=1):
                client.log_metric(mlflow_run_id, "train/loss", v, step=i)
    return FineTuneOutput(str(merged), str(adapter) if adapter else None, dir_sha256(merged), adapter_sha,
                          _size(merged), adapter_bytes, steps, loss, secs, resumed)
