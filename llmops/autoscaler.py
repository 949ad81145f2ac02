"""Act on scaling decisions: observe the pool in Prometheus, decide with `desired_replicas`, then promote warm
standby nodes, start cold ones, refill the standby, or drain and stop one node.

Like the canary, it talks to the world through small interfaces (pool, metrics, clock), so the `scale` and
`reconcile` flows run it against the real stack and the unit tests against fakes. Callers hold the pool lock
(the global concurrency limit shared with rollouts), so the pool never changes under a running canary.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from llmops.errors import LlmopsError
from llmops.metrics import MetricsSource
from llmops.parallel import side_by_side
from llmops.pool.manager import ReconcileReport
from llmops.pool.state import NodeRecord, PoolState, ScalingState
from llmops.scaling import SCALE_OUT_ALERTS, Action, Observation, PoolView, ScaleDecision, ScalePolicy, desired_replicas

Say = Callable[[str], None]
MAX_ACTIONS_KEPT = 200


class ScalablePool(Protocol):
    model: str

    def nodes(self) -> list[NodeRecord]: ...

    def reconcile(self) -> ReconcileReport: ...

    def add_node(self, version_or_alias: str, engine: str = ..., weight: int = ..., standby: bool = ...
                 ) -> NodeRecord: ...

    def set_weight(self, name: str, weight: int, standby: bool | None = ...) -> None: ...

    def remove_node(self, name: str, drain_timeout_s: float = ...) -> None: ...

    def read_state(self) -> PoolState: ...

    def update_scaling(self, fn: Callable[[ScalingState], None]) -> None: ...


def observe(metrics: MetricsSource, model: str, alerts: frozenset[str] = frozenset(),
            peak_window_s: float = 60.0) -> Observation:
    """The pool's signals from the recording rules (llmops/scaling_rules.py); None where there is no data.
    `peak_window_s` (the scale-in cool-down) is the window of the load's peak that scale-in keeps capacity for."""
    sel = f'{{model="{model}"}}'
    window = f"{max(int(round(peak_window_s)), 1)}s"
    return Observation(mean_latency_s=metrics.scalar(f"llmops:pool_latency_mean:10s{sel}"),
                       waiting=metrics.scalar(f"llmops:pool_waiting{sel}"),
                       in_flight=metrics.scalar(f"llmops:pool_in_flight{sel}"),
                       alerts=alerts | firing_alerts(metrics, model),
                       request_rate=metrics.scalar(f"llmops:pool_requests:rate10s{sel}"),
                       peak_load=metrics.scalar(f"max_over_time(llmops:pool_load{sel}[{window}])"),
                       projected_load=metrics.scalar(f"llmops:pool_load:projected{sel}"))


def firing_alerts(metrics: MetricsSource, model: str) -> frozenset[str]:
    names = set()
    for name in sorted(SCALE_OUT_ALERTS):
        if metrics.scalar(f'ALERTS{{alertname="{name}",alertstate="firing",pool="{model}"}}'):
            names.add(name)
    return frozenset(names)


@dataclass
class ScaleResult:
    decision: ScaleDecision
    reconciled: ReconcileReport
    promoted: list[str] = field(default_factory=list)  # standby -> serving
    started: list[str] = field(default_factory=list)  # cold nodes now serving
    standby_started: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    timeline: list[tuple[str, float]] = field(default_factory=list)  # (stage, wall-clock time)

    def summary(self) -> str:
        d = self.decision
        parts = [f"{d.action.value}: {d.current} -> {d.desired} serving ({'; '.join(d.reasons)})"]
        if d.capped_by:
            parts.append(f"capped by {', '.join(d.capped_by)}")
        for label, names in (("promoted standby", self.promoted), ("started", self.started),
                             ("standby started", self.standby_started), ("removed", self.removed),
                             ("errors", self.errors)):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        return "; ".join(parts)


@dataclass
class Autoscaler:
    pool: ScalablePool
    metrics: MetricsSource
    policy: ScalePolicy
    alias: str = "champion"
    engine: str = "transformers"
    say: Say = print
    clock: Callable[[], float] = time.time
    drain_timeout_s: float = 60.0

    def run(self, allow_scale_in: bool, alerts: frozenset[str] = frozenset(), trigger: str = "", run_id: str = ""
            ) -> ScaleResult:
        """Reconcile, observe, decide, act; records the decision and the action in the pool state."""
        t0 = self.clock()
        found = self.pool.reconcile()
        if found.changed:
            self.say(f"reconciled with HAProxy: {found.summary()}")
        nodes = self.pool.nodes()
        serving = [n for n in nodes if not n.standby]
        standby = [n for n in nodes if n.standby]
        scaling = self.pool.read_state().scaling_of(self.pool.model)
        view = PoolView(serving=len(serving), standby=len(standby),
                        canary_running=len({n.version for n in serving}) > 1,
                        last_scale_out_at=scaling.last_scale_out_at, low_since=scaling.low_since)
        obs = observe(self.metrics, self.pool.model, alerts, self.policy.down_cooldown_s)
        decision = desired_replicas(obs, view, self.policy, t0, allow_scale_in=allow_scale_in)
        result = ScaleResult(decision, found, timeline=[("decision", self.clock())])
        self.say(f"decision: {decision.action.value} {decision.current} -> {decision.desired} "
                 f"({'; '.join(decision.reasons)})" + (f" [capped: {', '.join(decision.capped_by)}]"
                                                       if decision.capped_by else ""))
        try:
            cold = 0
            if decision.action is Action.OUT:
                cold = decision.delta - self._promote(decision.delta, standby, result)
            elif decision.action is Action.IN:
                self._scale_in(serving, decision.current - decision.desired, result)
            nodes_now = self.pool.nodes()
            missing = self.policy.warm_standby - sum(1 for n in nodes_now if n.standby)
            # a standby that max_replicas would never let us promote is only cost (and, on a GPU host, a GPU)
            promotable = self.policy.max_replicas - sum(1 for n in nodes_now if not n.standby) - cold
            refill = max(0, min(missing, self.policy.affordable_nodes - len(nodes_now) - cold, promotable))
            # cold nodes and the standby refill start side by side: the run (which holds the pool lock) waits
            # for one cold start, not two in a row
            self._start_nodes(cold, refill, result)
        except LlmopsError as err:  # a node that would not start: the pool stays as it is, reconcile retries
            result.errors.append(f"{err.problem}")
            self.say(f"scaling action failed: {err.problem}")
        result.seconds = self.clock() - t0

        def record(s: ScalingState) -> None:
            if decision.action is Action.OUT and (result.promoted or result.started):
                s.last_scale_out_at = t0
            s.low_since = decision.low_since
            s.last_decision = {"at": t0, "action": decision.action.value, "desired": decision.desired,
                               "current": decision.current, "reasons": list(decision.reasons),
                               "capped_by": list(decision.capped_by), "trigger": trigger, "run_id": run_id}
            if decision.action is not Action.HOLD or result.standby_started or found.changed or decision.capped_by:
                s.actions.append({**s.last_decision, "promoted": result.promoted, "started": result.started,
                                  "standby_started": result.standby_started, "removed": result.removed,
                                  "reconciled": found.summary(), "seconds": round(result.seconds, 2),
                                  "errors": result.errors,
                                  "timeline": [[stage, round(at, 3)] for stage, at in result.timeline]})
                del s.actions[:-MAX_ACTIONS_KEPT]

        self.pool.update_scaling(record)
        return result

    def _promote(self, n: int, standby: list[NodeRecord], result: ScaleResult) -> int:
        """Warm standby nodes first: in rotation at once. Returns how many were promoted."""
        for node in standby[:n]:
            self.pool.set_weight(node.name, 100, standby=False)
            result.promoted.append(node.name)
            result.timeline.append((f"{node.name} promoted, in rotation", self.clock()))
            self.say(f"promoted standby {node.name} (v{node.version}) to serving")
        return len(result.promoted)

    def _start_nodes(self, serving: int, standby: int, result: ScaleResult) -> None:
        """Start `serving` cold nodes of the champion (preloaded cache) into rotation and `standby` warm standby
        nodes at weight 0, all side by side; the first failure is raised after the others finished."""
        if serving + standby <= 0:
            return
        kinds = [False] * serving + [True] * standby
        results = side_by_side([functools.partial(self.pool.add_node, self.alias, engine=self.engine,
                                                  weight=0 if s else 100, standby=s) for s in kinds])
        failures = []
        for node, is_standby in zip(results, kinds, strict=True):
            if isinstance(node, LlmopsError):
                failures.append(node)
                continue
            if isinstance(node, BaseException):
                raise node
            if is_standby:
                result.standby_started.append(node.name)
                self.say(f"warm standby {node.name} (v{node.version}) ready at weight 0")
            else:
                result.started.append(node.name)
                result.timeline.append((f"{node.name} started cold, in rotation", self.clock()))
                self.say(f"started {node.name} (v{node.version}) and put it in rotation")
        if failures:
            raise failures[0]

    def _scale_in(self, serving: list[NodeRecord], n: int, result: ScaleResult) -> None:
        newest_first = sorted(serving, key=lambda x: x.started_at or 0.0, reverse=True)
        for node in newest_first[:n]:
            self.pool.set_weight(node.name, 0)  # no new requests; remove_node waits for zero in flight
            self.pool.remove_node(node.name, drain_timeout_s=self.drain_timeout_s)
            result.removed.append(node.name)
            self.say(f"drained and stopped {node.name}")
