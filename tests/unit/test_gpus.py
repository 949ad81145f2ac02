"""One node per GPU: claims are exclusive, survive nothing but their process, and the launcher gives each node its
own CUDA_VISIBLE_DEVICES; the stack config refuses more nodes than GPUs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmops import proc
from llmops.errors import ServiceError
from llmops.pool import launcher as launcher_mod
from llmops.pool.gpus import GpuClaims
from llmops.pool.launcher import LocalProcessLauncher
from llmops.pool.state import NodeRecord
from llmops.stackconfig import ServingSettings, StackConfig


def _sleeper() -> proc.ProcRecord:
    return proc.spawn([sys.executable, "-c", "import time; time.sleep(60)"], Path("/dev/null"))


def test_each_node_gets_its_own_gpu_and_the_third_gets_a_clear_error(tmp_path: Path) -> None:
    claims = GpuClaims(tmp_path, [0, 1])
    assert claims.claim("node1") == 0
    assert claims.claim("node2") == 1
    assert claims.claim("node1") == 0  # a retried start keeps its GPU
    with pytest.raises(ServiceError) as err:
        claims.claim("node3")
    assert "no free GPU for node node3" in str(err.value) and "GPU 0: node1" in str(err.value)
    assert "max_replicas" in err.value.fix
    claims.release("node1")
    assert claims.claim("node3") == 0
    assert claims.held() == {0: "node3", 1: "node2"}


def test_a_dead_nodes_claim_is_taken_over_a_live_ones_is_not(tmp_path: Path) -> None:
    claims = GpuClaims(tmp_path, [0])
    live = _sleeper()
    try:
        claims.bind(claims.claim("node1"), "node1", live)
        with pytest.raises(ServiceError):
            claims.claim("node2")
        proc.stop(live, timeout_s=5)
        assert claims.claim("node2") == 0  # node1 was killed without a stop: its GPU is free again
    finally:
        proc.stop(live, timeout_s=5)


def test_a_claim_never_bound_to_a_process_holds_only_for_the_grace(tmp_path: Path) -> None:
    claims = GpuClaims(tmp_path, [3], spawn_grace_s=60)
    claims.claim("node1")
    with pytest.raises(ServiceError):
        claims.claim("node2")  # node1 is being spawned right now
    (tmp_path / "gpu3.json").write_text(json.dumps({"node": "node1", "at": time.time() - 61, "proc": None}))
    assert claims.claim("node2") == 3


def test_the_launcher_pins_each_node_to_its_gpu_and_frees_it_on_stop(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    script = "import os, time; print('CUDA', os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True); time.sleep(60)"
    monkeypatch.setattr(launcher_mod, "engine_argv", lambda *_a: [sys.executable, "-c", script])
    model = tmp_path / "model"
    model.mkdir()
    launcher = LocalProcessLauncher(tmp_path / "nodes", ServingSettings(gpus=(2, 5)), tmp_path)
    nodes = [NodeRecord(name=f"node{i}", model="m", engine="transformers", version="1", sha256="x",
                        host="127.0.0.1", port=9000 + i) for i in (1, 2)]
    started = [launcher.start(n, model) for n in nodes]
    try:
        assert [n.gpu for n in started] == [2, 5]
        with pytest.raises(ServiceError, match="no free GPU"):
            launcher.start(NodeRecord(name="node3", model="m", engine="transformers", version="1", sha256="x",
                                      host="127.0.0.1", port=9003), model)
        deadline = time.monotonic() + 20
        logs = [tmp_path / "nodes" / n.name / "node.log" for n in started]
        while time.monotonic() < deadline and not all("\nCUDA " in p.read_text() for p in logs):
            time.sleep(0.1)
        assert "\nCUDA 2\n" in logs[0].read_text() and "\nCUDA 5\n" in logs[1].read_text()
        launcher.stop(started[0])
        assert launcher.gpu_claims.held() == {5: "node2"}
    finally:
        for n in started:
            launcher.stop(n)


def test_the_config_refuses_more_nodes_than_gpus_and_a_base_dir_without_a_model() -> None:
    ok = StackConfig(serving={"gpus": [0, 1]}, scaling={"min_replicas": 1, "max_replicas": 2, "warm_standby": 1})
    assert ok.serving.gpus == (0, 1)
    with pytest.raises(ValidationError, match="may run 3 nodes .* serving.gpus has 2 GPUs"):
        StackConfig(serving={"gpus": [0, 1]}, scaling={"min_replicas": 1, "max_replicas": 3, "warm_standby": 1})
    with pytest.raises(ValidationError, match="distinct GPU indices"):
        StackConfig(serving={"gpus": [0, 0]})
    # nodes on other hosts: the GPUs are per host, so the pool's size is not capped by one host's list
    StackConfig(serving={"gpus": [0], "host_class": "gpu-h200"}, scaling={"max_replicas": 8})
    with pytest.raises(ValidationError, match="holds no config.json"):
        StackConfig(model={"base_dir": "/nonexistent-model-dir"})
