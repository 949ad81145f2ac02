"""Canary traffic queries per engine: CPU nodes through the wrapper's metrics (probe traffic excluded),
LMDeploy nodes through its own `lmdeploy:*` metrics; an unknown engine is named."""

from __future__ import annotations

import pytest

from llmops.errors import ServiceError
from llmops.metrics import version_traffic


class Recorder:
    def __init__(self, answers: dict[str, float | None]) -> None:
        self.answers, self.queries = answers, []  # type: ignore[var-annotated]

    def scalar(self, expr: str) -> float | None:
        self.queries.append(expr)
        return next((v for k, v in self.answers.items() if k in expr), None)


def test_transformers_nodes_are_judged_on_wrapper_metrics_without_probe_traffic() -> None:
    m = Recorder({"histogram_quantile": 0.4, '5..': 2.0, "llmops_node_requests_total": 40.0})
    assert version_traffic(m, "sa", "3", 10) == (40.0, 2.0, 0.4)
    assert all('version="3"' in q and 'route!="probe"' in q and "[10s]" in q for q in m.queries)


def test_lmdeploy_nodes_are_judged_on_lmdeploy_metrics() -> None:
    m = Recorder({"histogram_quantile": 0.9, "num_requests_failed": 1.0, "e2e_request_latency_seconds_count": 25.0})
    assert version_traffic(m, "sa", "4", 8, engine="lmdeploy") == (25.0, 1.0, 0.9)
    assert "lmdeploy:e2e_request_latency_seconds_bucket" in m.queries[2]
    assert "delta(lmdeploy:num_requests_failed" in m.queries[1]   # a cumulative gauge, not a counter
    assert all("route" not in q for q in m.queries)


def test_no_data_is_zero_requests_and_unknown_latency() -> None:
    assert version_traffic(Recorder({}), "sa", "4", 8, engine="lmdeploy") == (0.0, 0.0, None)


def test_unknown_engine_is_named() -> None:
    with pytest.raises(ServiceError, match="vllm"):
        version_traffic(Recorder({}), "sa", "1", 5, engine="vllm")
