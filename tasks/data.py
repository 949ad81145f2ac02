"""Data tasks: collect the dataset version (cached by its inputs) and read it back."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from llmops.data.curated import DEFAULT_DIR, load_curated
from llmops.data.dataset import build_dataset, store_dataset
from llmops.data.feedback import list_feedback_objects
from llmops.data.prepare import from_jsonl
from llmops.data.schema import ChatExample
from llmops.endpoints import Endpoints
from llmops.hashing import dir_sha256
from llmops.train.config import DataSettings
from tasks.retry import transient_only


@dataclass(frozen=True)
class DatasetInfo:
    digest: str
    uri: str
    bucket: str
    stats: dict[str, int]
    feedback_objects: int
    quarantined: int


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=transient_only)
def snapshot_inputs(settings: DataSettings) -> str:
    """A fingerprint of everything the dataset is built from: the curated files and the S3 objects' ETags."""
    ep = Endpoints.load()
    curated = dir_sha256(settings.curated_dir or DEFAULT_DIR)
    refs = (list_feedback_objects(ep.s3_client(), settings.feedback_bucket, settings.feedback_prefix)
            if settings.feedback_prefix is not None else [])
    h = hashlib.sha256(f"{curated}|{settings.model_dump_json()}".encode())
    for r in refs:
        h.update(f"{r.key}:{r.etag}\n".encode())
    return h.hexdigest()


@task(cache_policy=INPUTS + TASK_SOURCE, cache_expiration=timedelta(days=30), persist_result=True, retries=1,
      retry_condition_fn=transient_only)
def collect_dataset(settings: DataSettings, inputs_fingerprint: str, seed: int) -> DatasetInfo:
    """Validate, scrub, de-duplicate, split and store the dataset in S3. Same fingerprint -> cached result."""
    ep = Endpoints.load()
    s3 = ep.s3_client()
    ds = build_dataset(load_curated(settings.curated_dir or DEFAULT_DIR), s3, settings.feedback_bucket,
                       settings.feedback_prefix, settings.eval_fraction, settings.general_mix, seed)
    uri = store_dataset(ds, s3, settings.feedback_bucket)
    return DatasetInfo(ds.digest, uri, settings.feedback_bucket, ds.prepared.stats, len(ds.manifest),
                       len(ds.prepared.quarantine))


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=transient_only)
def load_split(info: DatasetInfo, split: str) -> list[ChatExample]:
    """Read one split of a stored dataset version back from S3."""
    ep = Endpoints.load()
    body = ep.s3_client().get_object(Bucket=info.bucket, Key=f"datasets/{info.digest}/{split}.jsonl")["Body"]
    return from_jsonl(body.read().decode())
