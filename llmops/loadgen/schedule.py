"""Arrival schedules (pure): when each request is sent and how many tokens it asks for."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path

from llmops.errors import ConfigError


class Mode(str, Enum):
    STEADY = "steady"
    BURST = "burst"
    TRACE = "trace"


@dataclass(frozen=True)
class Arrival:
    at_s: float  # offset from the start of the run
    max_tokens: int


def poisson(rate: float, start: float, end: float, rng: random.Random, max_tokens: int) -> list[Arrival]:
    """Open-loop Poisson arrivals at `rate` per second in [start, end)."""
    out: list[Arrival] = []
    if rate <= 0:
        return out
    t = start + rng.expovariate(rate)
    while t < end:
        out.append(Arrival(t, max_tokens))
        t += rng.expovariate(rate)
    return out


def steady(rps: float, duration_s: float, max_tokens: int, seed: int = 0) -> list[Arrival]:
    return poisson(rps, 0.0, duration_s, random.Random(seed), max_tokens)


def burst(base_rps: float, burst_rps: float, duration_s: float, burst_start_s: float, burst_s: float,
          max_tokens: int, seed: int = 0) -> list[Arrival]:
    """`base_rps` throughout, `burst_rps` instead during [burst_start_s, burst_start_s + burst_s)."""
    if not 0 <= burst_start_s < duration_s:
        raise ConfigError(f"burst start {burst_start_s}s is outside the run (0-{duration_s}s)",
                          "pass --burst-start within --duration")
    rng = random.Random(seed)
    end = min(duration_s, burst_start_s + burst_s)
    return sorted(poisson(base_rps, 0.0, burst_start_s, rng, max_tokens)
                  + poisson(burst_rps, burst_start_s, end, rng, max_tokens)
                  + poisson(base_rps, end, duration_s, rng, max_tokens), key=lambda a: a.at_s)


def trace(path: Path, speed: float, token_scale: float, max_tokens_cap: int, duration_s: float | None = None,
          start_offset_s: float = 0.0) -> list[Arrival]:
    """Replay the Azure LLM trace (TIMESTAMP, ContextTokens, GeneratedTokens): times divided by `speed`,
    generated tokens multiplied by `token_scale` and capped, so a CPU node can serve it."""
    if not path.is_file():
        raise ConfigError(f"trace file {path} not found", "use data/traces/azure_llm_conv_2023.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "TIMESTAMP" not in rows[0]:
        raise ConfigError(f"{path} has no TIMESTAMP column",
                          "expected the columns TIMESTAMP, ContextTokens, GeneratedTokens")
    t0 = _ts(rows[0]["TIMESTAMP"])
    out = []
    for r in rows:
        at = ((_ts(r["TIMESTAMP"]) - t0) - start_offset_s) / speed
        if at < 0:
            continue
        if duration_s is not None and at >= duration_s:
            break
        tokens = max(1, min(max_tokens_cap, round(int(r["GeneratedTokens"]) * token_scale)))
        out.append(Arrival(at, tokens))
    return out


def _ts(text: str) -> float:
    # 2023-11-16 18:15:46.6805900: seven fractional digits, more than datetime parses
    head, _, frac = text.strip().partition(".")
    return datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timestamp() + float(f"0.{frac or 0}")
