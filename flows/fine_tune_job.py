"""fine-tune: one fine-tune on the training host whose worker picked this run up (tasks/train.py submits it).

Runs on the work pool of `training.host_class` (a process worker on each training host). The host's worker
environment says where the stack is and where the host keeps its files:

    MLFLOW_TRACKING_URI        the registry (the base version is downloaded through the MLflow server) and the run
                               the metrics stream to
    MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
                               the object store: examples in, model out
    LLMOPS_NODE_STATE          the host's model cache and work directories (default ~/.llmops-node)
    LLMOPS_NODE_ADDRESS        the host's address, reported with the result

Pull the base version (a cache miss downloads it) and check its hash against the registered one, read the
train/eval examples from S3 and check their hashes, run the same fine-tune code as a local run
(tasks/train.py `run_fine_tune`: adapters in-process, full fine-tunes through `torchrun`), then write the merged
model (and the adapter) and `output.json` under the run's S3 prefix. The submitting flow downloads them and checks
the hashes again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from llmops.data.prepare import from_jsonl
from llmops.data.schema import ChatExample
from llmops.errors import ServiceError
from llmops.model_cache import ModelCache
from llmops.registry import MlflowRegistry, pull_verified
from llmops.storage import put_dir, put_json, s3_client_from_env
from llmops.train.config import TrainConfig
from tasks.train import run_fine_tune


def _split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ServiceError(f"{uri!r} is not an s3://bucket/prefix URI", "submit the job through tasks/train.py")
    bucket, prefix = uri[5:].split("/", 1)
    return bucket, prefix.rstrip("/")


@flow(name="fine-tune", log_prints=True)
def fine_tune_job_flow(config: dict[str, Any], model: str, base_version: str, base_sha256: str, prefix: str,
                       mlflow_run_id: str, data_sha256: dict[str, str]) -> dict[str, Any]:
    log = get_run_logger()
    t0 = time.monotonic()
    cfg = TrainConfig.model_validate(config)
    home = Path(os.environ.get("LLMOPS_NODE_STATE", str(Path.home() / ".llmops-node")))
    registry = MlflowRegistry(os.environ["MLFLOW_TRACKING_URI"])
    ref, cached = pull_verified(registry, ModelCache(home / "models"), model, base_version)
    if ref.sha256 != base_sha256:
        raise ServiceError(f"{model} v{base_version} is registered with sha256 {ref.sha256[:16]}..., the submitting "
                           f"flow trained from {base_sha256[:16]}...", "submit the fine-tune again")
    s3 = s3_client_from_env()
    bucket, key = _split_s3(prefix)
    splits: dict[str, list[ChatExample]] = {}
    for split in ("train", "eval"):
        body = s3.get_object(Bucket=bucket, Key=f"{key}/{split}.jsonl")["Body"].read()
        if hashlib.sha256(body).hexdigest() != data_sha256[split]:
            raise ServiceError(f"{prefix}/{split}.jsonl does not hash to what the submitting flow wrote",
                               "the object store changed under the job: submit the fine-tune again")
        splits[split] = from_jsonl(body.decode())
    pulled_s = time.monotonic() - t0
    work = home / "fine-tunes" / mlflow_run_id  # a retried run resumes from its checkpoints here
    out = run_fine_tune(cfg, cached.path, splits["train"], splits["eval"], work, mlflow_run_id, log.info)
    put_dir(s3, bucket, f"{key}/merged", Path(out.merged_dir))
    if out.adapter_dir:
        put_dir(s3, bucket, f"{key}/adapter", Path(out.adapter_dir))
    result = {"merged_sha256": out.merged_sha256, "adapter_sha256": out.adapter_sha256,
              "merged_bytes": out.merged_bytes, "adapter_bytes": out.adapter_bytes, "steps": out.steps,
              "final_loss": out.final_loss, "seconds": out.seconds, "resumed_from": out.resumed_from,
              "host": os.environ.get("LLMOPS_NODE_ADDRESS", os.uname().nodename), "pull_s": round(pulled_s, 2),
              "total_s": round(time.monotonic() - t0, 2)}
    put_json(s3, bucket, f"{key}/output.json", result)
    shutil.rmtree(work, ignore_errors=True)  # the model lives in S3 now; the host keeps only its base cache
    log.info("fine-tuned %s v%s on %s in %.0f s: %s/merged", model, base_version, result["host"], out.seconds, prefix)
    return result
