"""Alertmanager payloads -> Prefect events; the rendered Prometheus rules pass `promtool check rules`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmops.alerts import alert_events
from llmops.errors import LlmopsError
from llmops.scaling import ScalePolicy
from llmops.scaling_rules import RECORDS, scaling_rules

PAYLOAD = {
    "version": "4", "status": "firing", "receiver": "llmops", "groupKey": "{}:{alertname=\"HighLatency\"}",
    "alerts": [
        {"status": "firing", "labels": {"alertname": "HighLatency", "pool": "sa", "tenant": "acme",
                                        "severity": "page"},
         "annotations": {"summary": "slow", "value_mean_latency_s": "0.41"}, "startsAt": "2026-11-28T10:00:00Z",
         "fingerprint": "abc"},
        {"status": "resolved", "labels": {"alertname": "Backlog", "pool": "sa"}, "annotations": {}},
    ],
}


def test_each_alert_becomes_one_event_on_the_tenants_pool() -> None:
    events = alert_events(PAYLOAD)
    assert [e["event"] for e in events] == ["llmops.alert.firing", "llmops.alert.resolved"]
    first = events[0]
    assert first["resource"]["prefect.resource.id"] == "llmops.pool.acme.sa"
    assert first["payload"]["alert"] == "HighLatency" and first["payload"]["values"] == {"mean_latency_s": "0.41"}
    assert events[1]["resource"]["prefect.resource.id"] == "llmops.pool.default.sa"  # no tenant label: default
    assert len({e["id"] for e in events}) == 2


@pytest.mark.parametrize(("payload", "match"), [
    ({"alerts": []}, "at least 1"),
    ({"alerts": [{"status": "firing", "labels": {"alertname": "X"}}]}, "no pool label"),
    ({"alerts": [{"status": "weird", "labels": {"alertname": "X", "pool": "p"}}]}, "status"),
])
def test_bad_payloads_are_refused_and_emit_nothing(payload: dict[str, object], match: str) -> None:
    with pytest.raises((LlmopsError, ValueError), match=match):
        alert_events(payload)


def test_rendered_rules_pass_promtool_and_carry_the_routing_labels(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package prometheus (`make install`)"
    policy = ScalePolicy(high_latency_s=0.25, backlog=40, alert_for_s=3)
    rules = scaling_rules("support-assistant", "llm_support_assistant", policy, tenant="acme")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    recorded = [x["record"] for x in rules["groups"][0]["rules"]]
    alerts = {x["alert"]: x for x in rules["groups"][1]["rules"]}
    assert set(recorded) == set(RECORDS) and set(alerts) == {"HighLatency", "Backlog", "Saturated", "Rising",
                                                             "NodeDown", "LowUtilisation"}
    assert "> 0.25" in alerts["HighLatency"]["expr"] and "> 40" in alerts["Backlog"]["expr"]
    assert alerts["HighLatency"]["for"] == "3s"
    assert all(a["labels"]["pool"] == "support-assistant" and a["labels"]["tenant"] == "acme"
               for a in alerts.values())


def test_regression_alert_fires_on_a_bad_ratio_with_volume_only(tmp_path: Path) -> None:
    """promtool evaluates the rendered RegressionDetected rule on synthetic feedback counters: a pool with half its
    verdicts bad fires; a pool as bad but with too few verdicts, and a pool with few bad ones, do not."""
    from llmops.repair import RepairPolicy, regression_rules

    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package prometheus (`make install`)"
    policy = RepairPolicy(bad_ratio=0.3, window_s=120, min_feedback=10, for_s=10)
    groups = [regression_rules(m, policy) for m in ("regressed", "quiet", "healthy")]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))

    def series(model: str, verdict: str, per_10s: float) -> dict[str, str]:
        return {"series": f'llmops_feedback_total{{model="{model}",tenant="default",model_version="1",'
                          f'verdict="{verdict}"}}', "values": f"0+{per_10s}x60"}

    test = {"rule_files": ["rules.yml"], "evaluation_interval": "10s", "tests": [{
        "interval": "10s",
        "input_series": [series("regressed", "bad", 1), series("regressed", "good", 1),
                         series("quiet", "bad", 0.1), series("quiet", "good", 0.1),
                         series("healthy", "bad", 0.1), series("healthy", "good", 1)],
        "promql_expr_test": [{
            "expr": 'ALERTS{alertname="RegressionDetected",alertstate="firing"}', "eval_time": "5m",
            "exp_samples": [{"labels": 'ALERTS{alertname="RegressionDetected",alertstate="firing",model="regressed",'
                                       'pool="regressed",tenant="default",severity="page",action="repair"}',
                             "value": 1}]}]}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    r = subprocess.run([promtool, "test", "rules", "test.yml"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_repair_alert_becomes_a_regression_event() -> None:
    payload = {"version": "4", "status": "firing", "alerts": [{
        "status": "firing", "labels": {"alertname": "RegressionDetected", "pool": "support-assistant",
                                       "tenant": "acme", "action": "repair"},
        "annotations": {"value_bad_ratio": "0.5"}}]}
    (e,) = alert_events(payload)
    assert e["event"] == "llmops.regression.detected" and e["payload"]["values"] == {"bad_ratio": "0.5"}
    assert e["resource"]["prefect.resource.id"] == "llmops.pool.acme.support-assistant"


def test_saturated_fires_when_demand_exceeds_the_nodes_target_concurrency_and_not_before(tmp_path: Path) -> None:
    """promtool evaluates the rendered rules on raw node and gateway series: two nodes at target 2 take 4; a load of
    6 (4 in flight + 2 queued) for longer than `for:` fires Saturated, a load of 4 (all in flight) does not."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package prometheus (`make install`)"
    policy = ScalePolicy(target_in_flight_per_node=2, backlog=40, alert_for_s=4)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(scaling_rules("m", "llm_m", policy, tenant="acme")))
    series = [
        {"series": 'up{job="nodes",model="m",node="a"}', "values": "1x20"},
        {"series": 'up{job="nodes",model="m",node="b"}', "values": "1x20"},
        {"series": 'llmops_node_requests_in_flight{model="m",node="a"}', "values": "1 2x20"},
        {"series": 'llmops_node_requests_in_flight{model="m",node="b"}', "values": "1 2x20"},
        # queue: empty for the first 5 minutes' samples, then 2 waiting
        {"series": 'haproxy_backend_current_queue{proxy="llm_m"}', "values": "0x5 2x15"},
    ]
    test = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "Saturated", "exp_alerts": []},  # load 4 = capacity: not above
            {"eval_time": "6m", "alertname": "Saturated", "exp_alerts": []},  # load 6, pending (for: 4s < 1m step)
            {"eval_time": "8m", "alertname": "Saturated", "exp_alerts": [{
                "exp_labels": {"model": "m", "pool": "m", "tenant": "acme", "severity": "page",
                               "action": "scale_out"},
                "exp_annotations": {"summary": "m has more requests in flight or waiting than its nodes take at 2 "
                                               "each", "value_utilisation": "1.5"}}]},
        ]}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    r = subprocess.run([promtool, "test", "rules", "test.yml"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rising_fires_ahead_of_saturated_on_a_ramp_and_not_on_a_flat_or_near_idle_pool(tmp_path: Path) -> None:
    """promtool, 1 s evaluations, three pools of two nodes at target 2 (capacity 4), scale_ahead_s 20:
    - `ramp`: load 2 + 0.05 t reaches the capacity at t = 40 s (Saturated); its 10 s mean projected 20 s ahead
      crosses it at t = 25 s, so at t = 32 s Rising fires while Saturated does not;
    - `flat`: load 3 (75 %) with no trend never fires;
    - `quiet`: load 0 -> 1.9 within 5 s projects past the capacity but uses under half of it: the floor holds it."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package prometheus (`make install`)"
    policy = ScalePolicy(target_in_flight_per_node=2, backlog=40, alert_for_s=2, scale_ahead_s=20)
    groups = [g for m in ("ramp", "flat", "quiet") for g in scaling_rules(m, f"llm_{m}", policy)["groups"]]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    per_node = {"ramp": "1+0.025x60", "flat": "1.5x60", "quiet": "0+0.19x5 0.95x55"}
    series = []
    for m, values in per_node.items():
        series.append({"series": f'haproxy_backend_current_queue{{proxy="llm_{m}"}}', "values": "0x60"})
        for node in ("a", "b"):
            series.append({"series": f'up{{job="nodes",model="{m}",node="{node}"}}', "values": "1x60"})
            series.append({"series": f'llmops_node_requests_in_flight{{model="{m}",node="{node}"}}',
                           "values": values})

    def firing(name: str, at: str, pools: list[str]) -> dict[str, Any]:
        return {"expr": f'ALERTS{{alertname="{name}",alertstate="firing"}}', "eval_time": at,
                "exp_samples": [{"labels": f'ALERTS{{alertname="{name}",alertstate="firing",model="{p}",pool="{p}",'
                                           'tenant="default",severity="page",action="scale_out"}', "value": 1}
                                for p in pools]}
    test = {"rule_files": ["rules.yml"], "evaluation_interval": "1s", "tests": [{
        "interval": "1s", "input_series": series,
        "promql_expr_test": [firing("Rising", "10s", []), firing("Rising", "13s", []),
                             firing("Rising", "32s", ["ramp"]),
                             firing("Saturated", "32s", []), firing("Rising", "50s", ["ramp"])]}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    r = subprocess.run([promtool, "test", "rules", "test.yml"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rising_is_not_rendered_when_scale_ahead_is_off() -> None:
    rules = scaling_rules("m", "llm_m", ScalePolicy(scale_ahead_s=0))
    assert "Rising" not in {x["alert"] for x in rules["groups"][1]["rules"]}
