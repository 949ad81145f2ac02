"""The canary orchestration against fakes: promote, roll back on a slow or garbage canary, on a canary that
fails its serving test, and on no traffic; the champion alias moves only on success."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest

from llmops.canary import CanaryRollout
from llmops.errors import RegistryError, ServiceError
from llmops.pool.state import NodeRecord, NodeStatus
from llmops.probe import ProbeResult
from llmops.registry import ModelVersionRef
from llmops.rollout import CanaryPolicy


@dataclass
class FakePool:
    model: str = "m"
    nodes_: dict[str, NodeRecord] = field(default_factory=dict)
    fail_start: bool = False
    n: int = 0
    reconciles: int = 0
    die_at_reconcile: dict[int, str] = field(default_factory=dict)  # reconcile number -> node whose process died
    lock: threading.Lock = field(default_factory=threading.Lock)  # the rollout starts replacements side by side

    def nodes(self) -> list[NodeRecord]:
        return list(self.nodes_.values())

    def reconcile(self) -> None:
        self.reconciles += 1
        dead = self.die_at_reconcile.get(self.reconciles)
        if dead:
            self.nodes_.pop(dead, None)

    def add_node(self, version_or_alias: str, engine: str = "transformers", weight: int = 100,
                 standby: bool = False) -> NodeRecord:
        if self.fail_start:
            raise ServiceError("node n9 exited while starting", "read the log")
        with self.lock:
            self.n += 1
            node = NodeRecord(name=f"n{self.n}", model=self.model, engine=engine, version=version_or_alias,
                              sha256="x", host="h", port=self.n, weight=weight, status=NodeStatus.SERVING,
                              standby=standby)
            self.nodes_[node.name] = node
        return node

    def set_weight(self, name: str, weight: int) -> None:
        self.nodes_[name] = self.nodes_[name].model_copy(update={"weight": weight})

    def remove_node(self, name: str, drain_timeout_s: float = 60) -> None:
        del self.nodes_[name]


@dataclass
class FakeRegistry:
    aliases: dict[str, str] = field(default_factory=lambda: {"champion": "1", "challenger": "2"})
    tags: dict[tuple[str, str], str] = field(default_factory=dict)

    def resolve(self, name: str, v: str) -> ModelVersionRef:
        version = self.aliases.get(v, v)
        if version not in ("1", "2"):
            raise RegistryError(f"model {name!r} has no version or alias {v!r}", "")
        return ModelVersionRef(name, version, "src", "sha")

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases[alias] = version

    def tag_version(self, name: str, version: str, key: str, value: str) -> None:
        self.tags[(version, key)] = value


class FakeMetrics:
    """Requests grow with time for both versions; canary p95 and errors as scripted."""

    def __init__(self, clock: list[float], canary_p95: float = 0.5, canary_err_ratio: float = 0.0,
                 rps: float = 5.0) -> None:
        self.clock, self.canary_p95, self.err, self.rps = clock, canary_p95, canary_err_ratio, rps

    def scalar(self, expr: str) -> float | None:
        canary = 'version="2"' in expr
        if "histogram_quantile" in expr:
            return self.canary_p95 if canary else 0.5
        requests = self.rps * min(self.clock[0], 30)
        if 'status=~"5.."' in expr:
            return requests * self.err if canary else 0.0
        return requests


def rollout(metrics_kw: dict[str, float] | None = None, quality: float = 0.9, fail_start: bool = False
            ) -> tuple[CanaryRollout, FakePool, FakeRegistry]:
    clock = [0.0]
    pool = FakePool(fail_start=False)
    pool.add_node("1")
    pool.fail_start = fail_start
    reg = FakeRegistry()

    def sleep(s: float) -> None:
        clock[0] += s

    r = CanaryRollout(pool, reg, FakeMetrics(clock, **(metrics_kw or {})),
                      probe=lambda node: ProbeResult(quality, quality, quality, 0, ()),
                      policy=CanaryPolicy(min_requests=10, max_wait_s=60), poll_s=2.0, say=lambda _: None,
                      clock=lambda: clock[0], sleep=sleep)
    return r, pool, reg


def test_good_canary_is_promoted_and_the_pool_converges() -> None:
    r, pool, reg = rollout()
    report = r.run("challenger")
    assert report.promoted and [s.share for s in report.steps] == [10, 50, 100]
    assert reg.aliases["champion"] == "2" and reg.tags[("2", "rollout")] == "promoted"
    assert reg.tags[("2", "previous_champion")] == "1"  # what `llmops rollback` rolls out again
    assert {n.version for n in pool.nodes()} == {"2"} and len(pool.nodes()) == 1
    assert report.timeline and report.timeline[-1].share == 100


def test_a_warm_standby_takes_no_canary_traffic_and_is_renewed_on_promotion() -> None:
    r, pool, reg = rollout()
    pool.add_node("1")
    standby = pool.add_node("1", weight=0, standby=True)
    weights: list[int] = []
    set_weight = pool.set_weight
    pool.set_weight = lambda name, w: (weights.append(w) if name == standby.name else None,  # type: ignore
                                       set_weight(name, w))[1]
    report = r.run("challenger")
    assert report.promoted and weights == []  # the standby never got a share of the canary's traffic
    nodes = pool.nodes()
    assert {n.version for n in nodes} == {"2"} and standby.name not in {n.name for n in nodes}
    assert sorted(n.standby for n in nodes) == [False, False, True]  # two serving (canary + one), one standby
    assert [n.weight for n in nodes if n.standby] == [0]


@pytest.mark.parametrize(("kw", "quality", "reason"), [
    ({"canary_p95": 5.0}, 0.9, "p95"),
    ({"canary_err_ratio": 0.2}, 0.9, "error ratio"),
    ({}, 0.1, "quality"),
    ({"rps": 0.0}, 0.9, "not enough data"),
], ids=["slow", "erroring", "garbage", "no-traffic"])
def test_bad_canary_is_rolled_back(kw: dict[str, float], quality: float, reason: str) -> None:
    r, pool, reg = rollout(kw, quality)
    report = r.run("challenger")
    assert not report.promoted and reason in report.reason
    assert reg.aliases["champion"] == "1"
    assert reg.tags[("2", "rollout")] == "rolled_back" and reason in reg.tags[("2", "rollout_reason")]
    assert ("2", "previous_champion") not in reg.tags
    assert [(n.version, n.weight) for n in pool.nodes()] == [("1", 100)]


def test_canary_failing_its_serving_test_never_gets_traffic() -> None:
    r, pool, reg = rollout(fail_start=True)
    report = r.run("challenger")
    assert not report.promoted and "serving test" in report.reason and report.steps == []
    assert [(n.version, n.weight) for n in pool.nodes()] == [("1", 100)] and reg.aliases["champion"] == "1"


def test_unknown_version_starts_nothing() -> None:
    r, pool, _ = rollout()
    with pytest.raises(RegistryError):
        r.run("no-such")
    assert len(pool.nodes()) == 1


def test_every_step_reconciles_first_and_a_canary_that_dies_is_rolled_back() -> None:
    r, pool, reg = rollout()
    pool.die_at_reconcile = {3: "n2"}  # 1: start of the rollout, 2: before 10%, 3: before 50%
    report = r.run("challenger")
    assert not report.promoted and "canary node n2 died before the 50% step" in report.reason
    assert [s.share for s in report.steps] == [10] and pool.reconciles == 3
    assert reg.aliases["champion"] == "1" and reg.tags[("2", "rollout")] == "rolled_back"
    assert [(n.version, n.weight) for n in pool.nodes()] == [("1", 100)]


def test_all_champion_nodes_dying_rolls_back_instead_of_judging_against_nothing() -> None:
    r, pool, reg = rollout()
    pool.die_at_reconcile = {2: "n1"}
    report = r.run("challenger")
    assert not report.promoted and "no champion node left" in report.reason and reg.aliases["champion"] == "1"


def test_a_garbage_version_is_rolled_back_before_any_user_traffic() -> None:
    r, pool, reg = rollout(quality=0.1)
    report = r.run("challenger")
    assert not report.promoted and report.steps == [] and "before traffic" in report.reason
    assert reg.aliases["champion"] == "1" and [(n.version, n.weight) for n in pool.nodes()] == [("1", 100)]


class LoggingPool(FakePool):
    """Records (event, node, live nodes after it) for every start, weight change and removal."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str, int]] = []

    def add_node(self, version_or_alias: str, engine: str = "transformers", weight: int = 100,
                 standby: bool = False) -> NodeRecord:
        node = super().add_node(version_or_alias, engine, weight, standby)
        self.log.append((f"add v{version_or_alias} w{weight}{' standby' if standby else ''}", node.name,
                         len(self.nodes_)))
        return node

    def set_weight(self, name: str, weight: int) -> None:
        super().set_weight(name, weight)
        self.log.append((f"weight {weight}", name, len(self.nodes_)))

    def remove_node(self, name: str, drain_timeout_s: float = 60) -> None:
        super().remove_node(name)
        self.log.append(("remove", name, len(self.nodes_)))


class LastStepMetrics(FakeMetrics):
    """The canary's p95 turns bad at the last step (it has all the traffic: the champion's nodes are at 0)."""

    def __init__(self, clock: list[float], pool: FakePool) -> None:
        super().__init__(clock)
        self.pool = pool

    def scalar(self, expr: str) -> float | None:
        nodes = self.pool.nodes()
        if "histogram_quantile" in expr and 'version="2"' in expr and any(
                n.version == "2" and n.weight == 256 for n in nodes) and not any(
                n.version == "1" and n.weight > 0 for n in nodes):
            return 9.0
        return super().scalar(expr)


def surge_rollout(max_nodes: int, fail_last_step: bool = False) -> tuple[CanaryRollout, LoggingPool, FakeRegistry]:
    clock, pool, reg = [0.0], LoggingPool(), FakeRegistry()
    pool.add_node("1"), pool.add_node("1"), pool.add_node("1", weight=0, standby=True)
    pool.log.clear()

    def sleep(s: float) -> None:
        clock[0] += s

    metrics = LastStepMetrics(clock, pool) if fail_last_step else FakeMetrics(clock)
    r = CanaryRollout(pool, reg, metrics, probe=lambda node: ProbeResult(0.9, 0.9, 0.9, 0, ()),
                      policy=CanaryPolicy(min_requests=10, max_wait_s=60), poll_s=2.0, say=lambda _: None,
                      clock=lambda: clock[0], sleep=sleep, max_nodes=max_nodes)
    return r, pool, reg


def test_replacements_start_with_the_canary_and_serve_before_the_baseline_leaves() -> None:
    """A rolling update's surge: 2 serving + 1 standby of v1, max 5 nodes. The old standby goes first (nothing can
    promote it while the rollout holds the pool); one serving and one standby node of v2 start beside the canary and
    are up before the first step is judged; at the promotion the serving one takes traffic, then the baseline
    drains: never only the canary in rotation, never more than 5 nodes."""
    r, pool, reg = surge_rollout(max_nodes=5)
    report = r.run("challenger")
    assert report.promoted and reg.aliases["champion"] == "2"
    assert max(n for _, _, n in pool.log) <= 5
    events = [(e, name) for e, name, _ in pool.log]
    assert ("remove", "n3") in events  # the old standby
    first_step = next(i for i, (e, _) in enumerate(events) if e.startswith("weight"))
    canary = events[first_step][1]  # the first weight the 10% step sets is the canary's
    surge = [name for e, name in events if e == "add v2 w0" and name != canary]
    assert len(surge) == 1 and [e for e, _ in events].count("add v2 w0 standby") == 1, events
    adds = [i for i, (e, _) in enumerate(events) if e.startswith("add")]
    assert events.index(("remove", "n3")) < min(adds) and max(adds) < first_step, events
    into_rotation = events.index(("weight 100", surge[0]))
    assert events.index(("weight 100", canary)) < into_rotation  # the canary leaves its 256 of the last step
    first_baseline_gone = next(i for i, (e, name) in enumerate(events) if e == "remove" and name in ("n1", "n2"))
    assert into_rotation < first_baseline_gone, events
    assert not [e for e in events[first_baseline_gone:] if e[0].startswith("add")], events  # nothing left to start
    nodes = pool.nodes()
    assert {n.version for n in nodes} == {"2"} and sorted((n.standby, n.weight) for n in nodes) == \
        [(False, 100), (False, 100), (True, 0)]


def test_without_room_the_replacements_start_after_the_promotion() -> None:
    r, pool, reg = surge_rollout(max_nodes=4)  # baseline 2 + canary 1 + standby 1: room for no standby and ...
    report = r.run("challenger")
    assert report.promoted and max(n for _, _, n in pool.log) <= 4
    nodes = pool.nodes()
    assert {n.version for n in nodes} == {"2"} and sorted((n.standby, n.weight) for n in nodes) == \
        [(False, 100), (False, 100), (True, 0)]


def test_a_failed_last_step_removes_the_replacements_and_brings_the_champions_standby_back() -> None:
    r, pool, reg = surge_rollout(max_nodes=5, fail_last_step=True)
    report = r.run("challenger")
    assert not report.promoted and "step 100%" in report.reason and reg.aliases["champion"] == "1"
    nodes = pool.nodes()
    assert {n.version for n in nodes} == {"1"} and sorted((n.standby, n.weight) for n in nodes) == \
        [(False, 100), (False, 100), (True, 0)]  # the standby is back at weight 0, not put in rotation
