"""Fine-tunes on a training host (issue 9), on a network-namespace host (tests/integration/hosts.py).

The control plane runs in the root namespace, bound to the bridge address, with `training.host_class: train`. One
host runs a Prefect process worker of the `train` work pool, with its own model cache and only the environment a
real training host gets (MLflow URL, S3 endpoint and keys, its address). The train-pipeline deployment runs on the
control plane; its fine-tune step becomes a `fine-tune/train` run that this host picks up: it pulls the base version
from MLflow over the bridge, reads the examples from S3, trains, and writes the model back to S3; the pipeline
downloads it, checks its hash, evaluates and registers it. Shown: the fine-tune ran on that host (its address in
the job's output, its cache holds the base), the registered version is the bytes the host wrote, and the MLflow run
has the host's loss curve.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from llmops.prefect_api import PrefectApi
from llmops.registry import MlflowRegistry
from llmops.storage import get_json

from .conftest import free_ports_config, write_config
from .hosts import NetnsHosts
from .test_remote_nodes import _worker_env

pytestmark = [pytest.mark.integration, pytest.mark.hosts]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def train_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, NetnsHosts, Path]]:
    from infra.stack.launcher import Stack

    tmp = tmp_path_factory.mktemp("remote-train")
    with NetnsHosts(1) as hosts:
        cfg = write_config(tmp, free_ports_config(
            tmp / "state", host=hosts.gateway, training={"host_class": "train"},
            scaling={"min_replicas": 1, "max_replicas": 1, "warm_standby": 0}))
        stack = Stack(cfg)
        stack.up()
        try:
            h = hosts.hosts[0]
            home = tmp / "host0"
            home.mkdir()
            env = _worker_env(stack, h.address, home)
            env.pop("LLMOPS_STATE_DIR", None)  # a training host has no control-plane state dir: only URLs and keys
            env["OMP_NUM_THREADS"] = "2"
            prefect = str(Path(sys.executable).with_name("prefect"))
            hosts.spawn(h, [prefect, "worker", "start", "--pool", "train", "--type", "process", "--limit", "1",
                            "--name", f"train-{h.address}"], home / "worker.log", env=env, cwd=ROOT)
            yield stack, hosts, home
        finally:
            stack.down()


def test_the_fine_tune_runs_on_the_training_host_and_its_model_comes_back_through_s3(
        train_host: tuple[Any, NetnsHosts, Path], tmp_path: Path) -> None:
    stack, hosts, home = train_host
    ep = stack.ep
    # a short run: where it trains is the point here, not how well (tests/integration/test_train_pipeline.py)
    cfg = yaml.safe_load((ROOT / "configs" / "train" / "smollm2_lora.yaml").read_text())
    cfg["hyper"].update({"max_steps": 6, "checkpoint_every": 3})
    config = tmp_path / "tiny_lora.yaml"
    config.write_text(yaml.safe_dump(cfg))

    api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
    t0 = time.monotonic()
    run_id = api.run_deployment("train-pipeline", "train-pipeline", {"config": str(config)})
    st = api.wait(run_id, timeout_s=900)
    assert st.state == "COMPLETED", f"{st.state}: {st.message} ({api.run_link(run_id)})"
    elapsed = time.monotonic() - t0

    jobs = api.flow_runs({"flows": {"name": {"any_": ["fine-tune"]}}})
    assert len(jobs) == 1 and jobs[0]["state"]["type"] == "COMPLETED", jobs
    mlflow_run = jobs[0]["parameters"]["mlflow_run_id"]
    out = get_json(ep.s3_client(), "llmops", f"fine-tunes/{mlflow_run}/output.json")
    host = hosts.hosts[0].address
    assert out["host"] == host, out  # LLMOPS_NODE_ADDRESS is set on that host's worker only
    assert any((home / "models").iterdir()), "the host's own cache never got the base version"

    reg = MlflowRegistry(ep.mlflow_url)
    new = reg.resolve(stack.cfg.model.name, "2")  # the pipeline's one new version, gate passed or not
    assert new.sha256 == out["merged_sha256"], (new, out)
    steps = httpx.get(f"{ep.mlflow_url}/api/2.0/mlflow/metrics/get-history",
                      params={"run_id": mlflow_run, "metric_key": "train/loss"}, timeout=10).json()["metrics"]
    assert len(steps) >= 3, steps  # the host streamed its loss curve to the pipeline's MLflow run
    print(f"remote fine-tune: pipeline {elapsed:.0f} s, job {out['total_s']:.0f} s on {host} "
          f"(pull + data {out['pull_s']:.1f} s, training {out['seconds']:.0f} s)")
