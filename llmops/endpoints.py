"""Where the running stack's services are: written by `llmops stack up`, read by flows, tasks and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

from llmops.errors import ServiceError

STATE_ENV = "LLMOPS_STATE_DIR"
ENDPOINTS_FILE = "endpoints.json"


class Endpoints(BaseModel):
    """URLs and credentials of the stack. The file is mode 0600: it holds the S3 secret."""

    state_dir: Path
    s3_url: str
    s3_access_key: str
    s3_secret_key: str
    mlflow_url: str
    prefect_api_url: str
    prefect_ui_url: str
    prometheus_url: str
    alertmanager_url: str
    gateway_url: str
    haproxy_stats_url: str
    haproxy_socket: Path
    receiver_url: str = ""
    model_name: str
    model_alias: str
    work_pool: str

    def to_env(self) -> dict[str, str]:
        """Environment for anything that talks to the stack (the Prefect worker, flows, engines)."""
        return {
            STATE_ENV: str(self.state_dir),
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "PREFECT_API_URL": self.prefect_api_url,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "LLMOPS_GATEWAY_URL": self.gateway_url,
            "LLMOPS_PROMETHEUS_URL": self.prometheus_url,
        }

    def save(self) -> Path:
        path = self.state_dir / ENDPOINTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, state_dir: Path | str | None = None) -> Endpoints:
        """Read the endpoints of the running stack (state dir from the argument, $LLMOPS_STATE_DIR or .llmops)."""
        root = Path(state_dir or os.environ.get(STATE_ENV) or ".llmops").resolve()
        path = root / ENDPOINTS_FILE
        if not path.is_file():
            raise ServiceError(f"no running stack found in {root} ({ENDPOINTS_FILE} missing)",
                               f"start it with `llmops stack up --state-dir {root}` or set {STATE_ENV}")
        return cls.model_validate(json.loads(path.read_text()))

    def s3_client(self):  # type: ignore[no-untyped-def]
        """A boto3 S3 client for the stack's object store."""
        from llmops.storage import s3_client

        return s3_client(self.s3_url, self.s3_access_key, self.s3_secret_key)
