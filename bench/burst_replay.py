"""bench/burst_replay.py: one bursty trace through the gateway against static min, static peak and the autoscaler.

    python bench/burst_replay.py            # writes bench/results/burst-replay-cpu.json (about 55 minutes)
    python bench/burst_replay.py --cpu-limit 0 --burst-rps 4 --ramp-s 0 --out ...   # nodes sharing the cores

Each arm runs on a fresh local stack of its own (free loopback ports, temp state dir, the same SmolLM2 CPU nodes):
- static min:  min = max = 2 nodes, no standby (scaling can change nothing);
- static peak: min = max = 4 nodes, no standby;
- autoscaler:  min 2, max 4, one warm standby; the alert-triggered `scale` flow and the scheduled `reconcile`
  flow act as they would in production (nothing is paused);
- autoscaler (no standby): the same without the standby. With min 2 of static peak's 4, a standby alone costs 0.25
  of static peak: min + standby is 0.75 before any burst, so the 0.6 goal needs the pool without a standby.
  The default run (`--arms`) is static min, static peak and this arm; add "autoscaler" to see the standby's price.
The trace (the same arrivals, seeded, in every arm): a quiet base rate, a ramp, a burst, the base rate again.
Why 15 minutes: the minimum (2) is half of static peak (4), so the autoscaler's cost is 0.5 + 0.5 x the share of
time it holds the extra nodes; that time is the burst plus the reaction (~30 s cold), the scale-in window (15 s)
and the wait for the next scheduled reconcile (up to 60 s): about 150 s, which is <= 20% of the run only from
~750 s on. A shorter trace measures the scheduling delays more than the policy.
Every node is held to `--cpu-limit` cores (its own cgroup, `serving.cpu_limit`), so that a node is a fixed slice
of the machine as a GPU node is its own device; without it (`--cpu-limit 0`) the nodes split the same two cores.
Reported per arm: the share of 10 s windows (by send time) whose p95 latency is within --slo-s (a failed request
counts as a miss), failed requests, and node-seconds from the pool's own accounting (`PoolState.node_seconds`,
standby and starting nodes included), each as a ratio against static peak measured in the same run.
Goal (issue 5): >= 99% of windows within the SLO with <= 60% of static peak's node-seconds.

Measured without the limit (bench/results/burst-replay-cpu-shared-cores.json): four nodes on two cores served worse
than two (static peak met the SLO in 0.778 of windows, static min in 0.944), so the comparison needs the limit.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.stack.launcher import Stack  # noqa: E402
from llmops.loadgen.runner import run_load  # noqa: E402
from llmops.loadgen.stats import percentile  # noqa: E402
from llmops.pool.state import PoolStore  # noqa: E402
from llmops.prefect_api import PrefectApi  # noqa: E402
from tests.integration.conftest import free_ports_config, write_config  # noqa: E402

# HighLatency must sit above a quiet node's own latency: at 0.45 cores a 16-token answer takes ~2.2 s unloaded, so
# a 2.0 s threshold fired at the base rate and kept the pool at peak (bench/results/burst-replay-cpu-latency-threshold
# -2s.json: cost 0.97); 3.5 s is above it and below the 6 s SLO.
# A node takes `max_concurrency_per_node` (2) requests at once and HAProxy queues the rest, so its target concurrency
# is 2: more per node is queueing. (The first runs had 4, twice what a node takes: demand counted a node full only with
# 2 more queued behind it, and scale-out waited for the Backlog alert.)
MAX_CONCURRENCY_PER_NODE = 2
SHARED = {"high_latency_s": 3.5, "backlog": 4, "target_in_flight_per_node": MAX_CONCURRENCY_PER_NODE,
          "alert_for_s": 2,
          # Rising orders nodes when the load's trend will outgrow the pool in 20 s (the alert -> decision ~5 s plus a
          # cold start under the burst, 14-17 s); the runs before it ordered them only once it had (Saturated)
          "scale_ahead_s": 20,
          "up_cooldown_s": 15, "down_cooldown_s": 15, "max_step": 2, "node_price_per_hour": 1.0,
          "budget_per_hour": 5.0}
ARMS = {
    "static min": {**SHARED, "min_replicas": 2, "max_replicas": 2, "warm_standby": 0},
    "static peak": {**SHARED, "min_replicas": 4, "max_replicas": 4, "warm_standby": 0},
    "autoscaler": {**SHARED, "min_replicas": 2, "max_replicas": 4, "warm_standby": 1},
    "autoscaler (no standby)": {**SHARED, "min_replicas": 2, "max_replicas": 4, "warm_standby": 0},
}


def windows(outcomes: list[dict[str, Any]], slo_s: float, width: float = 10.0) -> list[dict[str, Any]]:
    """p95 latency per window of send time; a failed request counts as an infinitely slow one."""
    by: dict[int, list[float]] = {}
    for o in outcomes:
        by.setdefault(int(o["sent_at_s"] // width), []).append(o["latency_s"] if o["ok"] else float("inf"))
    out = []
    for k in sorted(by):
        p95 = percentile(by[k], 0.95)
        out.append({"start_s": k * width, "requests": len(by[k]), "p95_s": round(p95, 3) if p95 != float("inf")
                    else None, "met": p95 <= slo_s})
    return out


def firing_spans(prometheus_url: str, model: str, t0: float, t1: float) -> dict[str, list[list[float]]]:
    """When each alert of the pool was firing, in seconds after the load started (Prometheus `ALERTS`)."""
    import httpx

    r = httpx.get(f"{prometheus_url}/api/v1/query_range", timeout=30, params={
        "query": f'ALERTS{{alertstate="firing",pool="{model}"}}', "start": t0, "end": t1, "step": 1})
    spans: dict[str, list[list[float]]] = {}
    for res in r.json().get("data", {}).get("result", []):
        times = [float(t) - t0 for t, _ in res["values"]]
        runs: list[list[float]] = []
        for t in times:
            if runs and t - runs[-1][1] <= 1.5:
                runs[-1][1] = t
            else:
                runs.append([t, t])
        spans[res["metric"]["alertname"]] = [[round(a, 1), round(b, 1)] for a, b in runs]
    return spans


def ramped(base: float, peak: float, duration_s: float, start_s: float, ramp_s: float, hold_s: float,
           max_tokens: int, seed: int = 0) -> list[Any]:
    """Poisson arrivals: `base` req/s, rising in 10 s steps over `ramp_s` to `peak`, held `hold_s`, then `base`."""
    import random

    from llmops.loadgen.schedule import poisson

    rng = random.Random(seed)
    steps = max(int(ramp_s // 10), 0)
    segs = [(0.0, start_s, base)]
    for i in range(steps):
        segs.append((start_s + 10 * i, start_s + 10 * (i + 1), base + (peak - base) * (i + 1) / (steps + 1)))
    top = start_s + 10 * steps
    segs += [(top, top + hold_s, peak), (top + hold_s, duration_s, base)]
    out = [a for s, e, r in segs if e > s for a in poisson(r, s, min(e, duration_s), rng, max_tokens)]
    return sorted(out, key=lambda a: a.at_s)


def one_arm(name: str, policy: dict[str, Any], arrivals: list[Any], slo_s: float, workdir: Path,
            cpu_limit: float) -> dict[str, Any]:
    cfg_data = free_ports_config(workdir / "state", scaling=policy,
                                 serving={"max_concurrency_per_node": MAX_CONCURRENCY_PER_NODE,
                                          "cpu_limit": cpu_limit})
    stack = Stack(write_config(workdir, cfg_data))
    stack.up(say=lambda _: None)
    try:
        ep = stack.ep
        api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
        for _ in range(10):  # standby started, if any; a run that met the scheduled one is cancelled (CANCEL_NEW)
            st = api.wait(api.run_deployment("reconcile", "reconcile"), 300)
            if st.state != "CANCELLED":
                break
            time.sleep(3)
        if st.state != "COMPLETED":
            raise SystemExit(f"{name}: the first reconcile ended {st.state}; see the stack logs")
        store = PoolStore(stack.cfg.state_dir / "pool" / "pool.json")
        model = ep.model_name
        t0 = time.time()
        ns0 = store.read().node_seconds(model, t0)
        out = workdir / "load.json"
        summary = run_load(f"{ep.gateway_url}/v1", model, arrivals, out=out, timeout_s=120)
        t1 = time.time()
        state = store.read()
        node_s = state.node_seconds(model, t1) - ns0
        outcomes = json.loads(out.read_text())["outcomes"]
        wins = windows(outcomes, slo_s)
        # times relative to the start of the load, so that each action lines up with the trace's windows
        actions = [{"at_s": round(a["at"] - t0, 1),
                    **{k: a.get(k) for k in ("action", "current", "desired", "trigger", "reasons", "promoted",
                                             "started", "removed")},
                    "timeline_s": [[stage, round(at - t0, 1)] for stage, at in a.get("timeline", [])]}
                   for a in state.scaling_of(model).actions]
        alerts = firing_spans(stack.ep.prometheus_url, model, t0, t1)
        return {"arm": name, "policy": policy, "requests": summary["requests"], "failed": summary["failed"],
                "latency_s": summary["latency_s"], "windows": wins,
                "slo_attainment": round(sum(w["met"] for w in wins) / max(len(wins), 1), 3),
                "node_seconds": round(node_s, 1), "seconds": round(t1 - t0, 1), "scaling_actions": actions,
                "alerts_firing_s": alerts}
    finally:
        stack.down(say=lambda _: None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slo-s", type=float, default=6.0, help="p95 latency goal per 10 s window")
    ap.add_argument("--base-rps", type=float, default=0.4)
    ap.add_argument("--burst-rps", type=float, default=2.4)
    ap.add_argument("--duration-s", type=float, default=900)
    ap.add_argument("--burst-start-s", type=float, default=30)
    ap.add_argument("--ramp-s", type=float, default=30, help="rise to the burst rate in 10 s steps over this")
    ap.add_argument("--burst-s", type=float, default=60, help="held at the burst rate this long")
    ap.add_argument("--cpu-limit", type=float, default=0.45, help="cores per node (0: nodes share all cores)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--arms", default="static min,static peak,autoscaler (no standby)",
                    help="comma-separated subset of: " + ", ".join(ARMS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "burst-replay-cpu.json")
    a = ap.parse_args()
    names = [n.strip() for n in a.arms.split(",") if n.strip()]
    unknown = [n for n in names if n not in ARMS]
    if unknown or "static peak" not in names:
        raise SystemExit(f"--arms {a.arms!r}: unknown {unknown}; static peak must run (it is the baseline)")
    arrivals = ramped(a.base_rps, a.burst_rps, a.duration_s, a.burst_start_s, a.ramp_s, a.burst_s, a.max_tokens)
    results = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="llmops-replay-") as tmp:
            r = one_arm(name, ARMS[name], arrivals, a.slo_s, Path(tmp), a.cpu_limit)
        results.append(r)
        print(f"{name}: SLO met in {r['slo_attainment']:.3f} of windows, {r['failed']} failed, "
              f"{r['node_seconds']:.0f} node-s, p95 {r['latency_s']['p95']:.2f} s")
    peak = next(r for r in results if r["arm"] == "static peak")
    for r in results:
        r["slo_vs_static_peak"] = round(r["slo_attainment"] / max(peak["slo_attainment"], 1e-9), 3)
        r["node_seconds_vs_static_peak"] = round(r["node_seconds"] / max(peak["node_seconds"], 1e-9), 3)
    goal_met = any(r["arm"].startswith("autoscaler") and r["slo_attainment"] >= 0.99
                   and r["node_seconds_vs_static_peak"] <= 0.6 for r in results)
    doc = {"benchmark": "burst_replay", "machine": f"{platform.node()} ({platform.processor() or 'cpu'}), 2 cores",
           "date": datetime.now().isoformat(timespec="seconds"), "slo_p95_s": a.slo_s, "window_s": 10,
           "cpu_limit_per_node": a.cpu_limit,
           "trace": {"base_rps": a.base_rps, "burst_rps": a.burst_rps, "duration_s": a.duration_s,
                     "burst_start_s": a.burst_start_s, "ramp_s": a.ramp_s, "burst_s": a.burst_s,
                     "max_tokens": a.max_tokens,
                     "requests": len(arrivals)},
           "goal": "autoscaler >= 0.99 of windows within SLO at <= 0.6 x static peak node-seconds",
           "goal_met": goal_met, "results": results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1))
    print(f"{'arm':<24} {'SLO met':>8} {'failed':>7} {'node-s':>8} {'SLO/peak':>9} {'cost/peak':>10}")
    for r in results:
        print(f"{r['arm']:<24} {r['slo_attainment']:>8.3f} {r['failed']:>7} {r['node_seconds']:>8.0f} "
              f"{r['slo_vs_static_peak']:>9} {r['node_seconds_vs_static_peak']:>10}")
    print(f"goal (>= 0.99 of windows at <= 0.6 x static peak's node-seconds): {'met' if goal_met else 'NOT met'}")


if __name__ == "__main__":
    main()
