"""Prometheus adapter: the queries rollout and scaling decisions are made from."""

from __future__ import annotations

import math
from typing import Protocol

import httpx

from llmops.errors import ServiceError


class MetricsSource(Protocol):
    def scalar(self, expr: str) -> float | None: ...


class PrometheusMetrics:
    """Instant queries against Prometheus' HTTP API.

    Args:
        url: e.g. http://127.0.0.1:9090
    """

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=timeout_s)

    def scalar(self, expr: str) -> float | None:
        """Sum of the result vector; None when the result is empty (no data is not zero)."""
        try:
            r = self.http.get(f"{self.url}/api/v1/query", params={"query": expr})
        except httpx.HTTPError as err:
            raise ServiceError(f"Prometheus at {self.url} unreachable: {err}", "`llmops stack status`") from None
        if r.status_code != 200:
            raise ServiceError(f"Prometheus rejected `{expr}`: {r.text[:300]}", "fix the query")
        result = r.json()["data"]["result"]
        if not result:
            return None
        values = [float(s["value"][1]) for s in result]
        return None if all(math.isnan(v) for v in values) else sum(v for v in values if not math.isnan(v))


# Per engine: (request counter, 5xx/failed counter or cumulative gauge, latency histogram buckets). CPU nodes
# report through the node wrapper (`route` label: probe traffic is excluded); LMDeploy reports its own
# `lmdeploy:*` metrics, where `num_requests_failed` is a cumulative gauge (hence `delta`, not `increase`).
_ENGINE_QUERIES = {
    "transformers": ('sum(increase(llmops_node_requests_total{{{sel}}}[{w}]))',
                     'sum(increase(llmops_node_requests_total{{{sel},status=~"5.."}}[{w}]))',
                     'llmops_node_request_duration_seconds_bucket{{{sel}}}'),
    "lmdeploy": ('sum(increase(lmdeploy:e2e_request_latency_seconds_count{{{sel}}}[{w}]))',
                 'sum(clamp_min(delta(lmdeploy:num_requests_failed{{{sel}}}[{w}]), 0))',
                 'lmdeploy:e2e_request_latency_seconds_bucket{{{sel}}}'),
}


def version_traffic(m: MetricsSource, model: str, version: str, window_s: int, engine: str = "transformers"
                    ) -> tuple[float, float, float | None]:
    """(requests, errors, p95 latency s) served by nodes of one model version over the last window."""
    if engine not in _ENGINE_QUERIES:
        raise ServiceError(f"no canary metrics known for engine {engine!r}", f"use one of {sorted(_ENGINE_QUERIES)}")
    req_q, err_q, bucket = _ENGINE_QUERIES[engine]
    sel = f'model="{model}",version="{version}"' + (',route!="probe"' if engine == "transformers" else "")
    w = f"{max(1, int(window_s))}s"
    requests = m.scalar(req_q.format(sel=sel, w=w)) or 0.0
    errors = m.scalar(err_q.format(sel=sel, w=w)) or 0.0
    p95 = m.scalar(f"histogram_quantile(0.95, sum by (le) (rate({bucket.format(sel=sel)}[{w}])))")
    return requests, errors, p95
