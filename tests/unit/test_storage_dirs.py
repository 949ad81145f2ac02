"""A model directory through the object store: uploaded file by file, downloaded and hash-checked; a tampered or
empty prefix is an error that leaves no half copy. A worker without S3 settings gets an error naming them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmops.errors import ServiceError
from llmops.hashing import dir_sha256
from llmops.storage import get_dir, put_dir, s3_client_from_env


class FakeS3:
    """The four boto3 calls put_dir / get_dir make, over a dict."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def upload_file(self, path: str, bucket: str, key: str) -> None:
        self.objects[(bucket, key)] = Path(path).read_bytes()

    def download_file(self, bucket: str, key: str, path: str) -> None:
        Path(path).write_bytes(self.objects[(bucket, key)])

    def get_paginator(self, name: str) -> Any:
        assert name == "list_objects_v2"
        objects = self.objects

        class Pages:
            def paginate(self, Bucket: str, Prefix: str) -> list[dict[str, Any]]:  # noqa: N803 (boto3's names)
                keys = sorted(k for b, k in objects if b == Bucket and k.startswith(Prefix))
                return [{"Contents": [{"Key": k} for k in keys[:2]]}, {"Contents": [{"Key": k} for k in keys[2:]]}]

        return Pages()


def _model(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    (root / "sub" / "tokenizer.json").write_text("{}")
    return root


def test_a_directory_round_trips_and_is_hash_checked(tmp_path: Path) -> None:
    s3, src = FakeS3(), _model(tmp_path / "src")
    assert put_dir(s3, "llmops", "fine-tunes/r1/merged", src) == "s3://llmops/fine-tunes/r1/merged"
    got = get_dir(s3, "llmops", "fine-tunes/r1/merged", tmp_path / "dest", dir_sha256(src))
    assert dir_sha256(got) == dir_sha256(src) and (got / "sub" / "tokenizer.json").is_file()


def test_a_tampered_copy_is_refused_and_nothing_half_written_stays(tmp_path: Path) -> None:
    s3, src = FakeS3(), _model(tmp_path / "src")
    put_dir(s3, "llmops", "p/merged", src)
    s3.objects[("llmops", "p/merged/config.json")] = b'{"a": 2}'
    with pytest.raises(ServiceError, match="hashes to"):
        get_dir(s3, "llmops", "p/merged", tmp_path / "dest", dir_sha256(src))
    assert not (tmp_path / "dest").exists() and not (tmp_path / ".dest.partial").exists()
    with pytest.raises(ServiceError, match="is empty"):
        get_dir(s3, "llmops", "p/other", tmp_path / "dest", dir_sha256(src))


def test_a_worker_without_s3_settings_is_told_which_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ServiceError) as err:
        s3_client_from_env()
    assert "MLFLOW_S3_ENDPOINT_URL" in err.value.fix and "AWS_ACCESS_KEY_ID" in err.value.fix
