"""Tasks of the smoke flow: prove a deployed flow run reaches MLflow and S3."""

from __future__ import annotations

import platform
import time

from prefect import task
from prefect.runtime import flow_run

from llmops.endpoints import Endpoints
from llmops.storage import put_json


@task(retries=2, retry_delay_seconds=2)
def log_smoke_run(message: str) -> str:
    """Log a run with a parameter and a metric to MLflow; returns the run id."""
    import mlflow

    ep = Endpoints.load()
    mlflow.set_tracking_uri(ep.mlflow_url)
    mlflow.set_experiment("smoke")
    with mlflow.start_run(run_name=f"smoke-{flow_run.get_name() or 'local'}") as run:
        mlflow.log_param("message", message)
        mlflow.log_param("host", platform.node())
        mlflow.set_tag("prefect.flow_run_id", str(flow_run.get_id()))
        mlflow.log_metric("smoke_ok", 1.0)
        mlflow.log_dict({"message": message}, "smoke.json")
        return run.info.run_id


@task(retries=2, retry_delay_seconds=2)
def write_smoke_object(message: str, run_id: str) -> str:
    """Write a JSON object to the `llmops` bucket; returns its s3:// URI."""
    ep = Endpoints.load()
    key = f"smoke/{flow_run.get_id() or 'local'}.json"
    return put_json(ep.s3_client(), "llmops", key,
                    {"message": message, "mlflow_run_id": run_id, "written_at": time.time()})
