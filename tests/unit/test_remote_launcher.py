"""Nodes on other hosts (llmops/pool/remote.py) against a fake Prefect API: a node is a `serve-node` run; its
address comes from the host's report; stopping cancels the run; a node whose host stops answering is not alive.
The pool does not pull the model itself for such a launcher, and records the reported address."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from llmops import proc
from llmops.errors import ServiceError
from llmops.pool import remote
from llmops.pool.remote import HostClass, RemoteNodeLauncher, node_variable
from llmops.pool.state import NodeRecord, NodeStatus

RUN = "0b7a8f2e-1111-4222-8333-944455556666"


@dataclass
class FakeApi:
    states: list[tuple[str, str]] = field(default_factory=lambda: [("RUNNING", "")])
    variables: dict[str, Any] = field(default_factory=dict)
    runs: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    report_after: int = 0  # polls before the host reports

    def run_deployment(self, flow_name: str, deployment: str, parameters: dict[str, object] | None = None) -> str:
        self.runs.append((flow_name, deployment, parameters or {}))
        return RUN

    def run_state(self, flow_run_id: str) -> tuple[str, str]:
        if self.cancelled:
            return ("CANCELLED", "")
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def variable(self, name: str) -> Any:
        if self.report_after > 0:
            self.report_after -= 1
            return None
        return self.variables.get(name)

    def delete_variable(self, name: str) -> None:
        self.variables.pop(name, None)

    def cancel(self, flow_run_id: str) -> None:
        self.cancelled.append(flow_run_id)


def node() -> NodeRecord:
    return NodeRecord(name="node7", model="m", engine="transformers", version="3", sha256="ab" * 32, host="", port=0)


def test_start_creates_a_serve_node_run_of_the_host_class_with_what_the_host_needs() -> None:
    api = FakeApi()
    n = RemoteNodeLauncher(api, HostClass("cpu"), "acme", {"cpu_limit": 0.5}).start(node(), None)
    (flow, dep, params), = api.runs
    assert (flow, dep) == ("serve-node", "cpu") and n.remote_run == RUN and (n.host, n.port) == ("", 0)
    assert params == {"model": "m", "version": "3", "sha256": "ab" * 32, "name": "node7", "engine": "transformers",
                      "tenant": "acme", "serving": {"cpu_limit": 0.5}}


def test_wait_ready_takes_the_address_the_host_reports_and_checks_the_node_from_here(
        monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    monkeypatch.setattr("llmops.pool.launcher.check_serving", lambda n: checked.append(n.url))
    api = FakeApi(states=[("PENDING", ""), ("RUNNING", "")], report_after=3,
                  variables={node_variable(RUN): {"host": "10.231.5.12", "port": 8103}})
    launcher = RemoteNodeLauncher(api, HostClass("cpu"), "default", {})
    placed = launcher.wait_ready(node().model_copy(update={"remote_run": RUN}), timeout_s=10)
    assert (placed.host, placed.port) == ("10.231.5.12", 8103) and checked == ["http://10.231.5.12:8103"]


def test_wait_ready_fails_with_the_run_state_when_the_host_gave_up() -> None:
    api = FakeApi(states=[("FAILED", "sha256 mismatch")])
    with pytest.raises(ServiceError, match="ended FAILED before serving: sha256 mismatch"):
        RemoteNodeLauncher(api, HostClass("cpu"), "default", {}).wait_ready(
            node().model_copy(update={"remote_run": RUN}), timeout_s=5)


def test_wait_ready_times_out_naming_the_host_class() -> None:
    api = FakeApi(states=[("SCHEDULED", "")])
    with pytest.raises(ServiceError, match="not ready after 1s") as err:
        RemoteNodeLauncher(api, HostClass("gpu-h100"), "default", {}).wait_ready(
            node().model_copy(update={"remote_run": RUN}), timeout_s=1)
    assert "gpu-h100" in err.value.fix


def test_stop_cancels_a_live_run_and_removes_its_report() -> None:
    api = FakeApi(variables={node_variable(RUN): {"host": "h", "port": 1}})
    RemoteNodeLauncher(api, HostClass("cpu"), "default", {}, stop_wait_s=2).stop(
        node().model_copy(update={"remote_run": RUN}))
    assert api.cancelled == [RUN] and not api.variables
    done = FakeApi(states=[("CRASHED", "")])
    RemoteNodeLauncher(done, HostClass("cpu"), "default", {}).stop(node().model_copy(update={"remote_run": RUN}))
    assert done.cancelled == []


def test_a_node_is_alive_only_while_its_run_lives_and_it_answers() -> None:
    launcher = RemoteNodeLauncher(FakeApi(), HostClass("cpu"), "default", {}, health_timeout_s=0.5)
    starting = node().model_copy(update={"remote_run": RUN})
    assert launcher.is_alive(starting)  # no address yet: its run is live
    cut_off = starting.model_copy(update={"host": "127.0.0.1", "port": proc.free_port(39000)})
    assert not launcher.is_alive(cut_off)  # nobody answers there: a host cut off the network looks like this
    assert not RemoteNodeLauncher(FakeApi(states=[("CANCELLED", "")]), HostClass("cpu"), "default", {}).is_alive(
        starting)
    assert not launcher.is_alive(node())  # never started here


def test_the_pool_lets_a_remote_host_pull_and_records_the_address_it_reports(tmp_path: Path) -> None:
    from llmops.pool.manager import Pool
    from llmops.pool.state import PoolStore
    from llmops.registry import ModelVersionRef

    class Registry:
        def resolve(self, name: str, version: str) -> ModelVersionRef:
            return ModelVersionRef(name=name, version="3", sha256="ab" * 32, source="s3://x")

    class Cache:
        def get(self, *a: object) -> None:
            raise AssertionError("the control plane must not download what the host pulls")

    class LB:
        added: list[tuple[str, str, int]] = []

        def add_server(self, backend: str, name: str, address: str, port: int, weight: int = 100,
                       maxconn: int = 0) -> None:
            self.added.append((name, address, port))

    class Launcher:
        pulls_locally = False

        def start(self, n: NodeRecord, model_dir: Path | None) -> NodeRecord:
            assert model_dir is None
            return n.model_copy(update={"remote_run": RUN, "host": "", "port": 0})

        def wait_ready(self, n: NodeRecord, timeout_s: float) -> NodeRecord:
            return n.model_copy(update={"host": "10.231.5.11", "port": 8100})

        def stop(self, n: NodeRecord) -> None: ...

        def is_alive(self, n: NodeRecord) -> bool:
            return True

    lb = LB()
    pool = Pool("m", "llm_m", Registry(), Cache(), Launcher(), lb, PoolStore(tmp_path / "pool.json"),  # type: ignore[arg-type]
                tmp_path / "targets.json")
    n = pool.add_node("champion")
    assert (n.host, n.port, n.remote_run, n.status) == ("10.231.5.11", 8100, RUN, NodeStatus.SERVING)
    assert lb.added == [("node1", "10.231.5.11", 8100)]
    assert "10.231.5.11:8100" in (tmp_path / "targets.json").read_text()


def test_an_engine_started_to_die_with_its_parent_ends_when_the_parent_is_killed(tmp_path: Path) -> None:
    """serve-node starts the engine this way: a flow run killed outright (SIGKILL) leaves no engine behind."""
    code = ("import sys,time; from pathlib import Path; from llmops import proc; "
            "r = proc.spawn(['sleep', '60'], Path(sys.argv[1]), die_with_parent=True); print(r.pid, flush=True); "
            "time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "e.log")], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert parent.stdout is not None
    engine = int(parent.stdout.readline())
    assert psutil.pid_exists(engine)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and psutil.pid_exists(engine) and \
            psutil.Process(engine).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.1)
    assert not psutil.pid_exists(engine) or psutil.Process(engine).status() == psutil.STATUS_ZOMBIE


def test_the_report_variable_name_is_a_valid_prefect_variable_name() -> None:
    import re

    assert re.fullmatch(r"[a-z0-9_]+", node_variable(RUN)) and len(node_variable(RUN)) <= 255
    assert {"FAILED", "CANCELLED"} <= remote.TERMINAL
