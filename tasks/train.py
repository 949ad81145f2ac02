"""The fine-tune task: one at a time (global concurrency limit `fine-tune`), metrics streamed to MLflow."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.concurrency.sync import concurrency

from llmops.data.prepare import to_jsonl
from llmops.data.schema import ChatExample
from llmops.endpoints import Endpoints
from llmops.errors import ServiceError
from llmops.hashing import dir_sha256
from llmops.registry import ModelVersionRef
from llmops.train.adapters import merge_adapter, train_adapter
from llmops.train.config import TrainConfig

FINE_TUNE_LIMIT = "fine-tune"
FINE_TUNE_BUCKET = "llmops"  # a remote fine-tune's examples and model: s3://llmops/fine-tunes/<mlflow run id>/


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


def run_fine_tune(cfg: TrainConfig, base_dir: Path, train: list[ChatExample], evaluation: list[ChatExample],
                  out: Path, mlflow_run_id: str, say: Callable[[str], None]) -> FineTuneOutput:
    """Train (adapter methods here; full fine-tunes through their launcher), merge, hash the outputs; metrics stream
    to the MLflow run. The same code runs in the flow (local) and on a training host (flows/fine_tune_job.py)."""
    from mlflow.entities import Metric

    from mlflow import MlflowClient

    client = MlflowClient()

    def sink(row: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        client.log_batch(mlflow_run_id, metrics=[Metric(f"train/{k}", v, now, step) for k, v in row.items()])
        if step % 5 == 0 or "eval_loss" in row:
            say(f"step {step}: {({k: round(v, 4) for k, v in row.items()})}")

    if cfg.method.is_adapter:
        adapter, result = train_adapter(cfg, base_dir, train, evaluation, out, sink)
        merged = merge_adapter(base_dir, adapter, out / "merged")
        steps, loss, secs, resumed = result.steps, result.final_loss, result.seconds, result.resumed_from
        adapter_sha, adapter_bytes = dir_sha256(adapter), _size(adapter)
    else:
        from llmops.train.full import launch_full

        full = launch_full(cfg, base_dir, train, out)
        merged, adapter = full.model_dir, None
        steps, loss, secs, resumed = full.steps, full.losses[-1], full.seconds, None
        adapter_sha, adapter_bytes = None, 0
        for i, v in enumerate(full.losses, start=1):
            client.log_metric(mlflow_run_id, "train/loss", v, step=i)
    return FineTuneOutput(str(merged), str(adapter) if adapter else None, dir_sha256(merged), adapter_sha,
                          _size(merged), adapter_bytes, steps, loss, secs, resumed)


@task(timeout_seconds=3600 * 24)
def fine_tune(cfg: TrainConfig, base_dir: str, train: list[ChatExample], evaluation: list[ChatExample],
              work_dir: str, mlflow_run_id: str, base: ModelVersionRef | None = None) -> FineTuneOutput:
    """One fine-tune at a time (global limit `fine-tune`): here, or with `training.host_class` set, as a
    `fine-tune/<class>` run on a training host (`base` is then the registered version that host pulls); its model
    comes back through S3 and is hash-checked into `work_dir/merged`."""
    from llmops.endpoints import Endpoints
    from llmops.stackconfig import load_effective_config

    log = get_run_logger()
    ep = Endpoints.load()
    training = load_effective_config(ep.state_dir).training
    with concurrency(FINE_TUNE_LIMIT, occupy=1, strict=True):
        if not training.host_class:
            return run_fine_tune(cfg, Path(base_dir), train, evaluation, Path(work_dir), mlflow_run_id, log.info)
        if base is None:
            raise ServiceError("a fine-tune on a training host needs the registered base version",
                               "pass `base` (the ModelVersionRef the flow pulled) to fine_tune")
        return _fine_tune_remote(ep, training.host_class, training.timeout_s, cfg, base, train, evaluation,
                                 Path(work_dir), mlflow_run_id, log.info)


def _fine_tune_remote(ep: Endpoints, host_class: str, timeout_s: float, cfg: TrainConfig, base: ModelVersionRef,
                      train: list[ChatExample], evaluation: list[ChatExample], out: Path, mlflow_run_id: str,
                      say: Callable[[str], None]) -> FineTuneOutput:
    from llmops.prefect_api import TERMINAL, PrefectApi
    from llmops.storage import get_dir, get_json

    s3, bucket, prefix = ep.s3_client(), FINE_TUNE_BUCKET, f"fine-tunes/{mlflow_run_id}"
    data = {"train": to_jsonl(train).encode(), "eval": to_jsonl(evaluation).encode()}
    for split, body in data.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{split}.jsonl", Body=body)
    api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
    params: dict[str, object] = {
        "config": cfg.model_dump(mode="json"), "model": base.name, "base_version": base.version,
        "base_sha256": base.sha256, "prefix": f"s3://{bucket}/{prefix}", "mlflow_run_id": mlflow_run_id,
        "data_sha256": {k: hashlib.sha256(v).hexdigest() for k, v in data.items()}}
    run_id = api.run_deployment("fine-tune", host_class, params)
    say(f"fine-tune submitted to the {host_class!r} training hosts: {api.run_link(run_id)}")
    try:
        st = api.wait(run_id, timeout_s)
    finally:
        if api.state(run_id).state not in TERMINAL:
            api.cancel(run_id)  # this task ended (timeout, cancelled): the host must not train on for nobody
    if st.state != "COMPLETED":
        raise ServiceError(f"the fine-tune on host class {host_class!r} ended {st.state}: {st.message[:500]}",
                           f"read its logs: {api.run_link(run_id)}")
    res = get_json(s3, bucket, f"{prefix}/output.json")
    merged = get_dir(s3, bucket, f"{prefix}/merged", out / "merged", res["merged_sha256"])
    adapter = (get_dir(s3, bucket, f"{prefix}/adapter", out / "adapter", res["adapter_sha256"])
               if res.get("adapter_sha256") else None)
    say(f"fine-tune done on {res.get('host')} in {res['seconds']:.0f} s; model fetched from S3 and hash-checked")
    return FineTuneOutput(str(merged), str(adapter) if adapter else None, res["merged_sha256"],
                          res.get("adapter_sha256"), res["merged_bytes"], res["adapter_bytes"], res["steps"],
                          res["final_loss"], res["seconds"], res.get("resumed_from"))
