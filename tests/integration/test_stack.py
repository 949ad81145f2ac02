"""The local stack for real: every service answers, the model serves through the gateway, metrics reach
Prometheus, a deployed flow run reaches MLflow and S3, `up` is idempotent and `down` leaves nothing."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from llmops import proc
from llmops.errors import ServiceError
from llmops.hashing import dir_sha256
from llmops.prefect_api import PrefectApi
from llmops.registry import MlflowRegistry
from llmops.smoke import chat, run_smoke, wait_metric

from .conftest import free_ports_config, processes_under, write_config

pytestmark = pytest.mark.integration


def test_every_service_answers(stack) -> None:
    ep = stack.ep
    rows = {r.name: r for r in stack.status()}
    for name in ("s3", "prefect", "prometheus", "alertmanager", "gateway", "mlflow", "worker", "receiver"):
        assert rows[name].healthy, f"{name} is not healthy: {rows[name]}"
        assert rows[name].rss_mb > 0
    buckets = {b["Name"] for b in ep.s3_client().list_buckets()["Buckets"]}
    assert {"mlflow", "llmops"} <= buckets
    assert httpx.get(f"{ep.mlflow_url}/health").text.strip() == "OK"
    assert httpx.get(f"{ep.prefect_api_url}/health").json() is True
    deployments = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url).json("POST", "/deployments/filter", json={})
    assert {"smoke", "train-pipeline", "rollout", "scale", "reconcile"} <= {d["name"] for d in deployments}
    targets = httpx.get(f"{ep.prometheus_url}/api/v1/targets").json()["data"]["activeTargets"]
    jobs = {t["labels"]["job"]: t["health"] for t in targets}
    assert jobs.get("gateway") == "up" and jobs.get("alertmanager") == "up" and jobs.get("receiver") == "up"


def test_champion_is_the_hash_checked_base_model(stack) -> None:
    ref = MlflowRegistry(stack.ep.mlflow_url).resolve(stack.cfg.model.name, "champion")
    assert ref.version == "1" and "champion" in ref.aliases
    assert ref.tags["llmops.base_model"] == "SmolLM2-135M-Instruct"
    cached = stack.cfg.state_dir / "models" / f"sha256-{ref.sha256}"
    assert dir_sha256(cached) == ref.sha256
    assert (cached / "model.safetensors").stat().st_size > 200e6  # bf16 weights, not the 4-bit GGUF
    nodes = stack.pool().nodes()
    assert len(nodes) == 1 and nodes[0].sha256 == ref.sha256


def test_completion_through_gateway_comes_from_the_real_model(stack) -> None:
    answer, version = chat(stack.ep, "What is the capital of France? Answer in one sentence.")
    assert "paris" in answer.lower(), answer
    assert version == "1"
    # garbage in, a real 4xx out: a model no tenant serves is refused at the gateway (OpenAI's 404
    # model_not_found) and never reaches a node
    r = httpx.post(f"{stack.ep.gateway_url}/v1/chat/completions", json={"model": "no-such-model",
                   "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text


def test_gateway_and_node_metrics_reach_prometheus(stack) -> None:
    chat(stack.ep, "Say hello.", max_tokens=5)
    backend = f"llm_{stack.cfg.model.name.replace('-', '_')}"
    assert wait_metric(stack.ep, f'haproxy_backend_http_requests_total{{proxy="{backend}"}}', 1) >= 1
    assert wait_metric(stack.ep, 'sum(llmops_node_requests_total{status="200",version="1"})', 1) >= 1


def test_deployed_flow_run_reaches_mlflow_and_s3(stack) -> None:
    result = run_smoke(stack.ep, say=lambda _: None)
    obj = stack.ep.s3_client().get_object(Bucket="llmops", Key=result.s3_key)["Body"].read()
    assert result.mlflow_run_id.encode() in obj
    assert result.flow_run_url.startswith(stack.ep.prefect_ui_url)


def test_steady_load_through_the_gateway_has_no_failures(stack, tmp_path: Path) -> None:
    import json

    from llmops.loadgen import schedule
    from llmops.loadgen.runner import run_load

    arrivals = schedule.steady(2.0, 10.0, max_tokens=8, seed=3)
    summary = run_load(f"{stack.ep.gateway_url}/v1", stack.cfg.model.name, arrivals, tmp_path / "load.json")
    assert summary["requests"] == len(arrivals) > 10
    assert summary["failed"] == 0 and summary["by_version"] == {"1": len(arrivals)}
    assert 0 < summary["latency_s"]["p50"] <= summary["latency_s"]["p95"]
    assert len(json.loads((tmp_path / "load.json").read_text())["outcomes"]) == len(arrivals)


def test_second_up_starts_nothing(stack) -> None:
    before = {r.name: r.pid for r in stack.status()}
    t = time.monotonic()
    stack.up(say=lambda _: None)
    assert {r.name: r.pid for r in stack.status()} == before
    assert time.monotonic() - t < 20


def test_busy_port_fails_before_starting_anything(tmp_path: Path, stack) -> None:
    data = free_ports_config(tmp_path / "state")
    data["ports"]["mlflow"] = stack.cfg.ports.gateway  # type: ignore[index]
    from infra.stack.launcher import Stack

    other = Stack(write_config(tmp_path, data))
    with pytest.raises(ServiceError) as exc:
        other.up(say=lambda _: None)
    assert f"port {stack.cfg.ports.gateway}" in str(exc.value) and "mlflow" in str(exc.value)
    assert processes_under(tmp_path / "state") == []


def test_failed_up_leaves_nothing_half_started(tmp_path: Path) -> None:
    from infra.stack.launcher import Stack

    # Too short a health timeout: the first wave starts, S3 cannot be healthy in time, `up` must undo it all.
    broken = Stack(write_config(tmp_path, free_ports_config(tmp_path / "state", service_timeout_s=0.3)))
    lines: list[str] = []
    with pytest.raises(ServiceError, match="did not become healthy"):
        broken.up(say=lines.append)
    assert any("started s3" in ln for ln in lines)
    assert any("last lines of s3" in ln for ln in lines)  # the failing service's log tail is shown
    time.sleep(0.5)
    assert processes_under(tmp_path / "state") == []


@pytest.mark.stack_teardown
def test_down_leaves_no_process(stack) -> None:
    records = stack._records()
    nodes = [n.process() for n in stack.pool().nodes()]
    assert records and nodes
    stack.down(say=lambda _: None)
    assert not any(proc.is_alive(r) for r in [*records.values(), *nodes] if r)
    assert processes_under(stack.cfg.state_dir) == []
    assert not stack.ep.haproxy_socket.exists()
