"""Nodes on other hosts through Prefect work pools (issue 9): a node is a run of the `serve-node` deployment.

The control plane never starts a process on another host. `RemoteNodeLauncher.start` creates a flow run of
`serve-node/<host class>`, whose work pool has a process worker on every host of that class; the worker that picks
the run up is the placement (a host whose network failed cannot poll, so its share goes to the others, and a
worker's `--limit` caps the nodes on its host). On the host, the flow (flows/serve_node.py) pulls the registered
version from MLflow over the network, verifies its hash, starts the engine bound to the host's address, checks it
serves, and reports where it listens through a Prefect variable (`node_variable`); it then lives as long as the
node. `wait_ready` reads that report and checks the node itself (health, a one-token completion, the version and
hash it serves) from the control plane. Stopping a node (after the pool drained it in HAProxy) cancels its run:
the worker stops the flow, which stops the engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from llmops.errors import ServiceError
from llmops.pool.state import NodeRecord
from llmops.prefect_api import TERMINAL


def node_variable(flow_run_id: str) -> str:
    """Name of the Prefect variable a `serve-node` run reports its address in (names: lowercase, digits, _)."""
    return "llmops_node_" + flow_run_id.replace("-", "")


class RemoteApi(Protocol):
    """The part of the Prefect API the launcher uses (llmops.prefect_api.PrefectApi; a fake in the unit tests)."""

    def run_deployment(self, flow_name: str, deployment: str, parameters: dict[str, object] | None = None
                       ) -> str: ...

    def run_state(self, flow_run_id: str) -> tuple[str, str]: ...  # (state type, message)

    def variable(self, name: str) -> Any: ...

    def delete_variable(self, name: str) -> None: ...

    def cancel(self, flow_run_id: str) -> None: ...


@dataclass(frozen=True)
class HostClass:
    """Where nodes of a pool run: the `serve-node` deployment whose work pool has a worker on each such host."""

    name: str  # e.g. cpu, gpu-h100: the deployment `serve-node/<name>`
    flow: str = "serve-node"


class RemoteNodeLauncher:
    """`NodeLauncher` for nodes on other hosts (see the module doc). `pulls_locally` is False: the host pulls."""

    pulls_locally = False

    def __init__(self, api: RemoteApi, host_class: HostClass, tenant: str, serving: dict[str, object],
                 health_timeout_s: float = 2.0, stop_wait_s: float = 20.0) -> None:
        self.api, self.host_class, self.tenant = api, host_class, tenant
        self.serving = serving  # the stack's `serving` settings, passed to the host
        self.health_timeout_s, self.stop_wait_s = health_timeout_s, stop_wait_s

    def start(self, node: NodeRecord, model_dir: Path | None) -> NodeRecord:
        params: dict[str, object] = {"model": node.model, "version": node.version, "sha256": node.sha256,
                                     "name": node.name, "engine": node.engine, "tenant": self.tenant,
                                     "serving": self.serving}
        run_id = self.api.run_deployment(self.host_class.flow, self.host_class.name, params)
        return node.model_copy(update={"remote_run": run_id, "host": "", "port": 0})

    def wait_ready(self, node: NodeRecord, timeout_s: float) -> NodeRecord:
        """Until the host reports the node serving, then check it from here; returns the node with its address."""
        from llmops.pool.launcher import check_serving

        run_id = self._run(node)
        deadline = time.monotonic() + timeout_s
        last = "not picked up by a worker yet"
        while time.monotonic() < deadline:
            state, message = self.api.run_state(run_id)
            if state in TERMINAL:
                raise ServiceError(f"node {node.name}: its serve-node run {run_id} ended {state} before serving: "
                                   f"{message}", "read that flow run's logs in the Prefect UI")
            report = self.api.variable(node_variable(run_id))
            if isinstance(report, dict) and report.get("host") and report.get("port"):
                placed = node.model_copy(update={"host": str(report["host"]), "port": int(report["port"])})
                try:
                    check_serving(placed)
                    return placed
                except (httpx.HTTPError, ServiceError) as err:
                    last = f"reported at {placed.url}, but: {err}"
            elif state == "RUNNING":
                last = "running on a host, pulling the model and starting the engine"
            time.sleep(0.5)
        raise ServiceError(f"node {node.name} not ready after {timeout_s:.0f}s ({last})",
                           f"is a worker of the {self.host_class.name!r} host class online? see flow run {run_id}")

    def stop(self, node: NodeRecord) -> None:
        """Cancel the node's run (the worker stops the flow, which stops the engine) and wait for that while the
        node answers; an unreachable host stops it once it can poll again. The report variable is removed."""
        if not node.remote_run:
            return
        state, _ = self.api.run_state(node.remote_run)
        if state not in TERMINAL:
            reachable = self.is_alive(node)
            self.api.cancel(node.remote_run)
            # wait for the engine to stop only where the host can hear it: a host cut off the network stops it
            # when it polls again, and waiting here would only delay its replacement
            deadline = time.monotonic() + (self.stop_wait_s if reachable else 0.0)
            while time.monotonic() < deadline and self.api.run_state(node.remote_run)[0] not in TERMINAL:
                time.sleep(0.5)
        self.api.delete_variable(node_variable(node.remote_run))

    def is_alive(self, node: NodeRecord) -> bool:
        """Its run is live and the node answers `/health` from here (a host cut off the network is not alive)."""
        if not node.remote_run or self.api.run_state(node.remote_run)[0] in TERMINAL:
            return False
        if not node.port:
            return True  # still starting: its run is live, there is no address to ask yet
        try:
            return httpx.get(f"{node.url}/health", timeout=self.health_timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def _run(self, node: NodeRecord) -> str:
        if not node.remote_run:
            raise ServiceError(f"node {node.name} has no serve-node run", "start it with this launcher")
        return node.remote_run
