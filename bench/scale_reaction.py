"""bench/scale_reaction.py: how long from a burst to new capacity serving, stage by stage, on the real stack.

    python bench/scale_reaction.py            # writes bench/results/scale-reaction-cpu.json

Runs twice on a fresh local stack of its own (free loopback ports, temp state dir): once with one warm standby node,
once without (cold). Each run sends a burst through the gateway and time-stamps, from the burst's start:
threshold crossed (first Prometheus sample of the recording rule over its threshold), alert firing (Prometheus
`ALERTS`), flow started (the alert-triggered `scale` run's start in Prefect), decision taken, node in rotation
(promoted standby, or cold node ready and added to HAProxy). The scheduled reconcile is paused during the burst, so
the alert path alone acts. Goals on CPU: <= 10 s with warm standby, <= 30 s cold (reported from the threshold
crossing and from the burst's start). The cold run's ratio against the warm one is printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.stack.launcher import Stack  # noqa: E402
from llmops.loadgen.runner import run_load  # noqa: E402
from llmops.loadgen.schedule import burst  # noqa: E402
from llmops.pool.state import NodeStatus, PoolStore  # noqa: E402
from llmops.prefect_api import PrefectApi  # noqa: E402
from tests.integration.conftest import free_ports_config, write_config  # noqa: E402

POLICY = {"min_replicas": 2, "max_replicas": 4, "high_latency_s": 3.0, "backlog": 4,
          "target_in_flight_per_node": 4, "alert_for_s": 2, "up_cooldown_s": 15, "down_cooldown_s": 15,
          "max_step": 2, "node_price_per_hour": 1.0, "budget_per_hour": 5.0}


def first_true(prom: str, expr: str, start: float, end: float) -> float | None:
    r = httpx.get(f"{prom}/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": "1s"},
                  timeout=10).json()
    times = [float(v[0]) for s in r["data"]["result"] for v in s["values"] if float(v[1]) > 0]
    return min(times) if times else None


LOAD = {"base_rps": 0.5, "burst_rps": 5.0, "duration_s": 60, "burst_start_s": 5.0, "burst_s": 40, "max_tokens": 16}


def one_run(standby: int, workdir: Path, policy: dict[str, Any] | None = None,
            serving: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
            load: dict[str, Any] | None = None, wait_s: float = 120,
            inspect: Callable[[Stack, dict[str, Any]], dict[str, Any]] | None = None,
            say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """One burst on a fresh stack; `policy`, `serving`, `model` and `load` override the CPU defaults above (the
    GPU run, bench/gpu/elastic.py). `inspect(stack, action)` adds its findings before the stack goes down."""
    policy = {**(policy or POLICY), "warm_standby": standby}
    ld = {**LOAD, **(load or {})}
    extra: dict[str, Any] = {"model": model} if model else {}
    cfg_data = free_ports_config(workdir / "state", scaling=policy,
                                 serving=serving or {"max_concurrency_per_node": 2}, **extra)
    stack = Stack(write_config(workdir, cfg_data))
    stack.up(say=say)
    try:
        ep = stack.ep
        api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
        if standby:  # reconcile starts it: this run, or the scheduled one if that one is running (one at a time)
            api.run_deployment("reconcile", "reconcile")
            deadline = time.monotonic() + max(300.0, wait_s)
            while not any(n.standby and n.status is NodeStatus.SERVING for n in stack.pool().nodes()):
                if time.monotonic() > deadline:
                    raise SystemExit("reconcile started no warm standby; see the stack logs")
                time.sleep(1)
            say("warm standby started")
        # only the alert path may act during the burst: the scheduled reconcile is paused (as "pause scaling")
        api.set_paused("reconcile", "reconcile", True)
        time.sleep(10)  # a quiet baseline
        store = PoolStore(stack.cfg.state_dir / "pool" / "pool.json")
        before = len(store.read().scaling_of(ep.model_name).actions)
        arrivals = burst(ld["base_rps"], ld["burst_rps"], ld["duration_s"], ld["burst_start_s"], ld["burst_s"],
                         max_tokens=ld["max_tokens"])
        wall0 = time.time()
        t_burst = wall0 + ld["burst_start_s"]
        say(f"burst: {ld}")
        result: dict[str, Any] = {}
        th = threading.Thread(target=lambda: result.update(run_load(f"{ep.gateway_url}/v1", ep.model_name, arrivals,
                                                                    timeout_s=300)))
        th.start()
        action = None
        while time.time() - wall0 < wait_s and action is None:
            outs = [a for a in store.read().scaling_of(ep.model_name).actions[before:]
                    if a["action"] == "scale_out" and (a["promoted"] or a["started"]) and a.get("run_id")]
            action = outs[0] if outs else None
            time.sleep(1)
        th.join()
        if action is None:
            raise SystemExit(f"no scale-out happened within {wait_s:.0f} s of the burst; see the stack logs")
        sel = f'{{model="{ep.model_name}"}}'
        crossed = first_true(ep.prometheus_url, f"(llmops:pool_waiting{sel} > {policy['backlog']}) or "
                             f"(llmops:pool_latency_mean:10s{sel} > {policy['high_latency_s']})", t_burst, time.time())
        firing = first_true(ep.prometheus_url, f'ALERTS{{alertstate="firing",pool="{ep.model_name}",'
                            f'alertname=~"HighLatency|Backlog|Saturated|Rising"}}', t_burst, time.time())
        run: dict[str, Any] = api.json("GET", f"/flow_runs/{action['run_id']}")
        flow_started = datetime.fromisoformat(run["start_time"]).timestamp() if run.get("start_time") else None
        run_created = datetime.fromisoformat(run["created"]).timestamp()
        event_at = None  # when the receiver turned Alertmanager's call into the Prefect event that triggered the run
        if run.get("parameters", {}).get("event_id"):
            since = datetime.fromtimestamp(t_burst - 60, UTC).isoformat()
            until = datetime.fromtimestamp(time.time() + 60, UTC).isoformat()
            ev = api.events({"filter": {"id": {"id": [run["parameters"]["event_id"]]},
                                        "occurred": {"since": since, "until": until}}})
            event_at = next((datetime.fromisoformat(str(e["occurred"])).timestamp() for e in ev), None)
        stages = {"threshold_crossed": crossed, "alert_firing": firing, "event_posted": event_at,
                  "flow_run_created": run_created, "flow_started": flow_started,
                  "decision": next((at for stage, at in action["timeline"] if stage == "decision"), None),
                  "in_rotation": min((at for stage, at in action["timeline"] if "in rotation" in stage), default=None)}
        rel = {k: (round(v - t_burst, 2) if v else None) for k, v in stages.items()}
        out = {"warm_standby": standby, "stages_s_after_burst": rel, "action": action, "t_burst": t_burst,
               "load": {k: result.get(k) for k in ("requests", "ok", "failed", "latency_s")}}
        if inspect is not None:
            out.update(inspect(stack, action))
        return out
    finally:
        stack.down(say=lambda _: None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale-reaction-cpu.json")
    a = ap.parse_args()
    runs = []
    for standby in (1, 0):
        with tempfile.TemporaryDirectory(prefix="llmops-reaction-") as tmp:
            runs.append(one_run(standby, Path(tmp)))
        r = runs[-1]
        print(f"warm_standby={standby}: " + ", ".join(f"{k} +{v}s" for k, v in r["stages_s_after_burst"].items()))
    warm, cold = (r["stages_s_after_burst"]["in_rotation"] for r in runs)
    for r in runs:
        st = r["stages_s_after_burst"]
        r["threshold_to_rotation_s"] = (round(st["in_rotation"] - st["threshold_crossed"], 2)
                                        if st["in_rotation"] is not None and st["threshold_crossed"] is not None
                                        else None)
    out = {"benchmark": "scale_reaction", "machine": f"{platform.node()} ({platform.processor() or 'cpu'}), 2 cores",
           "date": datetime.now().isoformat(timespec="seconds"), "policy": POLICY, "runs": runs,
           "goals_s": {"warm": 10, "cold": 30},
           "ratio_cold_vs_warm": round(cold / warm, 2) if warm and cold else None}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(f"burst -> capacity in rotation: warm standby {warm} s, cold {cold} s; cold / warm = "
          f"{out['ratio_cold_vs_warm']}; threshold crossed -> in rotation: warm "
          f"{runs[0]['threshold_to_rotation_s']} s (goal 10), cold {runs[1]['threshold_to_rotation_s']} s (goal 30)")


if __name__ == "__main__":
    main()
