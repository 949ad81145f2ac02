"""bench/run_all.py (`make bench`): run the CPU benchmarks one after another and summarise them.

    python bench/run_all.py                      # all (about 95 minutes on 2 cores)
    python bench/run_all.py --only serving,sim   # a subset
    python bench/run_all.py --summary-only       # rewrite bench/results/SUMMARY.md from the JSON files

They run one at a time (each needs the machine's cores to itself) and each prints a ratio against a baseline
measured in the same run. The demo (`llmops demo` on its own state dir) gives the canary duration, the repair
loop time and the orchestration overhead. SUMMARY.md lists every figure against its goal, with the file and date
it came from, including the GPU results (bench/gpu, run on the lent GPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable

BENCHES: dict[str, list[str]] = {
    "serving": [PY, "bench/serving_throughput.py"],
    "finetune": [PY, "bench/finetune.py"],
    "finetune-shared-prefix": [PY, "bench/finetune.py", "--ab-shared-prefix"],
    "sim": [PY, "bench/scale_sim.py"],
    "reaction": [PY, "bench/scale_reaction.py"],
    "replay": [PY, "bench/burst_replay.py"],
    "demo": [],  # built in run_demo
}


def run_demo() -> int:
    """`llmops demo` on a fresh state dir and free ports; its report carries the canary, repair and overhead."""
    import yaml

    sys.path.insert(0, str(ROOT))
    from tests.integration.conftest import free_ports_config

    tmp = Path(tempfile.mkdtemp(prefix="llmops-bench-demo-"))
    data = yaml.safe_load((ROOT / "configs" / "stack.yaml").read_text())  # the demo's own config, other ports
    data.update(free_ports_config(tmp / "state"))
    cfg_path = tmp / "stack.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    log = RESULTS / "demo-run.log"
    t = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.call([str(Path(PY).with_name("llmops")), "demo", "--config", str(cfg_path),
                              "--state-dir", str(tmp / "state")], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    wall = time.monotonic() - t
    reports = sorted((tmp / "state" / "reports").glob("demo-*.html"))
    doc = {"benchmark": "demo", "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "rc": rc, "wall_s": round(wall, 1),
           "log": str(log.relative_to(ROOT)),
           "report": str(reports[-1]) if reports else None}
    doc.update(_demo_figures(log.read_text()))
    (RESULTS / "demo-cpu.json").write_text(json.dumps(doc, indent=1))
    subprocess.call([str(Path(PY).with_name("llmops")), "stack", "down", "--state-dir", str(tmp / "state")],
                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return rc


def _demo_figures(text: str) -> dict[str, Any]:
    """The figures the demo prints (llmops/cli.py, llmops/smoke.py), read back from its log."""
    import re

    out: dict[str, Any] = {}
    stages = re.findall(r"^\s+(done|FAILED) in (\d+)s", text, re.M)
    names = re.findall(r"^\[(\d)/\d\] (.+)$", text, re.M)
    out["stages_s"] = {f"{n} {name}": int(s[1]) for (n, name), s in zip(names, stages, strict=False)}
    if m := re.search(r"v\d+: promoted in (\d+)s", text):
        out["canary_s"] = int(m.group(1))
    if m := re.search(r"orchestration overhead (\d+)s \(([\d.]+)%", text):
        out["overhead_s"], out["overhead_share"] = int(m.group(1)), float(m.group(2)) / 100
    if m := re.search(r"beside the story\s+(\d+)\s+scale/reconcile/trigger runs:\s+(\d+)s of starts,\s+(\d+)s "
                      r"outside work", text):
        out["background_runs"], out["background_starts_s"], out["background_outside_s"] = map(int, m.groups())
    if m := re.search(r"alert -> fixed version at 100%: (\d+)s", text):
        out["repair_loop_s"] = int(m.group(1))
    if m := re.search(r"exact match ([\d.]+); bad-feedback ratio", text):
        out["repair_heldout_exact_match"] = float(m.group(1))
    return out


def _record_run(name: str, rc: int, seconds: float) -> None:
    """bench/results/run-all.json: each benchmark's last exit status, wall time and date (a subset run updates
    its entries only)."""
    import platform

    doc = _load("run-all.json") or {"runs": {}}
    doc["runs"][name] = {"rc": rc, "seconds": round(seconds, 1), "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                         "machine": f"{platform.node()}, {os.cpu_count()} cores"}
    (RESULTS / "run-all.json").write_text(json.dumps(doc, indent=1))


def _load(name: str) -> dict[str, Any] | None:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.is_file() else None


def _gpu_figure(d: dict[str, Any]) -> tuple[str, bool | None]:
    """The headline figure of a GPU result (bench/gpu/*.py) and whether it meets its goal, where it has one."""
    r = d.get("ratios") or {}
    name = d.get("benchmark", "")
    if name == "gpu-finetune-methods":
        plain = r.get("qlora/lora peak memory (no gradient checkpointing, the default)") or 0
        gc, best = r.get("qlora_gc/lora_gc peak memory") or 0, r.get("qlora_gc_bf16_rest/lora_gc peak memory")
        model = str(d.get("model", "")).split(" (")[0]
        return (f"{model}: QLoRA / bf16 LoRA peak memory x{plain:.2f} (no GC), x{gc:.2f} (GC), "
                f"x{best or 0:.2f} (GC, bf16 rest)"), (best <= 0.4 if best is not None else None)
    if name == "gpu-full-2gpu":
        f_mem, f_step = r.get("fsdp2_2gpu/full_1gpu peak memory per GPU") or 0, r.get(
            "fsdp2_2gpu/full_1gpu step time") or 0
        z_mem, z_step = r.get("zero3_2gpu/full_1gpu peak memory per GPU") or 0, r.get(
            "zero3_2gpu/full_1gpu step time") or 0
        return (f"2 GPUs / 1 GPU: FSDP2 memory per GPU x{f_mem:.2f}, step x{f_step:.2f}; ZeRO-3 memory x{z_mem:.2f}, "
                f"step x{z_step:.2f}"), None
    if name == "gpu-serving-vs-hf":
        at32 = r.get("lmdeploy/hf_loop tokens/s at 32")
        levels = [f"{c} concurrent x{r.get(f'lmdeploy/hf_loop tokens/s at {c}') or 0:.1f}" for c in (1, 8, 32, 64)]
        return ", ".join(levels) + " (LMDeploy / HF loop tokens/s)", (at32 >= 5 if at32 is not None else None)
    if name == "gpu-elastic":
        runs = {r["run"]: r for r in d.get("runs", [])}
        parts = [f"{k}: alert -> in rotation {v['alert_to_rotation_s']} s" if "alert_to_rotation_s" in v
                 else f"{k}: {v.get('error', 'no figure')[:80]}" for k, v in runs.items()]
        cold = (runs.get("cold") or {}).get("alert_to_rotation_s")
        return "; ".join(parts) + (" (eager mode)" if d.get("eager_mode") else ""), (
            cold <= 45 if cold is not None else None)
    if name == "gpu-lmdeploy-node":
        levels = d.get("completions") or []
        return (f"ready {d.get('cold_start_to_ready_s', 0):.1f} s; " + ", ".join(
            f"{lv['concurrency']}: {lv['tokens_per_s']:.0f} tok/s" for lv in levels)), None
    return str(d.get("summary") or "see file"), d.get("goal_met")


def summary() -> str:
    rows: list[tuple[str, str, str, str, str]] = []  # what, figure, goal, met, source

    def add(what: str, figure: str, goal: str, met: bool | None, src: str, doc: dict[str, Any] | None) -> None:
        when = str((doc or {}).get("date", ""))[:10]
        rows.append((what, figure, goal, "-" if met is None else ("yes" if met else "**no**"), f"`{src}` {when}"))

    if d := _load("serving-throughput-cpu.json"):
        r = d["engine_vs_loop"]
        add("CPU engine (continuous batching) vs HF generate loop, tokens/s",
            ", ".join(f"{k} concurrent x{v}" for k, v in r.items()), d["goal"], d["goal_met"],
            "serving-throughput-cpu.json", d)
    if d := _load("scale-reaction-cpu.json"):
        runs = {r["warm_standby"]: r["threshold_to_rotation_s"] for r in d["runs"]}
        add("scale reaction, threshold -> in rotation", f"warm {runs.get(1)} s, cold {runs.get(0)} s (x"
            f"{d.get('ratio_cold_vs_warm')})", "<= 10 s warm, <= 30 s cold",
            (runs.get(1) or 99) <= 10 and (runs.get(0) or 99) <= 30, "scale-reaction-cpu.json", d)
    if d := _load("burst-replay-cpu.json"):
        auto = [r for r in d["results"] if r["arm"].startswith("autoscaler")]
        fig = "; ".join(f"{r['arm']}: {r['slo_attainment']} of windows at {r['node_seconds_vs_static_peak']}x"
                        for r in d["results"])
        add("burst replay (SLO windows, node-seconds vs static peak)", fig, d["goal"], d["goal_met"] if auto
            else None, "burst-replay-cpu.json", d)
    if d := _load("scale-sim.json"):
        fig = "; ".join(f"{r['policy']}: {r['slo_attainment']:.3f} at {r['node_seconds_vs_static_peak']}x"
                        for r in d["results"])
        add("200-node simulation on the Azure trace", fig, "compare SLO and cost", None, "scale-sim.json", d)
    if d := _load("finetune-cpu.json"):
        res = d["results"]
        fig = ", ".join(f"{k} {v['s_per_step']:.2f} s {v['peak_rss_mb']:.0f} MB" for k, v in res.items())
        if cut := d.get("ratios", {}).get("lora-full-forward/lora"):
            fig += f"; without the frozen-prefix cache: whole run x{cut['total']:.2f}"
        add("fine-tune step on CPU (s/step, peak RSS MB)", fig, "-", None, "finetune-cpu.json", d)
    if d := _load("finetune-shared-prefix-cpu.json"):
        add("shared prompt prefix vs plain forward (LoRA fwd+bwd, one process)",
            f"{d['shared_s_per_batch']:.2f} vs {d['plain_s_per_batch']:.2f} s/batch (x{d['ratio']:.2f}; "
            f"{d['prefix_tokens']} of {d['mean_tokens']:.0f} tokens shared)", "-", None,
            "finetune-shared-prefix-cpu.json", d)
    if d := _load("demo-cpu.json"):
        add("demo wall time", f"{d['wall_s'] / 60:.1f} min (rc {d['rc']})", "< 15 min",
            d["rc"] == 0 and d["wall_s"] < 900, "demo-cpu.json", d)
        if "canary_s" in d:
            add("canary duration (10 -> 50 -> 100%)", f"{d['canary_s']} s", "-", None, "demo-cpu.json", d)
        if "repair_loop_s" in d:
            add("repair loop (RegressionDetected firing -> fixed version at 100%)", f"{d['repair_loop_s']} s",
                "<= 300 s", d["repair_loop_s"] <= 300, "demo-cpu.json", d)
        if "overhead_share" in d:
            fig = f"{d['overhead_share']:.1%} ({d['overhead_s']} s)"
            if "background_runs" in d:
                fig += (f"; beside the story {d['background_runs']} scale/reconcile/trigger runs took "
                        f"{d['background_starts_s']} s of starts and {d['background_outside_s']} s outside work")
            add("orchestration overhead of the demo (stack services, and the flow runs the story waits on: their "
                "starts and time outside work tasks)", fig, "<= 10%", d["overhead_share"] <= 0.10, "demo-cpu.json", d)
    for p in sorted(RESULTS.glob("gpu-*.json")):
        d = json.loads(p.read_text())
        figure, met = _gpu_figure(d)
        add(f"GPU ({d.get('device', '?')}): {d.get('benchmark', p.stem)}", figure, d.get("goal", "-"), met,
            p.name, d)
    lines = ["# Benchmark summary", "", "Written by `python bench/run_all.py` (`make bench`). Each figure is a ratio "
             "against a baseline measured in the same run; the date is the run's.", "",
             "| what | figure | goal | met | source |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    if runs := (_load("run-all.json") or {}).get("runs"):
        lines += ["", "Wall time of each CPU benchmark's last run through this script:", "",
                  "| benchmark | exit | wall time | date | machine |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {n} | {r['rc']} | {r['seconds'] / 60:.1f} min | {r['date'][:16]} | {r['machine']} |"
                  for n, r in runs.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(BENCHES))
    ap.add_argument("--summary-only", action="store_true")
    a = ap.parse_args()
    names = [n.strip() for n in a.only.split(",") if n.strip()] or list(BENCHES)
    if unknown := [n for n in names if n not in BENCHES]:
        raise SystemExit(f"--only: unknown {unknown}; choose from {list(BENCHES)}")
    failed = []
    if not a.summary_only:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for n in names:
            print(f"== {n}", flush=True)
            t = time.monotonic()
            rc = run_demo() if n == "demo" else subprocess.call(BENCHES[n], cwd=ROOT, env=env)
            print(f"== {n}: exit {rc} after {time.monotonic() - t:.0f}s", flush=True)
            _record_run(n, rc, time.monotonic() - t)
            if rc != 0:
                failed.append(n)
    text = summary()
    (RESULTS / "SUMMARY.md").write_text(text)
    print(text)
    if failed:
        raise SystemExit(f"failed: {failed}")


if __name__ == "__main__":
    main()
