"""Pool.reconcile against a fake HAProxy and launcher: the recorded pool and the balancer end up in step."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.pool.haproxy import ServerState
from llmops.pool.manager import Pool
from llmops.pool.state import NodeRecord, NodeStatus, PoolStore


@dataclass
class FakeLB:
    servers_: dict[str, ServerState] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    def servers(self, backend: str) -> list[ServerState]:
        return list(self.servers_.values())

    def add_server(self, backend: str, name: str, address: str, port: int, weight: int = 100, maxconn: int = 0) -> None:
        self.servers_[name] = ServerState(backend, name, address, port, 0, 2, weight, 6)

    def set_weight(self, backend: str, name: str, weight: int) -> None:
        s = self.servers_[name]
        self.servers_[name] = ServerState(s.backend, name, s.address, s.port, 0, 2, weight, 6)

    def remove_server(self, backend: str, name: str, drain_timeout_s: float = 60) -> None:
        self.removed.append(name)
        del self.servers_[name]


@dataclass
class FakeLauncher:
    alive: set[str] = field(default_factory=set)
    stopped: list[str] = field(default_factory=list)

    def is_alive(self, node: NodeRecord) -> bool:
        return node.name in self.alive

    def stop(self, node: NodeRecord) -> None:
        self.stopped.append(node.name)


def node(name: str, status: NodeStatus = NodeStatus.SERVING, weight: int = 100, started_at: float = 1.0
         ) -> NodeRecord:
    return NodeRecord(name=name, model="m", engine="transformers", version="1", sha256="s", host="127.0.0.1",
                      port=9000 + int(name[1:]), weight=weight, status=status, started_at=started_at)


def make_pool(tmp_path: Path, nodes: list[NodeRecord], lb: FakeLB, launcher: FakeLauncher) -> Pool:
    store = PoolStore(tmp_path / "pool.json")
    with store.update() as st:
        st.nodes = {n.name: n for n in nodes}
    none: Any = None
    return Pool("m", "llm_m", none, none, launcher, lb, store, tmp_path / "targets.json")  # type: ignore[arg-type]


def test_reconcile_fixes_each_kind_of_drift(tmp_path: Path) -> None:
    lb = FakeLB()
    lb.add_server("b", "n1", "127.0.0.1", 9001, 100)       # in step
    lb.add_server("b", "n2", "127.0.0.1", 9002, 100)       # its process died
    lb.add_server("b", "n4", "127.0.0.1", 9004, 100)       # weight drifted (recorded 0)
    lb.add_server("b", "n9", "127.0.0.1", 9009, 100)       # orphan: not in the pool state
    launcher = FakeLauncher(alive={"n1", "n3", "n4", "n5"})
    pool = make_pool(tmp_path, [node("n1"), node("n2"), node("n3"), node("n4", weight=0),
                                node("n5", NodeStatus.STARTING)], lb, launcher)
    report = pool.reconcile()
    assert report.dead == ["n2", "n5"] and report.readded == ["n3"] and report.orphans == ["n9"]
    assert report.reweighted == ["n4"] and report.changed
    assert sorted(n.name for n in pool.nodes()) == ["n1", "n3", "n4"]
    assert {s.name: s.weight for s in lb.servers("b")} == {"n1": 100, "n3": 100, "n4": 0}
    assert sorted(launcher.stopped) == ["n2", "n5"]      # a half-started node of a crashed flow is stopped too
    targets = (tmp_path / "targets.json").read_text()
    assert "9001" in targets and "9002" not in targets


def test_reconcile_of_a_pool_in_step_changes_nothing(tmp_path: Path) -> None:
    lb = FakeLB()
    lb.add_server("b", "n1", "127.0.0.1", 9001, 100)
    pool = make_pool(tmp_path, [node("n1")], lb, FakeLauncher(alive={"n1"}))
    report = pool.reconcile()
    assert not report.changed and report.summary() == "in step" and lb.removed == []


def test_a_node_being_started_right_now_is_left_alone(tmp_path: Path) -> None:
    import time

    lb = FakeLB()
    launcher = FakeLauncher(alive={"n1"})
    pool = make_pool(tmp_path, [node("n1", NodeStatus.STARTING, started_at=time.time())], lb, launcher)
    report = pool.reconcile()
    assert not report.changed and [n.name for n in pool.nodes()] == ["n1"] and launcher.stopped == []
