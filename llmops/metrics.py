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


def version_traffic(m: MetricsSource, model: str, version: str, window_s: int) -> tuple[float, float, float | None]:
    """(requests, 5xx errors, p95 latency s) served by nodes of one model version over the last window."""
    sel = f'model="{model}",version="{version}",route!="probe"'
    w = f"{max(1, int(window_s))}s"
    requests = m.scalar(f"sum(increase(llmops_node_requests_total{{{sel}}}[{w}]))") or 0.0
    errors = m.scalar(f'sum(increase(llmops_node_requests_total{{{sel},status=~"5.."}}[{w}]))') or 0.0
    p95 = m.scalar(f"histogram_quantile(0.95, sum by (le) (rate(llmops_node_request_duration_seconds_bucket"
                   f"{{{sel}}}[{w}])))")
    return requests, errors, p95
