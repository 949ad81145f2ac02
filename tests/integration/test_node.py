"""A node on the tiny model: the real `transformers serve` with metrics, version header and hash check."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from llmops.errors import ServiceError
from llmops.hashing import dir_sha256
from llmops.pool.launcher import LocalProcessLauncher
from llmops.pool.state import NodeRecord
from llmops.proc import free_port
from llmops.stackconfig import ServingSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def node_for(model_dir: Path, sha: str, name: str) -> NodeRecord:
    return NodeRecord(name=name, model="tiny", engine="transformers", version="7", sha256=sha,
                      host="127.0.0.1", port=free_port(31000))


def test_node_serves_verified_model_with_metrics_and_version(tmp_path: Path, tiny_model_dir: Path) -> None:
    launcher = LocalProcessLauncher(tmp_path, ServingSettings(cb_num_blocks=16), ROOT)
    node = launcher.start(node_for(tiny_model_dir, dir_sha256(tiny_model_dir), "ok"), tiny_model_dir)
    try:
        launcher.wait_ready(node, timeout_s=120)  # health + one-token completion + hash label
        r = httpx.post(f"{node.url}/v1/chat/completions", timeout=30, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200 and r.headers["x-llmops-model-version"] == "7"
        probe = httpx.post(f"{node.url}/v1/chat/completions", timeout=30, headers={"X-Llmops-Probe": "1"}, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert probe.status_code == 200
        metrics = httpx.get(f"{node.url}/metrics").text
        assert 'llmops_node_requests_total{route="/v1/chat/completions",status="200"} 2.0' in metrics
        assert 'llmops_node_requests_total{route="probe",status="200"} 1.0' in metrics  # kept apart
        assert "llmops_node_requests_in_flight 0.0" in metrics
    finally:
        launcher.stop(node)


def test_node_refuses_weights_that_do_not_match_the_version(tmp_path: Path, tiny_model_dir: Path) -> None:
    launcher = LocalProcessLauncher(tmp_path, ServingSettings(cb_num_blocks=16), ROOT)
    node = launcher.start(node_for(tiny_model_dir, "0" * 64, "bad"), tiny_model_dir)
    try:
        with pytest.raises(ServiceError, match="exited while starting") as exc:
            launcher.wait_ready(node, timeout_s=60)
        assert "refusing to serve" in str(exc.value)
    finally:
        launcher.stop(node)
