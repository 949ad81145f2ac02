"""The autoscaler's actions against fakes: warm standby first, then cold nodes, then the standby refilled;
scale-in drains the newest node; a budget-capped pool never starts what it cannot pay for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from llmops.autoscaler import Autoscaler
from llmops.errors import ServiceError
from llmops.pool.manager import ReconcileReport
from llmops.pool.state import NodeRecord, NodeStatus, PoolState, ScalingState
from llmops.scaling import Action, ScalePolicy


@dataclass
class FakePool:
    model: str = "m"
    state: PoolState = field(default_factory=PoolState)
    log: list[str] = field(default_factory=list)
    fail_cold: bool = False

    def nodes(self) -> list[NodeRecord]:
        return list(self.state.nodes.values())

    def reconcile(self) -> ReconcileReport:
        return ReconcileReport()

    def add_node(self, version_or_alias: str, engine: str = "transformers", weight: int = 100,
                 standby: bool = False) -> NodeRecord:
        if self.fail_cold:
            raise ServiceError("node exited while starting", "read the log")
        name = f"n{self.state.next_id}"
        self.state.next_id += 1
        node = NodeRecord(name=name, model="m", engine=engine, version="1", sha256="s", host="h",
                          port=self.state.next_id, weight=weight, standby=standby, status=NodeStatus.SERVING,
                          started_at=float(self.state.next_id))
        self.state.nodes[name] = node
        self.log.append(f"add {name}{' standby' if standby else ''}")
        return node

    def set_weight(self, name: str, weight: int, standby: bool | None = None) -> None:
        upd: dict[str, object] = {"weight": weight}
        if standby is not None:
            upd["standby"] = standby
        self.state.nodes[name] = self.state.nodes[name].model_copy(update=upd)
        self.log.append(f"weight {name} {weight}")

    def remove_node(self, name: str, drain_timeout_s: float = 60) -> None:
        del self.state.nodes[name]
        self.log.append(f"remove {name}")

    def read_state(self) -> PoolState:
        return self.state

    def update_scaling(self, fn: Callable[[ScalingState], None]) -> None:
        fn(self.state.scaling_of(self.model))


class Metrics:
    def __init__(self, latency: float | None, waiting: float | None, in_flight: float | None) -> None:
        self.v = {"latency": latency, "waiting": waiting, "in_flight": in_flight}

    def scalar(self, expr: str) -> float | None:
        if expr.startswith("ALERTS"):
            return None
        key = "latency" if "latency" in expr else "waiting" if "waiting" in expr else "in_flight"
        return self.v[key]


POLICY = ScalePolicy(min_replicas=2, max_replicas=5, warm_standby=1, high_latency_s=0.2, backlog=50,
                     target_in_flight_per_node=4, max_step=2, up_cooldown_s=20, down_cooldown_s=60,
                     budget_per_hour=10, node_price_per_hour=1)


def pool_with(serving: int, standby: int) -> FakePool:
    p = FakePool()
    for _ in range(serving):
        p.add_node("champion")
    for _ in range(standby):
        p.add_node("champion", weight=0, standby=True)
    p.log.clear()
    return p


def scaler(pool: FakePool, metrics: Metrics, policy: ScalePolicy = POLICY, now: float = 1000.0) -> Autoscaler:
    return Autoscaler(pool, metrics, policy, say=lambda _: None, clock=lambda: now)


def test_scale_out_promotes_standby_first_then_starts_cold_then_refills() -> None:
    pool = pool_with(2, 1)  # n1 n2 serving, n3 standby
    result = scaler(pool, Metrics(0.9, 4, 12)).run(allow_scale_in=False)  # 16 requests at 4 per node: 4 nodes
    assert result.decision.action is Action.OUT and result.decision.desired == 4
    assert result.promoted == ["n3"] and result.started == ["n4"] and result.standby_started == ["n5"]
    assert pool.log[0] == "weight n3 100" and sorted(pool.log[1:]) == ["add n4", "add n5 standby"]
    assert sum(not n.standby for n in pool.nodes()) == 4
    assert pool.state.scaling_of("m").last_scale_out_at == 1000.0
    assert pool.state.scaling_of("m").actions[-1]["action"] == "scale_out"


def test_no_standby_is_kept_that_max_replicas_would_never_let_us_promote() -> None:
    # one node per GPU on a 2-GPU host: min 1, max 2, one standby; the burst promotes it and nothing refills it
    policy = POLICY.model_copy(update={"min_replicas": 1, "max_replicas": 2})
    pool = pool_with(1, 1)
    result = scaler(pool, Metrics(0.9, 4, 12), policy).run(allow_scale_in=False)
    assert result.promoted == ["n2"] and result.started == [] and result.standby_started == []
    assert len(pool.nodes()) == 2
    pool = pool_with(2, 0)  # at max already: reconcile starts no standby either
    assert scaler(pool, Metrics(0.5, 0, 2), policy).run(allow_scale_in=False).standby_started == []


def test_scale_in_drains_the_newest_serving_nodes_after_the_cooldown() -> None:
    pool = pool_with(4, 1)  # n1-n4 serving, n5 standby
    pool.state.scaling_of("m").low_since = 900.0
    result = scaler(pool, Metrics(0.05, 0, 0)).run(allow_scale_in=True)
    assert result.decision.action is Action.IN and result.removed == ["n4", "n3"]
    assert pool.log == ["weight n4 0", "remove n4", "weight n3 0", "remove n3"]
    assert [n.name for n in pool.nodes()] == ["n1", "n2", "n5"]  # the standby stays


def test_budget_binds_and_no_standby_is_started_beyond_it() -> None:
    pool = pool_with(2, 0)
    policy = POLICY.model_copy(update={"budget_per_hour": 3.0})  # pays 3 nodes: 2 serving + 1 standby
    result = scaler(pool, Metrics(2.0, 200, 30), policy).run(allow_scale_in=False)
    assert result.decision.action is Action.HOLD and "budget" in result.decision.capped_by
    assert result.standby_started == ["n3"] and len(pool.nodes()) == 3  # the standby fits, nothing more
    again = scaler(pool, Metrics(2.0, 200, 30), policy, now=1100.0).run(allow_scale_in=False)
    assert again.started == [] and len(pool.nodes()) == 3


def test_a_node_that_fails_to_start_is_reported_and_the_pool_keeps_serving() -> None:
    pool = pool_with(2, 0)
    pool.fail_cold = True
    result = scaler(pool, Metrics(0.9, 0, 8)).run(allow_scale_in=False)
    assert result.errors and "exited while starting" in result.errors[0]
    assert len(pool.nodes()) == 2 and pool.state.scaling_of("m").last_scale_out_at is None
