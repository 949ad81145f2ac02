"""Fine-tune step time and peak memory by method on SmolLM2-135M (CPU here; the same code on GPU).

    python bench/finetune.py [--steps 6] [--batch 16] [--base DIR]

Each method runs in a fresh process (so peak RSS is its own): lora, qlora, dora, same data (the first `--examples`
curated examples, several epochs of them as a real fine-tune has), same adapter (r=16, top 10 layers), same batch.
A fourth arm, `lora-full-forward`, turns the frozen-prefix cache and the shared prompt prefix off
(`hyper.cache_frozen_prefix: false`, `hyper.share_prompt_prefix: false`): every step then runs the 20 frozen layers
and every example's system turn too. A fifth, `lora-shared-prefix`, is the path of a run over the data about once
(the demo's): no frozen-prefix cache, the tokens every example starts with run once per batch. Prints s/step, the whole run's time (the cache's one pass included) and
peak memory with the ratios to lora measured in this run, and writes bench/results/finetune-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


ARMS = {"lora": ("lora", True, True), "qlora": ("qlora", True, True), "dora": ("dora", True, True),
        "lora-full-forward": ("lora", False, False), "lora-shared-prefix": ("lora", False, True)}


def one(arm: str, steps: int, batch: int, examples: int, base: Path) -> dict[str, float]:
    import torch

    from llmops.data.curated import load_curated
    from llmops.train.adapters import train_adapter
    from llmops.train.config import Hyper, LoraSettings, Method, TrainConfig

    method, cache, share = ARMS[arm]
    data = list(load_curated().train)[:examples]
    cfg = TrainConfig(method=Method(method), lora=LoraSettings(last_layers=10),
                      hyper=Hyper(max_steps=steps, batch_size=batch, checkpoint_every=10_000,
                                  cache_frozen_prefix=cache, share_prompt_prefix=share)).resolved()
    times: list[float] = []
    last = [time.perf_counter()]

    def sink(_row: dict[str, float], _step: int) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    out = Path(f"/tmp/llmops-bench-{arm}")
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    last[0] = t0
    train_adapter(cfg, base, data, [], out, sink)
    steady = times[1:] or times  # the first step includes warm-up
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    return {"s_per_step": sum(steady) / len(steady), "first_step_s": times[0], "total_s": time.perf_counter() - t0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_gpu_mb": peak_gpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--examples", type=int, default=64, help="curated examples to train on (steps*batch/examples "
                    "epochs; the demo's fine-tune does about 3)")
    ap.add_argument("--base", type=Path, default=None, help="model dir (default: the converted SmolLM2)")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms to run (lora always runs)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.batch, args.examples, args.base)))
        return
    if args.base is None:
        from llmops.basemodel import convert_base_model

        args.base = convert_base_model().path
    if not (args.base / "model.safetensors").is_file():
        sys.exit(f"no model at {args.base}: give a Hugging Face model directory")
    results = {}
    arms = ["lora", *[a for a in args.arms.split(",") if a and a != "lora"]]
    if unknown := [a for a in arms if a not in ARMS]:
        sys.exit(f"unknown arm(s) {unknown}: choose from {', '.join(ARMS)}")
    for arm in arms:
        r = subprocess.run([sys.executable, __file__, "--one", arm, "--steps", str(args.steps), "--batch",
                            str(args.batch), "--examples", str(args.examples), "--base", str(args.base)],
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            sys.exit(f"{arm} failed:\n{r.stderr[-3000:]}")
        results[arm] = json.loads(r.stdout.strip().splitlines()[-1])
        r_ = results[arm]
        print(f"{arm:18s} {r_['s_per_step']:.2f} s/step, {r_['total_s']:.1f} s in all, peak RSS "
              f"{r_['peak_rss_mb']:.0f} MB", flush=True)
    lora = results["lora"]
    ratios = {f"{m}/lora": {"s_per_step": results[m]["s_per_step"] / lora["s_per_step"],
                            "total": results[m]["total_s"] / lora["total_s"],
                            "peak_rss": results[m]["peak_rss_mb"] / lora["peak_rss_mb"]} for m in arms if m != "lora"}
    if {"lora-full-forward", "lora-shared-prefix"} <= results.keys():
        full, shared = results["lora-full-forward"], results["lora-shared-prefix"]
        ratios["lora-shared-prefix/lora-full-forward"] = {
            "s_per_step": shared["s_per_step"] / full["s_per_step"], "total": shared["total_s"] / full["total_s"],
            "peak_rss": shared["peak_rss_mb"] / full["peak_rss_mb"]}
    for k, v in ratios.items():
        print(f"{k}: step time x{v['s_per_step']:.2f}, whole run x{v['total']:.2f}, peak memory x{v['peak_rss']:.2f}")
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU {platform.processor() or 'x86_64'}"
    doc = {"benchmark": "finetune", "model": "SmolLM2-135M-Instruct", "batch": args.batch, "steps": args.steps,
           "examples": args.examples,
           "adapter": "r=16, alpha=32, top 10 layers, all projections", "device": device,
           "threads": 2, "host": platform.node(), "date": time.strftime("%Y-%m-%d"), "results": results,
           "ratios": ratios}
    part = "" if set(arms) == set(ARMS) else "-" + "-".join(arms)  # a subset does not overwrite the full run
    out = ROOT / "bench" / "results" / f"finetune-{'gpu' if torch.cuda.is_available() else 'cpu'}{part}.json"
    out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
