"""Serving nodes on other hosts (issue 9), on four network-namespace hosts (tests/integration/hosts.py).

The control plane (Prefect, MLflow, S3, Prometheus, Alertmanager, HAProxy, the receiver and the control-plane
worker) runs in the root namespace, bound to the bridge address. Each host runs a Prefect process worker of the
`cpu` host class holding at most one node (`--limit 1`: placement is whichever worker picks a run up, so with two
per host both of the pool's nodes could land on the host the test cuts, and every request would fail until the
replacement; a 2026-11-29 run did exactly that). Nodes are `serve-node` runs those workers pick up: the
host pulls the version from MLflow over the bridge, checks its hash, binds the engine to its own address. Shown:
the pool's nodes live on the other hosts and serve through the gateway; a burst makes the `scale` flow (alert ->
Alertmanager -> receiver -> Prefect event) add a node, placed on another host; cutting one host's link fires
NodeDown, takes its nodes out of rotation, and `reconcile` replaces them on the remaining hosts; only requests in
flight on that host fail.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmops.loadgen.runner import run_load
from llmops.loadgen.schedule import burst, steady
from llmops.prefect_api import PrefectApi
from llmops.smoke import prom_query

from .conftest import free_ports_config, write_config
from .hosts import NetnsHosts

pytestmark = [pytest.mark.integration, pytest.mark.hosts]

ROOT = Path(__file__).resolve().parents[2]
POLICY = {"min_replicas": 2, "max_replicas": 3, "warm_standby": 0, "high_latency_s": 600, "backlog": 10000,
          "target_in_flight_per_node": 2, "alert_for_s": 2, "up_cooldown_s": 10, "down_cooldown_s": 600,
          "max_step": 1, "scale_ahead_s": 0, "budget_per_hour": 10.0}


def _worker_env(stack: Any, host_address: str, home: Path) -> dict[str, str]:
    from infra.stack import services as svc

    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))},
           **svc.prefect_env(stack.cfg, stack.ep)}
    env.update({"PREFECT_HOME": str(home / "prefect"), "LLMOPS_NODE_ADDRESS": host_address,
                "LLMOPS_NODE_STATE": str(home), "LLMOPS_NODE_BASE_PORT": "8100", "OMP_NUM_THREADS": "1"})
    return env


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, NetnsHosts]]:
    from infra.stack.launcher import Stack

    tmp = tmp_path_factory.mktemp("remote")
    with NetnsHosts(4) as hosts:
        # the pool's state in a table (SqlPoolStore, optimistic concurrency) rather than the state dir's file:
        # the multi-host configuration, exercised by every scale and reconcile run below
        cfg = write_config(tmp, free_ports_config(tmp / "state", host=hosts.gateway, scaling=POLICY,
                                                  serving={"host_class": "cpu", "max_concurrency_per_node": 2,
                                                           "start_timeout_s": 300},
                                                  pool_database=f"sqlite:///{tmp / 'pool.db'}"))
        stack = Stack(cfg)
        started: list[str] = []

        def start_workers() -> None:  # once the Prefect server answers on the bridge: stack.up waits for nodes
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{stack.ep.prefect_api_url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
            prefect = str(Path(sys.executable).with_name("prefect"))
            for i, h in enumerate(hosts.hosts):
                home = tmp / f"host{i}"
                home.mkdir()
                hosts.spawn(h, [prefect, "worker", "start", "--pool", "cpu", "--type", "process", "--limit", "1",
                                "--name", f"cpu-{h.address}"], home / "worker.log",
                            env=_worker_env(stack, h.address, home), cwd=ROOT)
                started.append(h.name)

        t = threading.Thread(target=start_workers, daemon=True)
        t.start()
        try:
            stack.up()
            yield stack, hosts
        finally:
            stack.down()


def _nodes(stack: Any) -> list[Any]:
    return [n for n in stack.pool(stack.cfg.model.name).nodes()]


def test_nodes_run_on_the_other_hosts_and_serve_through_the_gateway(remote: tuple[Any, NetnsHosts]) -> None:
    stack, hosts = remote
    addresses = {h.address for h in hosts.hosts}
    nodes = _nodes(stack)
    assert len(nodes) == 2 and all(n.host in addresses and n.remote_run for n in nodes), nodes
    from llmops.pool.state import SqlPoolStore

    assert isinstance(stack.pool().store, SqlPoolStore) and not (stack.cfg.state_dir / "pool" / "pool.json").exists()
    r = httpx.post(f"{stack.ep.gateway_url}/v1/chat/completions", timeout=60, json={
        "model": stack.cfg.model.name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert r.status_code == 200, r.text
    targets = json.loads((stack.cfg.state_dir / "prometheus" / "targets" /
                          f"nodes-{stack.cfg.model.name}.json").read_text())
    assert {t for g in targets for t in g["targets"]} == {f"{n.host}:{n.port}" for n in nodes}


def test_a_cut_host_leaves_rotation_and_reconcile_replaces_its_node_on_another(
        remote: tuple[Any, NetnsHosts]) -> None:
    stack, hosts = remote
    api = PrefectApi(stack.ep.prefect_api_url, stack.ep.prefect_ui_url)
    victim = _nodes(stack)[0]
    host = next(h for h in hosts.hosts if h.address == victim.host)
    lost = [n.name for n in _nodes(stack) if n.host == host.address]  # every node of that host
    stop, result = threading.Event(), {}
    load = threading.Thread(target=lambda: result.update(run_load(
        f"{stack.ep.gateway_url}/v1", stack.cfg.model.name, steady(1.0, 120, max_tokens=8), stop=stop)),
        daemon=True)
    load.start()
    time.sleep(5)
    t_cut = time.monotonic()
    hosts.cut(host)
    # HAProxy's health check (inter 1 s, fall 2) takes it out of rotation
    left = None
    while time.monotonic() - t_cut < 15 and left is None:
        out = stack.pool(stack.cfg.model.name).lb.servers(stack.pool(stack.cfg.model.name).backend)
        if any(s.name == victim.name and not s.in_rotation for s in out):
            left = time.monotonic() - t_cut
        time.sleep(0.5)
    assert left is not None and left <= 5, f"{victim.name} still in rotation {time.monotonic() - t_cut:.0f}s after"
    fired = None
    while time.monotonic() - t_cut < 30 and fired is None:
        if prom_query(stack.ep, f'ALERTS{{alertname="NodeDown",alertstate="firing",node="{victim.name}"}}'):
            fired = time.monotonic() - t_cut
        time.sleep(0.5)
    assert fired is not None, "NodeDown never fired for the cut host's node"
    # reconcile replaces them: a run started now, or the scheduled one if it is running already (the deployment
    # takes one run at a time and cancels the newer)
    api.run_deployment("reconcile", "reconcile", {})
    deadline = time.monotonic() + 300
    nodes = _nodes(stack)
    while time.monotonic() < deadline:
        nodes = _nodes(stack)
        if not set(lost) & {n.name for n in nodes} and len(nodes) >= 2 and \
                all(n.status.value == "serving" for n in nodes):
            break
        time.sleep(1)
    replaced = time.monotonic() - t_cut
    stop.set()
    load.join(timeout=60)
    assert not set(lost) & {n.name for n in nodes} and len(nodes) >= 2, nodes
    assert all(n.host != host.address for n in nodes), "a replacement was placed on the cut host"
    failed = result.get("failed", 0)
    print(json.dumps({"out_of_rotation_s": round(left, 1), "node_down_s": round(fired, 1),
                      "replaced_s": round(replaced, 1), "lost": lost,
                      "requests": result.get("requests"), "failed": failed}))
    # only what was in flight on the cut host fails: each of its nodes takes at most max_concurrency_per_node
    assert failed <= stack.cfg.serving.max_concurrency_per_node * len(lost), result
    hosts.mend(host)


def test_a_burst_scales_out_onto_another_host(remote: tuple[Any, NetnsHosts]) -> None:
    stack, hosts = remote
    before = {n.name for n in _nodes(stack)}
    t0 = time.monotonic()
    result = run_load(f"{stack.ep.gateway_url}/v1", stack.cfg.model.name,
                      burst(0.5, 6.0, 60, 2, 40, max_tokens=16))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(_nodes(stack)) < 3:
        time.sleep(1)
    nodes = _nodes(stack)
    added = [n for n in nodes if n.name not in before]
    print(json.dumps({"scaled_out_s": round(time.monotonic() - t0, 1), "added": [(n.name, n.host) for n in added],
                      "requests": result.get("requests"), "failed": result.get("failed")}))
    assert len(nodes) == 3 and added, nodes
    assert all(n.host in {h.address for h in hosts.hosts} and n.remote_run for n in added)
    assert result.get("failed") == 0, result
