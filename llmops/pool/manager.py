"""The pool of one served model: add a node serving a registered version, remove one after draining."""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from llmops import proc
from llmops.errors import ServiceError
from llmops.model_cache import ModelCache
from llmops.pool.haproxy import HAProxyRuntime
from llmops.pool.launcher import LocalProcessLauncher, NodeLauncher
from llmops.pool.state import (
    NodeRecord,
    NodeStatus,
    PoolConflict,
    PoolState,
    PoolStore,
    ScalingState,
    SqlPoolStore,
    pool_store,
)
from llmops.registry import MlflowRegistry, ModelRegistry, pull_verified
from llmops.stackconfig import StackConfig

T = TypeVar("T")
_TARGETS_LOCK = threading.Lock()  # Prometheus target files are rewritten from the threads that start nodes


@dataclass
class ReconcileReport:
    """What `Pool.reconcile` found out of step between the recorded pool and HAProxy, and what it did."""

    dead: list[str] = field(default_factory=list)          # process gone or never finished starting: forgotten
    readded: list[str] = field(default_factory=list)       # alive but missing from HAProxy (e.g. it restarted)
    orphans: list[str] = field(default_factory=list)       # in HAProxy, not in the pool state: removed
    reweighted: list[str] = field(default_factory=list)    # HAProxy weight differed from the recorded one

    @property
    def changed(self) -> bool:
        return bool(self.dead or self.readded or self.orphans or self.reweighted)

    def summary(self) -> str:
        parts = [f"{k}: {', '.join(v)}" for k, v in (("dead", self.dead), ("re-added", self.readded),
                                                    ("orphans removed", self.orphans),
                                                    ("re-weighted", self.reweighted)) if v]
        return "; ".join(parts) or "in step"


class Pool:
    """Nodes of one model behind one HAProxy backend.

    Args:
        model: registered model name (also the OpenAI `model` field).
        backend: HAProxy backend name.
        registry, cache, launcher, lb, store: the adapters it acts through.
        targets_file: Prometheus file-SD file listing the nodes to scrape.
        host, node_base_port: where nodes listen.
    """

    def __init__(self, model: str, backend: str, registry: ModelRegistry, cache: ModelCache,
                 launcher: NodeLauncher, lb: HAProxyRuntime, store: PoolStore | SqlPoolStore, targets_file: Path,
                 host: str = "127.0.0.1", node_base_port: int = 8100, ready_timeout_s: float = 180,
                 max_conn: int = 0) -> None:
        self.model, self.backend = model, backend
        self.registry, self.cache, self.launcher, self.lb, self.store = registry, cache, launcher, lb, store
        self.targets_file, self.host, self.node_base_port = targets_file, host, node_base_port
        self.ready_timeout_s = ready_timeout_s
        self.max_conn = max_conn  # requests one node takes at once; HAProxy queues the rest (0: no limit)

    def nodes(self) -> list[NodeRecord]:
        return [n for n in self.store.read().nodes.values() if n.model == self.model]

    def read_state(self) -> PoolState:
        return self.store.read()

    def update_scaling(self, fn: Callable[[ScalingState], None]) -> None:
        """Change this model's scaling memory under the state file's lock (applied again to the new state when
        another writer came in between: a conflicting write committed nothing)."""
        self._write(lambda state: fn(state.scaling_of(self.model)))

    def reconcile(self) -> ReconcileReport:
        """Bring the recorded pool and HAProxy's runtime state into step before acting on either.

        The pool state is the intent; HAProxy is what serves. A node that is not SERVING and older than the
        start timeout was left half-started or half-removed by a crashed flow: it is stopped and forgotten, like
        a node whose process died (a younger one is being started right now, e.g. by `stack up`, and is left).
        A live node missing from HAProxy is re-added with its recorded weight; a server HAProxy has but the
        state does not is drained and deleted; weights are set back to the record.
        """
        report = ReconcileReport()
        servers = {s.name: s for s in self.lb.servers(self.backend)}
        now = time.time()
        for node in self.nodes():
            alive = self.launcher.is_alive(node)
            if alive and node.status != NodeStatus.SERVING and now - (node.started_at or 0) < self.ready_timeout_s:
                continue  # being started (or removed) right now by `stack up` or another action: not ours to judge
            if node.status != NodeStatus.SERVING or not alive:
                report.dead.append(node.name)
                if node.name in servers:
                    self.lb.remove_server(self.backend, node.name, drain_timeout_s=5)
                self.launcher.stop(node)
                self._forget(node.name)
            elif node.name not in servers:
                self.lb.add_server(self.backend, node.name, node.host, node.port, weight=node.weight,
                                   maxconn=self.max_conn)
                report.readded.append(node.name)
            elif servers[node.name].weight != node.weight:
                self.lb.set_weight(self.backend, node.name, node.weight)
                report.reweighted.append(node.name)
        known = {n.name for n in self.nodes()}
        for name in servers.keys() - known - set(report.dead):
            self.lb.remove_server(self.backend, name, drain_timeout_s=5)
            report.orphans.append(name)
        self.write_targets()
        return report

    def add_node(self, version_or_alias: str, engine: str = "transformers", weight: int = 100,
                 standby: bool = False) -> NodeRecord:
        """Pull (hash-checked), start, wait until it really serves, then add it to HAProxy with `weight`
        (0: joined and health-checked but taking no traffic: a canary before its first step, or a warm
        standby node when `standby`)."""
        if self.launcher.pulls_locally:
            ref, cached = pull_verified(self.registry, self.cache, self.model, version_or_alias)
            model_dir: Path | None = cached.path
        else:  # the node's host pulls and verifies it
            ref, model_dir = self.registry.resolve(self.model, version_or_alias), None
        def record(state: PoolState) -> NodeRecord:
            port = proc.free_port(self.node_base_port, {n.port for n in state.nodes.values()})
            name = f"node{state.next_id}"
            state.next_id += 1
            state.nodes[name] = NodeRecord(name=name, model=self.model, engine=engine, version=ref.version,
                                           sha256=ref.sha256, host=self.host, port=port, weight=weight,
                                           standby=standby, started_at=time.time())
            return state.nodes[name]

        node = self._write(record)
        try:
            node = self.launcher.start(node, model_dir)
            self._save(node)
            node = self.launcher.wait_ready(node, self.ready_timeout_s)
            self._save(node)
            self.lb.add_server(self.backend, node.name, node.host, node.port, weight=node.weight,
                               maxconn=self.max_conn)
        except BaseException:
            self.launcher.stop(node)
            self._forget(node.name)
            raise
        node = node.model_copy(update={"status": NodeStatus.SERVING})
        self._save(node)
        self.write_targets()
        return node

    def set_weight(self, name: str, weight: int, standby: bool | None = None) -> None:
        """Change a node's share of traffic (HAProxy weight 0-256) and record it (and its standby flag)."""
        node = self.store.read().nodes.get(name)
        if node is None:
            raise ServiceError(f"no node {name!r} in pool {self.model}", "list nodes with `llmops stack status`")
        self.lb.set_weight(self.backend, name, weight)
        update: dict[str, object] = {"weight": weight}
        if standby is not None:
            update["standby"] = standby
        self._save(node.model_copy(update=update))

    def remove_node(self, name: str, drain_timeout_s: float = 60) -> None:
        """Drain in HAProxy (wait for zero in flight), stop the process, forget it."""
        node = self.store.read().nodes.get(name)
        if node is None:
            raise ServiceError(f"no node {name!r} in pool {self.model}", "list nodes with `llmops stack status`")
        self._save(node.model_copy(update={"status": NodeStatus.DRAINING}))
        self.write_targets()  # out of Prometheus' targets before it stops: a deliberate stop is not a NodeDown
        if any(s.name == name for s in self.lb.servers(self.backend)):
            self.lb.remove_server(self.backend, name, drain_timeout_s)
        self.launcher.stop(node)
        self._forget(name)
        self.write_targets()

    def write_targets(self) -> None:
        """Rewrite the Prometheus file-SD targets from the serving nodes (atomic replace). Nodes starting side by
        side write it from several threads: one at a time per file (the last write reads the newest state), each
        through its own temporary file (Prometheus reads only `*.json`)."""
        with _TARGETS_LOCK:
            targets = [{"targets": [f"{n.host}:{n.port}"],
                        "labels": {"node": n.name, "model": n.model, "version": n.version, "engine": n.engine}}
                       for n in self.nodes() if n.status == NodeStatus.SERVING]
            self.targets_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.targets_file.parent, prefix=f".{self.targets_file.name}.",
                                       suffix=".tmp")
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(targets, indent=2))
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.targets_file)

    def _write(self, change: Callable[[PoolState], T], attempts: int = 8) -> T:
        """Apply `change` to the stored state. The node bookkeeping here (record a new node under a free name and
        port, save a node's record, forget one) is a function of the state it reads, so when another writer came in
        between (`PoolConflict` from the SQL store: nodes starting side by side) it is applied again to the new
        state. Scaling decisions are not written through here: they hold the pool lock."""
        for attempt in range(attempts):
            try:
                with self.store.update() as state:
                    out = change(state)
                return out
            except PoolConflict:
                if attempt == attempts - 1:
                    raise
                time.sleep(random.uniform(0.01, 0.03) * (attempt + 1))  # jitter: writers that met apart
        raise AssertionError("unreachable")

    def _save(self, node: NodeRecord) -> None:
        def put(state: PoolState) -> None:
            state.nodes[node.name] = node

        self._write(put)

    def _forget(self, name: str) -> None:
        """Drop a node from the state; its node-seconds so far stay counted in the pool's spend."""
        def drop(state: PoolState) -> None:
            node = state.nodes.pop(name, None)
            if node is not None and node.started_at:
                state.scaling_of(node.model).retired_node_seconds += max(time.time() - node.started_at, 0.0)

        self._write(drop)


def targets_file(state_dir: Path, model: str) -> Path:
    """Prometheus file-SD file of one pool's nodes (Prometheus reads every file of the directory)."""
    return state_dir / "prometheus" / "targets" / f"nodes-{model}.json"


def stack_pool(cfg: StackConfig, mlflow_url: str, haproxy_socket: Path, repo_root: Path,
               model: str | None = None, prefect_api_url: str | None = None) -> Pool:
    """The pool of one tenant's model (default: the stack's own model, tenant `default`), wired to its registry,
    cache, launcher, HAProxy backend and state files. Every pool shares the state file (one lock, one node counter)
    but sees only its own nodes. With `serving.host_class` set, its nodes are `serve-node` runs on that class's
    work pool (other hosts; needs `prefect_api_url`), else local processes."""
    sd = cfg.state_dir
    tp = cfg.pool_for(model or cfg.model.name)
    launcher: NodeLauncher
    if cfg.serving.host_class:
        if not prefect_api_url:
            raise ServiceError(f"serving.host_class {cfg.serving.host_class!r} needs the Prefect API",
                               "pass the stack's Prefect API URL")
        from llmops.pool.remote import HostClass, RemoteNodeLauncher
        from llmops.prefect_api import PrefectApi

        launcher = RemoteNodeLauncher(PrefectApi(prefect_api_url, prefect_api_url.removesuffix("/api")),
                                      HostClass(cfg.serving.host_class), tp.tenant,
                                      cfg.serving.model_dump(mode="json", exclude={"host_class"}))
    else:
        launcher = LocalProcessLauncher(sd / "nodes", cfg.serving, repo_root, serving_log_dir=sd / "serving-log",
                                        tenant=tp.tenant)
    return Pool(model=tp.model, backend=tp.backend, registry=MlflowRegistry(mlflow_url),
                cache=ModelCache(sd / "models"), launcher=launcher,
                lb=HAProxyRuntime(haproxy_socket), store=pool_store(sd, cfg.pool_database),
                targets_file=targets_file(sd, tp.model), host=cfg.host,
                node_base_port=cfg.ports.node_base, ready_timeout_s=cfg.serving.start_timeout_s,
                max_conn=cfg.serving.max_concurrency_per_node)


# The pool lock (Prefect global concurrency limit `pool-<model>`, taken by rollout, scale and reconcile) is held
# under a lease the holder renews; a holder that dies (killed flow run, `stack down` mid-action) blocks the pool
# at most this long. 60 s is the shortest lease the Prefect server accepts.
POOL_LOCK_LEASE_S = 60
