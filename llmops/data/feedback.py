"""The S3 feedback log: JSON-lines objects under a prefix, read with boto3 (paginated)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmops.data.prepare import Quarantined, feedback_to_examples, parse_feedback_lines
from llmops.data.schema import ChatExample, FeedbackRecord
from llmops.errors import ServiceError


@dataclass(frozen=True)
class ObjectRef:
    """One S3 object a dataset used: the manifest lists these, so a dataset can be traced and rebuilt."""

    key: str
    etag: str
    size: int


def list_feedback_objects(s3: Any, bucket: str, prefix: str) -> list[ObjectRef]:
    """All objects under `prefix`, every page of the listing, in key order."""
    from botocore.exceptions import ClientError

    refs: list[ObjectRef] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            refs += [ObjectRef(o["Key"], o["ETag"].strip('"'), int(o["Size"])) for o in page.get("Contents", [])]
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "NoSuchBucket":
            raise ServiceError(f"feedback bucket {bucket!r} does not exist",
                               "create it, or set data.feedback_bucket in the training config") from None
        raise
    return sorted(refs, key=lambda r: r.key)


def read_feedback(s3: Any, bucket: str, refs: list[ObjectRef]
                  ) -> tuple[list[FeedbackRecord], list[ChatExample], list[Quarantined]]:
    """Parse every object; returns the records, the training examples they give, and the quarantine."""
    records: list[FeedbackRecord] = []
    examples: list[ChatExample] = []
    quarantine: list[Quarantined] = []
    for ref in refs:
        body = s3.get_object(Bucket=bucket, Key=ref.key)["Body"].read().decode("utf-8", errors="replace")
        source = f"s3://{bucket}/{ref.key}"
        recs, bad = parse_feedback_lines(source, body.splitlines())
        exs, skipped = feedback_to_examples(recs, source)
        records += recs
        examples += exs
        quarantine += bad + skipped
    return records, examples, quarantine
