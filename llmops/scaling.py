"""Scaling decisions (pure): how many nodes a pool should serve with, given what Prometheus observes.

`desired_replicas(observation, pool, policy, now)` is called by the `scale` flow (on an alert, scale-out only)
and by the `reconcile` flow (on a schedule, both directions). It never touches the world; the flows act on
its `ScaleDecision`, and `bench/scale_sim.py` drives the very same function in a simulation.

Rules, in order:
- the floor: fewer serving nodes than `min_replicas` is repaired at once, whatever the metrics say;
- demand: the nodes needed to bring the concurrency per node ((in flight + waiting) / nodes) under its target;
  latency over its threshold, a queue over `backlog` or a firing `HighLatency` / `Backlog` / `Saturated` / `Rising`
  alert asks for at least one node more (latency is proportional only when the concurrency signals are missing);
  while `Rising` fires, the load projected `scale_ahead_s` ahead counts as demand too (a cold node ordered now
  serves about then);
- caps: at most `max_step` nodes per action, never above `max_replicas`, and never more nodes (serving + warm
  standby) than the hourly budget pays for; each cap that binds is named in the decision;
- scale-out is held inside `up_cooldown_s` of the last one, so an alert storm yields one action;
- scale-in only where allowed (the reconcile flow), never on missing or NaN metrics, never while a canary holds
  the pool, and only after load stayed low for `down_cooldown_s`; at most `max_step` nodes per action, never
  below what the load needs nor below the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from pydantic import Field, model_validator

from llmops.config import StrictModel

SCALE_OUT_ALERTS = frozenset({"HighLatency", "Backlog", "Saturated", "Rising"})


class ScalePolicy(StrictModel):
    """How one pool scales (configs/scaling/*.yaml). Defaults are for the CPU stack; see the GPU config."""

    min_replicas: int = Field(2, ge=1)
    max_replicas: int = Field(4, ge=1)
    warm_standby: int = Field(1, ge=0)  # started, health-checked, weight 0: promoted first on scale-out
    high_latency_s: float = Field(0.2, gt=0)  # mean request latency threshold (alert HighLatency)
    backlog: float = Field(50, gt=0)  # waiting requests threshold (alert Backlog)
    target_in_flight_per_node: float = Field(4.0, gt=0)  # concurrency one node serves within its latency goal
    scale_in_utilisation: float = Field(0.3, gt=0, lt=1)  # load / capacity below this counts as low
    up_cooldown_s: float = Field(20.0, ge=0)
    down_cooldown_s: float = Field(60.0, ge=0)
    max_step: int = Field(2, ge=1)  # nodes added per action
    node_price_per_hour: float = Field(1.0, ge=0)
    budget_per_hour: float = Field(10.0, ge=0)  # what the pool may cost per hour (serving + standby nodes)
    alert_for_s: float = Field(4.0, ge=0)  # Prometheus `for:` of the scale-out alerts
    # how far ahead the Rising alert projects the load's trend: about the time from an alert to a cold node serving
    # (0: no Rising alert, scale on the load as it is)
    scale_ahead_s: float = Field(20.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> ScalePolicy:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        if self.node_price_per_hour > 0 and self.affordable_nodes < self.min_replicas:
            raise ValueError(f"budget_per_hour {self.budget_per_hour} pays for {self.affordable_nodes} node(s) at "
                             f"{self.node_price_per_hour}/h, fewer than min_replicas {self.min_replicas}: "
                             "raise the budget or lower min_replicas")
        return self

    @property
    def serving_cap(self) -> int:
        """Serving nodes the pool may have: max_replicas, and what the budget pays after the standby; never below
        min_replicas (the floor holds even if the budget cannot pay the standby on top of it)."""
        budget_cap = max(self.affordable_nodes - self.warm_standby, 0)  # standby nodes cost money too
        return min(self.max_replicas, budget_cap) if budget_cap >= self.min_replicas else self.min_replicas

    @property
    def node_cap(self) -> int:
        """Nodes of every kind (serving, standby, a canary and its replacements) the pool may run at once:
        max_replicas plus the standby, and never more than the budget pays."""
        return min(self.max_replicas + self.warm_standby, self.affordable_nodes)

    @property
    def affordable_nodes(self) -> int:
        """Nodes (serving + standby) the hourly budget pays for."""
        if self.node_price_per_hour <= 0:
            return 1_000_000
        return int(math.floor(self.budget_per_hour / self.node_price_per_hour + 1e-9))


@dataclass(frozen=True)
class Observation:
    """What Prometheus says about the pool now; None where it has no data (never read as zero)."""

    mean_latency_s: float | None
    waiting: float | None  # requests queued at the gateway (+ engines' own queues)
    in_flight: float | None  # requests being served, summed over the pool
    alerts: frozenset[str] = frozenset()  # names of the alerts firing for this pool
    request_rate: float | None = None  # requests/s; a known 0 explains an undefined mean latency (idle pool)
    # the highest in flight + waiting over the last `down_cooldown_s` (Prometheus max_over_time): scale-in keeps
    # the nodes that peak needed (a stabilisation window, as Kubernetes' HPA does), not what a lull needs
    peak_load: float | None = None
    # the load's 10 s mean extrapolated `scale_ahead_s` along its trend; read only while `Rising` fires
    projected_load: float | None = None

    @property
    def idle(self) -> bool:
        """Known to serve nothing: zero requests per second (so no latency to measure) and nothing in flight."""
        return self.request_rate == 0 and _finite(self.in_flight) == 0 and _finite(self.waiting) == 0

    @property
    def complete(self) -> bool:
        """Every signal is known. An idle pool's latency is undefined, not missing."""
        known = all(_finite(v) is not None for v in (self.waiting, self.in_flight))
        return known and (_finite(self.mean_latency_s) is not None or self.idle)


@dataclass(frozen=True)
class PoolView:
    """The pool as the decision needs it."""

    serving: int  # in rotation with weight > 0
    standby: int = 0  # warm, weight 0
    canary_running: bool = False
    last_scale_out_at: float | None = None
    low_since: float | None = None  # since when load has been low without a break (None: it is not)


class Action(str, Enum):
    OUT = "scale_out"
    IN = "scale_in"
    HOLD = "hold"


@dataclass(frozen=True)
class ScaleDecision:
    action: Action
    desired: int  # serving nodes wanted after the action
    current: int
    reasons: tuple[str, ...]
    capped_by: tuple[str, ...] = ()  # "max_step", "max_replicas", "budget", "cooldown"
    low_since: float | None = None  # to persist for the next call
    wanted: int = 0  # demand before caps (for reports)

    @property
    def delta(self) -> int:
        return self.desired - self.current


def _finite(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else v


def demand(obs: Observation, serving: int, policy: ScalePolicy) -> tuple[int, list[str]]:
    """Serving nodes the observed load needs (before caps), with the reasons.

    Concurrency is the primary signal: (in flight + waiting) / target per node, which counts the queue once.
    Latency is a lagging signal that also includes time spent queueing, so scaling in proportion to it
    over-shoots after a burst; high latency (or a firing alert) without a concurrency excess asks for one more
    node (an engine slower than its target), and proportional latency is used only when the concurrency
    signals are missing."""
    n = max(serving, 1)
    wants: list[tuple[int, str]] = []
    lat, waiting, inflight = _finite(obs.mean_latency_s), _finite(obs.waiting), _finite(obs.in_flight)
    slow = lat is not None and lat > policy.high_latency_s
    backlog = waiting is not None and waiting > policy.backlog
    if inflight is not None or waiting is not None:
        load = (inflight or 0.0) + (waiting or 0.0)
        need = math.ceil(load / policy.target_in_flight_per_node - 1e-9)
        if need > n:
            wants.append((need, f"{load:.0f} requests in flight or waiting need {need} nodes at "
                                f"{policy.target_in_flight_per_node:g} per node"))
    elif slow and lat is not None:
        wants.append((math.ceil(n * lat / policy.high_latency_s), f"mean latency {lat * 1000:.0f} ms > "
                      f"{policy.high_latency_s * 1000:.0f} ms (no concurrency data)"))
    projected = _finite(obs.projected_load)
    if "Rising" in obs.alerts and projected is not None:
        need = math.ceil(projected / policy.target_in_flight_per_node - 1e-9)
        if need > n:
            wants.append((need, f"load rising: {projected:.1f} in flight or waiting in {policy.scale_ahead_s:g} s "
                                f"needs {need} nodes"))
    if slow and lat is not None:
        wants.append((n + 1, f"mean latency {lat * 1000:.0f} ms > {policy.high_latency_s * 1000:.0f} ms"))
    if backlog and waiting is not None:
        wants.append((n + 1, f"{waiting:.0f} waiting > {policy.backlog:.0f}"))
    firing = sorted(obs.alerts & SCALE_OUT_ALERTS)
    if firing:
        wants.append((n + 1, f"alert {', '.join(firing)} firing"))
    if not wants:
        return serving, []
    best = max(w for w, _ in wants)
    return best, [r for _, r in wants]


def _is_low(obs: Observation, serving: int, policy: ScalePolicy) -> bool:
    if not obs.complete or obs.alerts & SCALE_OUT_ALERTS:
        return False
    if obs.idle:
        return True
    assert obs.mean_latency_s is not None and obs.in_flight is not None and obs.waiting is not None
    capacity = max(serving, 1) * policy.target_in_flight_per_node
    return (obs.waiting == 0 and obs.mean_latency_s <= policy.high_latency_s
            and (obs.in_flight / capacity) < policy.scale_in_utilisation)


def _window_low(obs: Observation, serving: int, policy: ScalePolicy) -> bool:
    """The peak load over the last `down_cooldown_s` was itself under the scale-in utilisation."""
    peak = _finite(obs.peak_load)
    return peak is not None and peak / (max(serving, 1) * policy.target_in_flight_per_node) < \
        policy.scale_in_utilisation


def desired_replicas(obs: Observation, pool: PoolView, policy: ScalePolicy, now: float,
                     allow_scale_in: bool = False) -> ScaleDecision:
    """Decide the pool's serving size now. Pure: same inputs, same decision."""
    cur = pool.serving
    low = _is_low(obs, cur, policy)
    low_since = (pool.low_since if pool.low_since is not None else now) if low else None
    out_in_window = pool.last_scale_out_at is not None and now - pool.last_scale_out_at < policy.down_cooldown_s
    if low_since is not None and not out_in_window and _window_low(obs, cur, policy):
        # Prometheus saw the whole cool-down window low (its peak in flight + waiting under the scale-in line): the
        # cool-down has been served even if no earlier pass was there to see it start (a run the LowUtilisation
        # alert triggered, or the first scheduled one after a quiet minute). Not when the pool scaled out inside
        # the window: that scale-out (say for latency, at low load) was decided on what the window cannot show
        low_since = min(low_since, now - policy.down_cooldown_s)
    hard_cap = policy.serving_cap
    want, reasons = demand(obs, cur, policy)
    if cur < policy.min_replicas:
        want, reasons = max(want, policy.min_replicas), [f"{cur} serving < min {policy.min_replicas}", *reasons]
    capped: list[str] = []

    if want > cur:
        target = want
        below_min = cur < policy.min_replicas
        if not below_min and pool.last_scale_out_at is not None and now - pool.last_scale_out_at < policy.up_cooldown_s:
            left = policy.up_cooldown_s - (now - pool.last_scale_out_at)
            return ScaleDecision(Action.HOLD, cur, cur, (*reasons, f"scale-out cool-down: {left:.0f} s left"),
                                 ("cooldown",), low_since, want)
        for limit, name in ((cur + policy.max_step if not below_min else target, "max_step"),
                            (policy.max_replicas, "max_replicas"), (hard_cap, "budget")):
            if target > limit:
                target = limit
                capped.append(name)
        if target <= cur:
            why = (f"at the cap ({', '.join(capped)}): {cur} serving, max {policy.max_replicas}, budget pays "
                   f"{policy.affordable_nodes} node(s) incl. {policy.warm_standby} standby")
            return ScaleDecision(Action.HOLD, cur, cur, (*reasons, why), tuple(capped), low_since, want)
        return ScaleDecision(Action.OUT, target, cur, tuple(reasons), tuple(capped), None, want)

    if cur > hard_cap:  # budget or max lowered under a running pool: shed down to it (after draining)
        return ScaleDecision(Action.IN if allow_scale_in else Action.HOLD, hard_cap if allow_scale_in else cur, cur,
                             (f"{cur} serving > cap {hard_cap} (max_replicas / budget)",), ("budget",), low_since,
                             want)
    if not allow_scale_in:
        return ScaleDecision(Action.HOLD, cur, cur, ("no scale-out needed; scale-in is reconcile's",), (),
                             low_since, want)
    if not obs.complete:
        return ScaleDecision(Action.HOLD, cur, cur, ("metrics missing or NaN: never scale in on no data",), (),
                             None, want)
    if not low or cur <= policy.min_replicas:
        why = "at min replicas" if cur <= policy.min_replicas else "load not low"
        return ScaleDecision(Action.HOLD, cur, cur, (why,), (), low_since, want)
    if pool.canary_running:
        return ScaleDecision(Action.HOLD, cur, cur, ("a canary rollout holds the pool",), (), low_since, want)
    assert low_since is not None
    if now - low_since < policy.down_cooldown_s:
        left = policy.down_cooldown_s - (now - low_since)
        return ScaleDecision(Action.HOLD, cur, cur, (f"load low; scale-in cool-down: {left:.0f} s left",), (),
                             low_since, want)
    load = (obs.in_flight or 0.0) + (obs.waiting or 0.0)
    peak = max(load, _finite(obs.peak_load) or 0.0)
    needed = math.ceil(peak / policy.target_in_flight_per_node - 1e-9)
    target = max(policy.min_replicas, needed, cur - policy.max_step)
    if target >= cur:
        return ScaleDecision(Action.HOLD, cur, cur, (f"load low now, but its peak over the last "
                                                     f"{policy.down_cooldown_s:.0f} s ({peak:.0f}) needs {needed}",),
                             (), low_since, want)
    return ScaleDecision(Action.IN, target, cur, (f"load low for {now - low_since:.0f} s ({load:.0f} in flight "
                                                  f"or waiting, peak {peak:.0f})",), (), now, want)
