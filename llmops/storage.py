"""Object storage adapter (boto3 against any S3; SeaweedFS locally)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmops.errors import ServiceError


def put_json(s3: Any, bucket: str, key: str, obj: object) -> str:
    """Write `obj` as JSON to s3://bucket/key and return that URI; a missing bucket is a clear error."""
    from botocore.exceptions import ClientError

    try:
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(obj, indent=2).encode(),
                      ContentType="application/json")
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "NoSuchBucket":
            raise ServiceError(f"bucket {bucket!r} does not exist", "create it or list it under `buckets:` "
                               "in the stack config and run `llmops stack up`") from None
        raise
    return f"s3://{bucket}/{key}"


def get_json(s3: Any, bucket: str, key: str) -> Any:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def s3_client(endpoint: str, access_key: str | None, secret_key: str | None,  # type: ignore[no-untyped-def]
              region: str = "us-east-1"):
    """A boto3 S3 client for any S3 endpoint (path-style addressing, standard retries); keys None: boto3's own
    credential chain."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                        region_name=region, config=Config(retries={"max_attempts": 3, "mode": "standard"},
                                                          s3={"addressing_style": "path"}))


def s3_client_from_env():  # type: ignore[no-untyped-def]
    """A boto3 S3 client from the environment a worker on another host has (no state dir there):
    MLFLOW_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY."""
    import os

    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint or not os.environ.get("AWS_ACCESS_KEY_ID"):
        raise ServiceError("no S3 endpoint or credentials in this worker's environment",
                           "start the host's worker with MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY of the stack's object store (`llmops stack status` shows them)")
    return s3_client(endpoint, os.environ["AWS_ACCESS_KEY_ID"], os.environ.get("AWS_SECRET_ACCESS_KEY"),
                     os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


def put_dir(s3: Any, bucket: str, prefix: str, root: Path) -> str:
    """Upload every file under `root` to s3://bucket/prefix/<relative path>; returns that URI."""
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(root).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def get_dir(s3: Any, bucket: str, prefix: str, dest: Path, sha256: str) -> Path:
    """Download s3://bucket/prefix/ into `dest` and check that it hashes to `sha256` (llmops.hashing.dir_sha256);
    a mismatch removes the copy and is an error."""
    import shutil

    from llmops.hashing import dir_sha256

    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
            for o in page.get("Contents", [])]
    if not keys:
        raise ServiceError(f"s3://{bucket}/{prefix}/ is empty", "the job that should have written it failed: "
                           "read its flow run's logs")
    for key in keys:
        target = tmp / key[len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
    got = dir_sha256(tmp)
    if got != sha256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ServiceError(f"s3://{bucket}/{prefix}/ hashes to {got[:16]}..., expected {sha256[:16]}...",
                           "the object store holds other files than the job wrote: run the job again")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest
