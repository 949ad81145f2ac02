"""Object storage adapter (boto3 against any S3; SeaweedFS locally)."""

from __future__ import annotations

import json
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
