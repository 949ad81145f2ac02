"""GPU elasticity: the project's own stack scales LMDeploy nodes, one per GPU, on the lent multi-GPU machine.

    python3 bench/gpu/elastic.py --out-dir $OUT [--runs cold,warm] [--eager]

Everything runs as on the CPU stack (bench/scale_reaction.py, whose `one_run` this calls): `llmops stack up`'s
services on loopback (SeaweedFS, MLflow, Prefect server and worker, Prometheus, Alertmanager, HAProxy, the webhook
receiver); version 1 of the model is registered in MLflow from `model.base_dir` (a random llama of SmolLM2-135M's
shape, built here: no hub there) and every node pulls it through the model cache and checks its hash; nodes are
LMDeploy PyTorch-backend engines started by `LocalProcessLauncher`, each pinned to its own GPU (`serving.gpus`,
llmops/pool/gpus.py). A burst from the load generator goes through HAProxy; the Backlog / HighLatency alert goes
Prometheus -> Alertmanager -> receiver -> Prefect event -> the `scale` deployment, whose decision adds the node.
The scheduled reconcile is paused during the burst, so the alert path alone acts.

Runs (each on a fresh stack): `cold` = min 1, max 2, no standby: the scale flow starts a node on the free GPU;
`warm` = the same with one warm standby (started by reconcile, weight 0, on the second GPU): the flow promotes it.
Reported per run: every stage from the burst's start (threshold crossed, alert firing, event, flow run created and
started, decision, in rotation), alert -> in rotation (goal <= 45 s cold), and for the cold node where its start
went: process spawned, interpreter up, hash verified, LMDeploy imported, engine built (weights + warm-up), ready.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.scale_reaction import one_run  # noqa: E402

# One LMDeploy node takes 32 requests at once (HAProxy maxconn); more wait in HAProxy's queue. Backlog (> 50 waiting)
# is the GPU default; the mean-latency threshold sits above an idle node's latency (a random model's 64-token answer
# takes ~0.3 s at 1 concurrent, ~0.6 s at 32), not at the 200 ms default. The burst (80 req/s x 64 tokens, ~5k
# tokens/s) is about 1.3x what one node served at 32 concurrent on an H200 (bench/results/gpu-lmdeploy-node-*.json).
POLICY = {"min_replicas": 1, "max_replicas": 2, "high_latency_s": 2.0, "backlog": 50,
          "target_in_flight_per_node": 32, "alert_for_s": 2, "up_cooldown_s": 15, "down_cooldown_s": 600,
          "max_step": 1, "node_price_per_hour": 1.0, "budget_per_hour": 10.0, "scale_ahead_s": 20}
LOAD = {"base_rps": 2.0, "burst_rps": 80.0, "duration_s": 150, "burst_start_s": 10.0, "burst_s": 120,
        "max_tokens": 64}
MARK = re.compile(r"llmops-node stage=(?P<stage>[^=]+?) t=(?P<t>[0-9.]+)")


def node_stages(stack: Any, action: dict[str, Any]) -> dict[str, Any]:
    """Where the scale flow's cold node spent its start: from the pool state (spawn time) and the node log."""
    started = action.get("started") or []
    if not started:
        return {}
    name = started[0]
    node = next((n for n in stack.pool().nodes() if n.name == name), None)
    rec = node.process() if node else None
    log = stack.cfg.state_dir / "nodes" / name / "node.log"
    marks = {m["stage"]: float(m["t"]) for m in MARK.finditer(log.read_text())} if log.is_file() else {}
    decision = next((at for stage, at in action["timeline"] if stage == "decision"), None)
    ready = next((at for stage, at in action["timeline"] if "in rotation" in stage), None)
    points = {"decision": decision, "process spawned": rec.create_time if rec else None, **marks, "in rotation": ready}
    known = [(k, v) for k, v in points.items() if v is not None]
    steps = {f"{a} -> {b}": round(tb - ta, 2) for (a, ta), (b, tb) in zip(known, known[1:], strict=False)}
    tail = log.read_text().splitlines()[-40:] if log.is_file() else []
    return {"cold_node": name, "cold_node_gpu": node.gpu if node else None, "cold_node_steps_s": steps,
            "cold_node_log_tail": tail}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--runs", default="cold,warm")
    ap.add_argument("--eager", action="store_true", help="LMDeploy --eager-mode (no CUDA-graph capture)")
    ap.add_argument("--burst-rps", type=float, default=LOAD["burst_rps"])
    ap.add_argument("--shared-gpu", action="store_true", help="on a 1-GPU machine: both nodes share GPU 0 (no "
                    "one-node-per-GPU pinning); the scale path and the cold start are the same")
    ap.add_argument("--cpu", action="store_true", help="a dry run of this script on CPU nodes (transformers "
                    "engine, a tiny random model, the CPU bench's policy and load): checks the plumbing, no GPU figure")
    a = ap.parse_args()
    policy, load = POLICY, {**LOAD, "burst_rps": a.burst_rps}

    import torch

    from llmops.tinymodel import build_tiny_model

    n_gpus = torch.cuda.device_count()
    if n_gpus < 2 and not (a.cpu or (a.shared_gpu and n_gpus == 1)):
        raise SystemExit(f"this bench needs 2 GPUs (one node each); torch sees {n_gpus}: use nvidia-h200-x2, or "
                         "--shared-gpu on one GPU")
    shared = n_gpus == 1 and not a.cpu
    card = torch.cuda.get_device_name(0) if n_gpus else "cpu (dry run)"
    a.out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="llmops-gpu-elastic-"))
    t = time.perf_counter()
    if a.cpu:
        from bench.scale_reaction import LOAD as CPU_LOAD
        from bench.scale_reaction import POLICY as CPU_POLICY

        model_dir = build_tiny_model(work / "model")
        serving: dict[str, Any] = {"max_concurrency_per_node": 2}
        policy = {**CPU_POLICY, "min_replicas": 1, "max_replicas": 2}
        load = {**CPU_LOAD, "burst_rps": a.burst_rps if a.burst_rps != LOAD["burst_rps"] else CPU_LOAD["burst_rps"]}
    else:
        model_dir = build_tiny_model(work / "model", hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536)
        serving = {"engine": "lmdeploy", "lmdeploy_python": sys.executable, "gpus": [] if shared else [0, 1],
                   "nice": 0,
                   "max_concurrency_per_node": 32, "start_timeout_s": 400, "lmdeploy_eager_mode": a.eager,
                   "lmdeploy_cache_max_entry_count": 0.1, "lmdeploy_max_batch_size": 64}
    print(f"model built in {time.perf_counter() - t:.1f} s: {model_dir}", flush=True)
    out: dict[str, Any] = {"benchmark": "gpu-elastic", "device": f"{n_gpus}x {card}", "shared_gpu": shared,
                           "host": platform.node(),
                           "date": time.strftime("%Y-%m-%d"), "engine": "lmdeploy pytorch backend",
                           "eager_mode": a.eager, "model": "random llama, SmolLM2-135M shape, bf16",
                           "policy": policy, "load": load, "serving": serving, "runs": []}
    tag = f"{'-shared' if shared else ''}{'-eager' if a.eager else ''}-{a.runs.replace(',', '-')}"
    path = a.out_dir / ("gpu-elastic-cpu-dry-run.json" if a.cpu else f"gpu-elastic{tag}.json")
    for run in a.runs.split(","):
        standby = {"cold": 0, "warm": 1}[run]
        t = time.perf_counter()
        print(f"--- run {run}: warm_standby={standby}", flush=True)
        (work / run).mkdir()
        try:
            r = one_run(standby, work / run, policy=policy, serving=serving, model={"base_dir": str(model_dir)},
                        load=load, wait_s=300, inspect=node_stages,
                        say=lambda m: print(m, flush=True))
        except (Exception, SystemExit) as err:  # keep the other run's figures; say what broke
            r = {"warm_standby": standby, "error": f"{type(err).__name__}: {err}"}
        r["run"], r["wall_s"] = run, round(time.perf_counter() - t, 1)
        st = r.get("stages_s_after_burst", {})
        if st.get("in_rotation") is not None and st.get("alert_firing") is not None:
            r["alert_to_rotation_s"] = round(st["in_rotation"] - st["alert_firing"], 2)
        out["runs"].append(r)
        path.write_text(json.dumps(out, indent=1))
        print(json.dumps({k: v for k, v in r.items() if k not in ("action", "cold_node_log_tail")}, indent=1),
              flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
