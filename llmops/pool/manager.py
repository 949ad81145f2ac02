"""The pool of one served model: add a node serving a registered version, remove one after draining."""

from __future__ import annotations

import json
from pathlib import Path

from llmops import proc
from llmops.errors import ServiceError
from llmops.model_cache import ModelCache
from llmops.pool.haproxy import HAProxyRuntime
from llmops.pool.launcher import LocalProcessLauncher, NodeLauncher
from llmops.pool.state import NodeRecord, NodeStatus, PoolStore
from llmops.registry import MlflowRegistry, ModelRegistry, pull_verified
from llmops.stackconfig import StackConfig


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
                 launcher: NodeLauncher, lb: HAProxyRuntime, store: PoolStore, targets_file: Path,
                 host: str = "127.0.0.1", node_base_port: int = 8100, ready_timeout_s: float = 180) -> None:
        self.model, self.backend = model, backend
        self.registry, self.cache, self.launcher, self.lb, self.store = registry, cache, launcher, lb, store
        self.targets_file, self.host, self.node_base_port = targets_file, host, node_base_port
        self.ready_timeout_s = ready_timeout_s

    def nodes(self) -> list[NodeRecord]:
        return [n for n in self.store.read().nodes.values() if n.model == self.model]

    def add_node(self, version_or_alias: str, engine: str = "transformers", weight: int = 100) -> NodeRecord:
        """Pull (hash-checked), start, wait until it really serves, then add it to HAProxy with `weight`
        (0: joined and health-checked but taking no traffic, e.g. a canary before its first step)."""
        ref, cached = pull_verified(self.registry, self.cache, self.model, version_or_alias)
        with self.store.update() as state:
            taken = {n.port for n in state.nodes.values()}
            port = proc.free_port(self.node_base_port, taken)
            name = f"node{state.next_id}"
            state.next_id += 1
            node = NodeRecord(name=name, model=self.model, engine=engine, version=ref.version,
                              sha256=ref.sha256, host=self.host, port=port, weight=weight)
            state.nodes[name] = node
        try:
            node = self.launcher.start(node, cached.path)
            self._save(node)
            self.launcher.wait_ready(node, self.ready_timeout_s)
            self.lb.add_server(self.backend, node.name, node.host, node.port, weight=node.weight)
        except BaseException:
            self.launcher.stop(node)
            self._forget(node.name)
            raise
        node = node.model_copy(update={"status": NodeStatus.SERVING})
        self._save(node)
        self.write_targets()
        return node

    def set_weight(self, name: str, weight: int) -> None:
        """Change a node's share of traffic (HAProxy weight 0-256) and record it."""
        node = self.store.read().nodes.get(name)
        if node is None:
            raise ServiceError(f"no node {name!r} in pool {self.model}", "list nodes with `llmops stack status`")
        self.lb.set_weight(self.backend, name, weight)
        self._save(node.model_copy(update={"weight": weight}))

    def remove_node(self, name: str, drain_timeout_s: float = 60) -> None:
        """Drain in HAProxy (wait for zero in flight), stop the process, forget it."""
        node = self.store.read().nodes.get(name)
        if node is None:
            raise ServiceError(f"no node {name!r} in pool {self.model}", "list nodes with `llmops stack status`")
        self._save(node.model_copy(update={"status": NodeStatus.DRAINING}))
        if any(s.name == name for s in self.lb.servers(self.backend)):
            self.lb.remove_server(self.backend, name, drain_timeout_s)
        self.launcher.stop(node)
        self._forget(name)
        self.write_targets()

    def write_targets(self) -> None:
        """Rewrite the Prometheus file-SD targets from the serving nodes (atomic replace)."""
        targets = [{"targets": [f"{n.host}:{n.port}"],
                    "labels": {"node": n.name, "model": n.model, "version": n.version, "engine": n.engine}}
                   for n in self.nodes() if n.status == NodeStatus.SERVING]
        self.targets_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets, indent=2))
        tmp.replace(self.targets_file)

    def _save(self, node: NodeRecord) -> None:
        with self.store.update() as state:
            state.nodes[node.name] = node

    def _forget(self, name: str) -> None:
        with self.store.update() as state:
            state.nodes.pop(name, None)


def backend_name(model_name: str) -> str:
    """HAProxy backend serving one registered model."""
    return f"llm_{model_name.replace('-', '_')}"


def stack_pool(cfg: StackConfig, mlflow_url: str, haproxy_socket: Path, repo_root: Path) -> Pool:
    """The pool of a local stack's model, wired to its registry, cache, launcher, HAProxy and state files."""
    sd = cfg.state_dir
    return Pool(model=cfg.model.name, backend=backend_name(cfg.model.name), registry=MlflowRegistry(mlflow_url),
                cache=ModelCache(sd / "models"), launcher=LocalProcessLauncher(sd / "nodes", cfg.serving, repo_root),
                lb=HAProxyRuntime(haproxy_socket), store=PoolStore(sd / "pool" / "pool.json"),
                targets_file=sd / "prometheus" / "targets" / "nodes.json", host=cfg.host,
                node_base_port=cfg.ports.node_base, ready_timeout_s=cfg.serving.start_timeout_s)
