"""Load schedules and summaries (pure parts of `llmops load`)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llmops.errors import ConfigError
from llmops.loadgen import schedule
from llmops.loadgen.stats import Outcome, percentile, summarise, windows

TRACE = Path(__file__).resolve().parents[2] / "data" / "traces" / "azure_llm_conv_2023.csv"


def test_steady_rate_is_close_to_the_target_and_reproducible() -> None:
    a = schedule.steady(5.0, 200.0, 16, seed=1)
    assert 900 <= len(a) <= 1100 and a == schedule.steady(5.0, 200.0, 16, seed=1)
    assert all(0 <= x.at_s < 200 for x in a) and all(x.max_tokens == 16 for x in a)


def test_burst_is_denser_inside_the_window() -> None:
    a = schedule.burst(1.0, 20.0, 60.0, 20.0, 10.0, 8)
    inside = sum(1 for x in a if 20 <= x.at_s < 30)
    outside = len(a) - inside
    assert inside > 150 and outside < 90
    assert [x.at_s for x in a] == sorted(x.at_s for x in a)
    with pytest.raises(ConfigError, match="outside the run"):
        schedule.burst(1.0, 2.0, 10.0, 12.0, 1.0, 8)


def test_trace_replay_scales_time_and_tokens() -> None:
    a = schedule.trace(TRACE, speed=10.0, token_scale=0.1, max_tokens_cap=32, duration_s=60.0)
    assert a[0].at_s == 0.0 and all(x.at_s < 60 for x in a)
    assert 2500 <= len(a) <= 4500  # ~5.5 req/s x 10 x 60 s
    assert max(x.max_tokens for x in a) == 32 and min(x.max_tokens for x in a) >= 1


def test_missing_trace_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        schedule.trace(tmp_path / "nope.csv", 1, 1, 1)


def test_summary_counts_failures_and_percentiles() -> None:
    outs = [Outcome(float(i), 0.1 * (i + 1), 200, True, "2", tokens=5) for i in range(10)]
    outs += [Outcome(11.0, 0.5, 503, False, "", "HTTP 503: no server"), Outcome(12.0, 2.0, 0, False, "", "timeout")]
    s = summarise(outs, 10.0)
    assert s["requests"] == 12 and s["ok"] == 10 and s["failed"] == 2
    assert s["http_errors"] == 1 and s["no_response"] == 1
    assert s["latency_s"]["p50"] == pytest.approx(0.5) and s["latency_s"]["p95"] == pytest.approx(1.0)
    assert s["by_version"] == {"2": 10} and s["tokens"] == 50
    assert math.isnan(percentile([], 95))


def test_windows_judge_the_slo_per_window() -> None:
    outs = [Outcome(1.0, 0.2, 200, True, "1"), Outcome(12.0, 3.0, 200, True, "1"),
            Outcome(25.0, 0.1, 500, False, "")]
    w = windows(outs, 10.0, slo_p95_s=1.0)
    assert [x["slo_met"] for x in w] == [1.0, 0.0, 0.0]
