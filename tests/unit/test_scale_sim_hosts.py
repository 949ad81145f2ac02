"""Host classes in the scaling simulation (bench/scale_sim.py): placement fills classes in order of preference and
overflows when one runs out; scale-in frees the priciest first; cost follows each class's price."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def sim() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_sim", ROOT / "bench" / "scale_sim.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["scale_sim"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_placement_overflows_to_the_next_class_and_frees_the_priciest_first() -> None:
    m = sim()
    classes = m.parse_host_classes("reserved:2:60:1.0,spot:3:150:0.4", 71.6, 200)
    assert [(c.name, c.capacity, c.cold_start_s, c.price_per_hour) for c in classes] == [
        ("reserved", 2, 60.0, 1.0), ("spot", 3, 150.0, 0.4)]
    p = m.Placement(classes)
    got = [p.place() for _ in range(6)]
    assert [c.name if c else None for c in got] == ["reserved", "reserved", "spot", "spot", "spot", None]
    assert p.unplaced == 1 and p.cost_per_s() == pytest.approx((2 * 1.0 + 3 * 0.4) / 3600)
    p.release(2)
    assert p.used == {"reserved": 0, "spot": 3} and p.peak == {"reserved": 2, "spot": 3}


def test_one_default_class_when_none_is_given_and_a_bad_spec_names_the_format() -> None:
    m = sim()
    (c,) = m.parse_host_classes("", 71.6, 200)
    assert (c.capacity, c.cold_start_s, c.price_per_hour) == (200, 71.6, 1.0)
    with pytest.raises(SystemExit, match="name:capacity:cold_start_s:price_per_hour"):
        m.parse_host_classes("spot:3:150", 71.6, 200)


def test_a_slower_class_delays_the_nodes_placed_on_it() -> None:
    """The same pool, the same load step: nodes that overflow to a class with a longer start serve later, so fewer
    windows meet the SLO than when the fast class has room."""
    m = sim()
    node = m.NodeModel((1, 8, 64), (30.0, 200.0, 800.0), 30.0, 8)
    arrivals = [(i * 0.05, 40) for i in range(2400)]  # 20 req/s for 120 s
    policy = m.ScalePolicy(min_replicas=1, max_replicas=20, warm_standby=0, high_latency_s=2.0, backlog=8,
                           target_in_flight_per_node=4, alert_for_s=2, up_cooldown_s=10, down_cooldown_s=600,
                           max_step=10, budget_per_hour=100)
    fast = m.Sim(arrivals, node, 6.0, classes=m.parse_host_classes("fast:20:10:1.0", 10, 20))
    slow = m.Sim(arrivals, node, 6.0, classes=m.parse_host_classes("fast:1:10:1.0,slow:20:90:0.5", 10, 20))
    a = fast.run("fast", m.Ours(policy, 2.0, 10.0), 1)
    b = slow.run("overflow", m.Ours(policy, 2.0, 10.0), 1)
    assert a.windows_met > b.windows_met and b.peak_by_class["slow"] > 0
