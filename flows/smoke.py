"""Smoke flow: a deployed flow run logs a run to MLflow and writes an object to S3.

    python -m flows.smoke            # run locally against the running stack
    prefect deployment run smoke/smoke
"""

from __future__ import annotations

from prefect import flow

from tasks.smoke import log_smoke_run, write_smoke_object


@flow(name="smoke", log_prints=True)
def smoke_flow(message: str = "hello from elastic-llmops") -> dict[str, str]:
    run_id = log_smoke_run(message)
    uri = write_smoke_object(message, run_id)
    print(f"MLflow run {run_id}; object {uri}")
    return {"mlflow_run_id": run_id, "s3_uri": uri}


if __name__ == "__main__":
    smoke_flow()
