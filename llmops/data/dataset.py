"""Build one dataset version from the curated files and the S3 feedback log, and store it in S3."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from llmops.data.curated import CuratedSet
from llmops.data.feedback import ObjectRef, list_feedback_objects, read_feedback
from llmops.data.prepare import PreparedDataset, Quarantined, prepare, to_jsonl
from llmops.data.schema import ChatExample
from llmops.errors import LlmopsError
from llmops.storage import put_json


@dataclass
class DatasetVersion:
    """A prepared dataset plus its provenance; `digest` is its version."""

    prepared: PreparedDataset
    heldout: list[ChatExample]
    control: list[ChatExample]
    manifest: list[ObjectRef]

    @property
    def digest(self) -> str:
        return self.prepared.digest

    def uri(self, bucket: str) -> str:
        return f"s3://{bucket}/datasets/{self.digest}/"


def mix_general(curated: CuratedSet, ratio: float, seed: int) -> list[ChatExample]:
    """Policy examples plus `ratio` general examples per policy example (capped by what exists)."""
    k = min(len(curated.general), round(len(curated.train) * ratio))
    return [*curated.train, *random.Random(seed).sample(list(curated.general), k)]


def build_dataset(curated: CuratedSet, s3: Any | None, bucket: str, prefix: str | None, eval_fraction: float,
                  general_mix: float, seed: int = 0) -> DatasetVersion:
    """Collect, validate, scrub, de-duplicate and split; fails before training if nothing is left."""
    manifest: list[ObjectRef] = []
    feedback: list[ChatExample] = []
    quarantine: list[Quarantined] = []
    if prefix is not None and s3 is not None:
        manifest = list_feedback_objects(s3, bucket, prefix)
        _, feedback, quarantine = read_feedback(s3, bucket, manifest)
    prepared = prepare(mix_general(curated, general_mix, seed), feedback, eval_fraction, quarantine)
    if not prepared.train:
        raise LlmopsError("the dataset is empty after validation", "read the quarantine report; fix the rows")
    return DatasetVersion(prepared, list(curated.heldout), list(curated.control), manifest)


def store_dataset(ds: DatasetVersion, s3: Any, bucket: str) -> str:
    """Write splits, quarantine and manifest under s3://bucket/datasets/<digest>/ (idempotent); returns the URI."""
    base = f"datasets/{ds.digest}"
    for name, rows in (("train", ds.prepared.train), ("eval", ds.prepared.eval), ("heldout", ds.heldout),
                       ("control", ds.control)):
        s3.put_object(Bucket=bucket, Key=f"{base}/{name}.jsonl", Body=to_jsonl(rows).encode())
    quarantine = "".join(json.dumps(q.__dict__) + "\n" for q in ds.prepared.quarantine)
    s3.put_object(Bucket=bucket, Key=f"{base}/quarantine.jsonl", Body=quarantine.encode())
    put_json(s3, bucket, f"{base}/manifest.json", {
        "digest": ds.digest, "stats": ds.prepared.stats,
        "feedback_objects": [r.__dict__ for r in ds.manifest]})
    return ds.uri(bucket)
