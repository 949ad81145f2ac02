"""desired_replicas, table-driven: burst, no data, flapping, alert storm, budget and max binding, scale-in
blocked by a canary, the floor, cool-downs."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from llmops.scaling import Action, Observation, PoolView, ScalePolicy, desired_replicas

P = ScalePolicy(min_replicas=2, max_replicas=6, warm_standby=1, high_latency_s=0.2, backlog=50,
                target_in_flight_per_node=4, up_cooldown_s=20, down_cooldown_s=60, max_step=2,
                node_price_per_hour=1.0, budget_per_hour=10.0)
CALM = Observation(mean_latency_s=0.05, waiting=0, in_flight=1)
NOW = 1000.0


def obs(lat: float | None = 0.05, waiting: float | None = 0, inflight: float | None = 1, *alerts: str) -> Observation:
    return Observation(lat, waiting, inflight, frozenset(alerts))


@pytest.mark.parametrize(("name", "o", "pool", "policy", "scale_in", "action", "desired", "capped"), [
    ("calm pool holds", CALM, PoolView(2), P, True, Action.HOLD, 2, ()),
    ("burst: concurrency 3x the target", obs(0.6, 10, 14), PoolView(2), P, False, Action.OUT, 4, ("max_step",)),
    ("burst: backlog", obs(0.1, 120, 8), PoolView(2), P, False, Action.OUT, 4, ("max_step",)),
    ("slow engine, no queue: one more", obs(0.6, 0, 8), PoolView(2), P, False, Action.OUT, 3, ()),
    ("latency without concurrency data: proportional", obs(0.6, None, None), PoolView(2), P, False, Action.OUT, 4,
     ("max_step",)),
    ("alert alone asks for one more", obs(0.1, 0, 2, "HighLatency"), PoolView(3), P, False, Action.OUT, 4, ()),
    ("rising: the load projected scale_ahead_s ahead sizes the scale-out",
     Observation(0.1, 0, 6, frozenset({"Rising"}), projected_load=15.0), PoolView(2), P, False, Action.OUT, 4, ()),
    ("a projection is read only while Rising fires", Observation(0.1, 0, 6, projected_load=15.0), PoolView(2), P,
     False, Action.HOLD, 2, ()),
    ("concurrency over target", obs(0.15, 0, 14), PoolView(2), P, False, Action.OUT, 4, ()),
    ("max binding", obs(2.0, 300, 40), PoolView(5), P, False, Action.OUT, 6, ("max_step", "max_replicas")),
    ("at max: hold, named", obs(2.0, 300, 40), PoolView(6), P, False, Action.HOLD, 6,
     ("max_step", "max_replicas")),
    ("budget binding (5 nodes + 1 standby = 6/h)",
     obs(2.0, 0, 40), PoolView(4), P.model_copy(update={"budget_per_hour": 6.0}), False, Action.OUT, 5,
     ("max_step", "budget")),
    ("no data never scales in", obs(None, None, None), PoolView(4, low_since=0.0), P, True, Action.HOLD, 4, ()),
    ("idle pool (no requests, latency undefined) scales in",
     Observation(None, 0, 0, request_rate=0.0), PoolView(4, low_since=NOW - 61), P, True, Action.IN, 2, ()),
    ("unknown request rate keeps an undefined latency missing",
     Observation(None, 0, 0, request_rate=None), PoolView(4, low_since=0.0), P, True, Action.HOLD, 4, ()),
    ("NaN never scales in", obs(math.nan, 0, 0), PoolView(4, low_since=0.0), P, True, Action.HOLD, 4, ()),
    ("no data still repairs the floor", obs(None, None, None), PoolView(1), P, True, Action.OUT, 2, ()),
    ("scale-in blocked by a canary", CALM, PoolView(4, canary_running=True, low_since=0.0), P, True,
     Action.HOLD, 4, ()),
    ("scale-in after the cool-down, max_step nodes", CALM, PoolView(5, low_since=NOW - 61), P, True, Action.IN, 3,
     ()),
    ("scale-in keeps what the window's peak load needed (5 nodes)",
     Observation(0.05, 0, 1, peak_load=18.0), PoolView(6, low_since=NOW - 61), P, True, Action.IN, 5, ()),
    ("scale-in held when the window's peak needed every node",
     Observation(0.05, 0, 1, peak_load=30.0), PoolView(5, low_since=NOW - 61), P, True, Action.HOLD, 5, ()),
    ("a NaN peak is no peak", Observation(0.05, 0, 1, peak_load=math.nan), PoolView(5, low_since=NOW - 61), P, True,
     Action.IN, 3, ()),
    ("scale-in stops at the floor", CALM, PoolView(3, low_since=NOW - 61), P, True, Action.IN, 2, ()),
    ("scale-in waits for the cool-down", CALM, PoolView(4, low_since=NOW - 30), P, True, Action.HOLD, 4, ()),
    ("scale flow never scales in", CALM, PoolView(4, low_since=0.0), P, False, Action.HOLD, 4, ()),
    ("never below min", CALM, PoolView(2, low_since=0.0), P, True, Action.HOLD, 2, ()),
    ("moderate load is not low", obs(0.1, 0, 6), PoolView(4, low_since=0.0), P, True, Action.HOLD, 4, ()),
    ("cool-down holds a second scale-out", obs(0.6, 10, 30), PoolView(4, last_scale_out_at=NOW - 5), P, False,
     Action.HOLD, 4, ("cooldown",)),
    ("after the cool-down it scales again", obs(0.6, 10, 30), PoolView(4, last_scale_out_at=NOW - 25), P, False,
     Action.OUT, 6, ("max_step",)),
])
def test_desired_replicas(name: str, o: Observation, pool: PoolView, policy: ScalePolicy, scale_in: bool,
                          action: Action, desired: int, capped: tuple[str, ...]) -> None:
    d = desired_replicas(o, pool, policy, NOW, allow_scale_in=scale_in)
    assert (d.action, d.desired, d.capped_by) == (action, desired, capped), (name, d)
    assert d.reasons, "every decision says why"


def test_alert_storm_yields_one_action_and_never_passes_max_or_budget() -> None:
    """50 alerts in 10 s: the first scales out, the rest fall in the cool-down; caps hold throughout."""
    policy = P.model_copy(update={"budget_per_hour": 5.0})  # pays 5 nodes: 4 serving + 1 standby
    pool, actions, t = PoolView(2), 0, NOW
    for i in range(50):
        t = NOW + i * 0.2
        d = desired_replicas(obs(3.0, 500, 60, "HighLatency", "Backlog"), pool, policy, t)
        if d.action is Action.OUT:
            actions += 1
            pool = PoolView(d.desired, last_scale_out_at=t)
        assert pool.serving <= min(policy.max_replicas, policy.affordable_nodes - policy.warm_standby)
    assert actions == 1 and pool.serving == 4


def test_flapping_load_never_scales_in() -> None:
    """Load that dips below the threshold and comes back within the cool-down resets the low timer."""
    pool, t = PoolView(4), NOW
    for i in range(40):
        t = NOW + i * 10
        o = CALM if i % 4 else obs(0.3, 10, 12)  # busy every 40 s, calm in between (30 s < 60 s cool-down)
        d = desired_replicas(o, pool, P.model_copy(update={"max_replicas": 4}), t, allow_scale_in=True)
        assert d.action is not Action.IN, (i, d)
        pool = PoolView(4, low_since=d.low_since)


def test_policy_refuses_contradictions() -> None:
    with pytest.raises(ValidationError, match="below min_replicas"):
        ScalePolicy(min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError, match="raise the budget"):
        ScalePolicy(min_replicas=3, budget_per_hour=2.0, node_price_per_hour=1.0)


def test_a_window_prometheus_saw_low_serves_the_cool_down_at_once() -> None:
    """A reconcile run triggered by LowUtilisation (or the first scheduled one after a quiet minute) finds no
    earlier pass that saw the load go low; Prometheus' peak over the cool-down window shows it was low all along,
    so the pool scales in now. A peak above the scale-in line only starts the clock."""
    quiet = Observation(0.05, 0, 1, peak_load=2.0)  # 2 of 4 x 4 = 0.125 of capacity
    d = desired_replicas(quiet, PoolView(4), P, NOW, allow_scale_in=True)
    assert d.action is Action.IN and d.desired == 2, d
    busy_then = Observation(0.05, 0, 1, peak_load=12.0)  # 0.75 of capacity inside the window
    d = desired_replicas(busy_then, PoolView(4), P, NOW, allow_scale_in=True)
    assert d.action is Action.HOLD and d.low_since == NOW and "cool-down: 60 s left" in d.reasons[0], d
    assert desired_replicas(quiet, PoolView(4), P, NOW, allow_scale_in=False).action is Action.HOLD  # scale: never in
    # a scale-out inside the window (for latency at low load, say) was decided on what the peak cannot show: the
    # cool-down starts now, as without the window
    d = desired_replicas(quiet, PoolView(4, last_scale_out_at=NOW - 30), P, NOW, allow_scale_in=True)
    assert d.action is Action.HOLD and d.low_since == NOW, d
    assert desired_replicas(quiet, PoolView(4, last_scale_out_at=NOW - 61), P, NOW, allow_scale_in=True).action \
        is Action.IN
