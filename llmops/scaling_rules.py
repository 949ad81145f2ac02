"""Prometheus recording and alerting rules of one pool, rendered from its scaling policy (pure).

The stack writes them to `<state_dir>/prometheus/rules/scaling-<model>.yml` at `up`; `promtool check rules`
validates them in the unit tests. Every alert carries the labels `pool` and `tenant`, which the receiver turns
into the Prefect event's resource (`llmops.pool.<tenant>.<pool>`).

Signals (per pool; CPU nodes report through the node wrapper, LMDeploy nodes through `lmdeploy:*`):
- `llmops:pool_latency_mean:10s`, `llmops:pool_latency_p95:10s`: user requests only (probe traffic excluded);
- `llmops:pool_waiting`: requests queued in the HAProxy backend (nodes take `maxconn` each) plus LMDeploy's
  own queues;
- `llmops:pool_in_flight`, `llmops:pool_error_ratio:30s`, `llmops:pool_nodes_up`, `llmops:pool_requests:rate10s`;
- `llmops:pool_load` (in flight + waiting), its 10 s mean `llmops:pool_load:avg10s` and
  `llmops:pool_load:projected`: that mean extrapolated `scale_ahead_s` ahead along its 30 s trend (`predict_linear`).

Alerts (action label `scale_out` unless named): `HighLatency`, `Backlog`, `Saturated` (load above what the serving
nodes take at their target), `Rising` (the projected load will be above it in `scale_ahead_s`, while at least half
of it is in use now: a cold node is ordered before the ramp outgrows the pool, since it takes about that long to
serve), `NodeDown` (replace), `LowUtilisation` (scale_in, acted on by reconcile).
"""

from __future__ import annotations

from typing import Any

from llmops.scaling import ScalePolicy

RECORDS = ("llmops:pool_latency_mean:10s", "llmops:pool_latency_p95:10s", "llmops:pool_waiting",
           "llmops:pool_in_flight", "llmops:pool_error_ratio:30s", "llmops:pool_nodes_up",
           "llmops:pool_requests:rate10s", "llmops:pool_load", "llmops:pool_load:avg10s", "llmops:pool_load:projected")

# Rising fires only while at least this share of the capacity is in use now: a projection from a near-idle pool is
# noise (one request more doubles a load of 1), and a burst that matters starts from a busy pool
RISING_FLOOR = 0.5


def _dur(seconds: float) -> str:
    return f"{max(int(round(seconds)), 0)}s"


def scaling_rules(model: str, backend: str, policy: ScalePolicy, tenant: str = "default") -> dict[str, Any]:
    """The rule file (as a dict for yaml.safe_dump) for one pool."""
    m = f'model="{model}"'
    user = f'{m},route!="probe"'
    labels = {"model": model, "pool": model, "tenant": tenant}
    records = [
        ("llmops:pool_requests:rate10s",
         f"sum(rate(llmops_node_requests_total{{{user}}}[10s])) "
         f"or sum(rate(lmdeploy:e2e_request_latency_seconds_count{{{m}}}[10s]))"),
        ("llmops:pool_latency_mean:10s",
         f"(sum(rate(llmops_node_request_duration_seconds_sum{{{user}}}[10s])) "
         f"/ sum(rate(llmops_node_request_duration_seconds_count{{{user}}}[10s]))) "
         f"or (sum(rate(lmdeploy:e2e_request_latency_seconds_sum{{{m}}}[10s])) "
         f"/ sum(rate(lmdeploy:e2e_request_latency_seconds_count{{{m}}}[10s])))"),
        ("llmops:pool_latency_p95:10s",
         f"histogram_quantile(0.95, sum by (le) (rate(llmops_node_request_duration_seconds_bucket{{{user}}}[10s]))) "
         f"or histogram_quantile(0.95, sum by (le) (rate(lmdeploy:e2e_request_latency_seconds_bucket{{{m}}}[10s])))"),
        ("llmops:pool_waiting",
         f'sum(haproxy_backend_current_queue{{proxy="{backend}"}}) '
         f"+ (sum(lmdeploy:num_requests_waiting{{{m}}}) or vector(0))"),
        ("llmops:pool_in_flight",
         f"(sum(llmops_node_requests_in_flight{{{m}}}) or vector(0)) "
         f"+ (sum(lmdeploy:num_requests_running{{{m}}}) or vector(0))"),
        ("llmops:pool_error_ratio:30s",
         f'sum(rate(llmops_node_requests_total{{{user},status=~"5.."}}[30s])) '
         f"/ sum(rate(llmops_node_requests_total{{{user}}}[30s]))"),
        ("llmops:pool_nodes_up", f'count(up{{job="nodes",{m}}} == 1)'),
    ]
    # in flight + waiting, recorded every evaluation so that scale-in can read its peak over the cool-down
    records.append(("llmops:pool_load", f"llmops:pool_in_flight{{{m}}} + llmops:pool_waiting{{{m}}}"))
    records.append(("llmops:pool_load:avg10s", f"avg_over_time(llmops:pool_load{{{m}}}[10s])"))
    records.append(("llmops:pool_load:projected",
                    f"clamp_min(predict_linear(llmops:pool_load:avg10s{{{m}}}[30s], "
                    f"{max(policy.scale_ahead_s, 0):g}), 0)"))
    sel = f'{{model="{model}"}}'
    cap = f"(llmops:pool_nodes_up{sel} * {policy.target_in_flight_per_node:g})"
    alerts = [
        {"alert": "HighLatency", "expr": f"llmops:pool_latency_mean:10s{sel} > {policy.high_latency_s:g}",
         "for": _dur(policy.alert_for_s),
         "labels": {**labels, "severity": "page", "action": "scale_out"},
         "annotations": {"summary": f"mean latency of {model} above {policy.high_latency_s * 1000:g} ms",
                         "value_mean_latency_s": "{{ $value }}"}},
        {"alert": "Backlog", "expr": f"llmops:pool_waiting{sel} > {policy.backlog:g}",
         "for": _dur(policy.alert_for_s),
         "labels": {**labels, "severity": "page", "action": "scale_out"},
         "annotations": {"summary": f"more than {policy.backlog:g} requests of {model} waiting",
                         "value_waiting": "{{ $value }}"}},
        # demand above what the serving nodes take at their target concurrency: the same quantity `desired_replicas`
        # scales on, so the alert path acts on it at once instead of waiting for a queue (Backlog) or for latency
        {"alert": "Saturated", "expr": f"llmops:pool_load{sel} / {cap} > 1",
         "for": _dur(policy.alert_for_s),
         "labels": {**labels, "severity": "page", "action": "scale_out"},
         "annotations": {"summary": f"{model} has more requests in flight or waiting than its nodes take at "
                                    f"{policy.target_in_flight_per_node:g} each",
                         "value_utilisation": "{{ $value }}"}},
        *([{"alert": "Rising",
             "expr": f"llmops:pool_load:projected{sel} / {cap} > 1 and llmops:pool_load:avg10s{sel} / {cap} "
                     f"> {RISING_FLOOR:g}",
             "for": _dur(policy.alert_for_s),
             "labels": {**labels, "severity": "page", "action": "scale_out"},
             "annotations": {"summary": f"the load of {model} is rising past what its nodes take at "
                                        f"{policy.target_in_flight_per_node:g} each within "
                                        f"{policy.scale_ahead_s:g} s",
                             "value_projected_utilisation": "{{ $value }}"}}] if policy.scale_ahead_s > 0 else []),
        {"alert": "NodeDown", "expr": f'up{{job="nodes",{m}}} == 0', "for": "4s",  # two failed scrapes
         "labels": {**labels, "severity": "page", "action": "replace"},
         "annotations": {"summary": "node {{ $labels.node }} of " + model + " does not answer its scrape",
                         "value_node": "{{ $labels.node }}"}},
        {"alert": "LowUtilisation",
         "expr": f"(llmops:pool_in_flight{sel} + llmops:pool_waiting{sel}) / {cap} < {policy.scale_in_utilisation:g}",
         "for": _dur(policy.down_cooldown_s),
         "labels": {**labels, "severity": "info", "action": "scale_in"},
         "annotations": {"summary": f"{model} uses under {policy.scale_in_utilisation:.0%} of its capacity; "
                                    "reconcile scales in", "value_utilisation": "{{ $value }}"}},
    ]
    return {"groups": [
        {"name": f"llmops-pool-{model}", "rules": [{"record": r, "expr": e, "labels": labels} for r, e in records]},
        {"name": f"llmops-alerts-{model}", "rules": alerts},
    ]}
