"""serve-node: one serving node on the host whose worker picked this run up (llmops/pool/remote.py starts it).

Runs on a host-class work pool (a process worker on every host of the class). The host's worker environment says
where the host is and where it keeps its files:

    LLMOPS_NODE_ADDRESS    the address the engine binds to and the gateway reaches (default 127.0.0.1)
    LLMOPS_NODE_STATE      the host's cache and node directories (default ~/.llmops-node)
    MLFLOW_TRACKING_URI    the registry (models are downloaded through the MLflow server)

Pull the registered version (a cache miss downloads it), verify its hash against the one the control plane
registered, start the engine bound to the host's address, check it serves that version, report the address in the
Prefect variable `llmops_node_<run id>`, then stay with the node: the run ends when the engine exits (FAILED) or
when the control plane cancels it after draining (the engine is stopped first).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from llmops.errors import ServiceError
from llmops.model_cache import ModelCache
from llmops.pool.launcher import LocalProcessLauncher
from llmops.pool.remote import node_variable
from llmops.pool.state import NodeRecord
from llmops.proc import free_port
from llmops.registry import MlflowRegistry, pull_verified
from llmops.stackconfig import ServingSettings

ROOT = Path(__file__).resolve().parents[1]


@flow(name="serve-node", log_prints=True)
def serve_node_flow(model: str, version: str, sha256: str, name: str, engine: str = "transformers",
                    tenant: str = "default", serving: dict[str, Any] | None = None, port: int = 0,
                    ready_timeout_s: float = 300.0) -> dict[str, Any]:
    from prefect.variables import Variable

    log = get_run_logger()
    settings = ServingSettings.model_validate(serving or {})
    address = os.environ.get("LLMOPS_NODE_ADDRESS", "127.0.0.1")
    home = Path(os.environ.get("LLMOPS_NODE_STATE", str(Path.home() / ".llmops-node")))
    registry = MlflowRegistry(os.environ["MLFLOW_TRACKING_URI"])
    t0 = time.monotonic()
    ref, cached = pull_verified(registry, ModelCache(home / "models"), model, version)
    if ref.sha256 != sha256:
        raise ServiceError(f"{model} v{version} is registered with sha256 {ref.sha256[:16]}..., the control plane "
                           f"asked for {sha256[:16]}...", "re-register the version or start the node again")
    pulled_s = time.monotonic() - t0
    launcher = LocalProcessLauncher(home / "nodes", settings, ROOT, tenant=tenant, die_with_parent=True)
    node = NodeRecord(name=name, model=model, engine=engine, version=ref.version, sha256=ref.sha256, host=address,
                      port=port or free_port(settings_port_base(), set()), started_at=time.time())
    run_id = str(flow_run.get_id())
    node = launcher.start(node, cached.path)
    try:
        node = launcher.wait_ready(node, ready_timeout_s)
        ready_s = time.monotonic() - t0
        Variable.set(node_variable(run_id), {"host": node.host, "port": node.port, "pulled_s": round(pulled_s, 1),
                                             "ready_s": round(ready_s, 1)}, overwrite=True)
        log.info("node %s serves %s v%s at %s (pulled in %.1fs, ready in %.1fs)", name, model, ref.version,
                 node.url, pulled_s, ready_s)
        while launcher.is_alive(node):
            time.sleep(1.0)
        raise ServiceError(f"node {name}'s engine exited", f"read {home / 'nodes' / name / 'node.log'} on "
                                                           f"{address}")
    finally:  # cancelled (the control plane drained it first), failed, or the engine died: nothing stays behind
        launcher.stop(node)


def settings_port_base() -> int:
    return int(os.environ.get("LLMOPS_NODE_BASE_PORT", "8100"))
