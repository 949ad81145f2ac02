"""Summaries of a load run (pure)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    sent_at_s: float
    latency_s: float
    status: int  # HTTP status; 0 when no response arrived (connection error, timeout)
    ok: bool  # 2xx with a well-formed completion
    version: str
    error: str = ""
    tokens: int = 0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def summarise(outcomes: Sequence[Outcome], duration_s: float) -> dict[str, object]:
    ok = [o for o in outcomes if o.ok]
    lat = [o.latency_s for o in ok]
    errors = Counter(o.error or f"HTTP {o.status}" for o in outcomes if not o.ok)
    return {
        "requests": len(outcomes), "ok": len(ok), "failed": len(outcomes) - len(ok),
        "http_errors": sum(1 for o in outcomes if not o.ok and o.status >= 400),
        "no_response": sum(1 for o in outcomes if o.status == 0),
        "error_kinds": dict(errors.most_common(10)),
        "latency_s": {"p50": percentile(lat, 50), "p90": percentile(lat, 90), "p95": percentile(lat, 95),
                      "p99": percentile(lat, 99), "max": max(lat) if lat else math.nan},
        "throughput_rps": len(ok) / duration_s if duration_s > 0 else 0.0,
        "tokens": sum(o.tokens for o in ok),
        "by_version": dict(Counter(o.version for o in ok)),
    }


def windows(outcomes: Sequence[Outcome], width_s: float, slo_p95_s: float) -> list[dict[str, float]]:
    """Per-window request count, p95 latency and whether the window met the p95 SLO (failures break it)."""
    if not outcomes:
        return []
    end = max(o.sent_at_s for o in outcomes)
    out = []
    for i in range(int(end // width_s) + 1):
        w = [o for o in outcomes if i * width_s <= o.sent_at_s < (i + 1) * width_s]
        lat = [o.latency_s for o in w if o.ok]
        p95 = percentile(lat, 95)
        met = bool(w) and all(o.ok for o in w) and p95 <= slo_p95_s
        out.append({"start_s": i * width_s, "requests": len(w), "p95_s": p95, "slo_met": float(met)})
    return out
