"""Fine-tune step time and peak memory by method on SmolLM2-135M (CPU here; the same code on GPU).

    python bench/finetune.py [--steps 6] [--batch 16] [--base DIR] [--arms lora,dora]
    python bench/finetune.py --ab-shared-prefix     # the shared prompt prefix vs the plain forward, one process

Each method runs in a fresh process (so peak RSS is its own): lora, qlora, dora, same data (the first `--examples`
curated examples, several epochs of them as a real fine-tune has), same adapter (r=16, top 10 layers), same batch.
A fourth arm, `lora-full-forward`, turns the frozen-prefix cache and the shared prompt prefix off
(`hyper.cache_frozen_prefix: false`, `hyper.share_prompt_prefix: false`): every step then runs the 20 frozen layers
and every example's system turn too. A fifth, `lora-shared-prefix`, is the path of a run over the data about once
(the demo's): no frozen-prefix cache, the tokens every example starts with run once per batch. Prints s/step, the
whole run's time (the cache's one pass included) and peak memory with the ratios to lora measured in this run, and
writes bench/results/finetune-<host>.json. Arms in separate processes differ by ~10% from run to run on this
machine; `--ab-shared-prefix` compares the shared prompt prefix with the plain forward in one process instead.
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


def ab_shared_prefix(base: Path, batch: int, n_batches: int = 10, rounds: int = 4) -> dict[str, float]:
    """The shared prompt prefix against the plain forward in one process: the same `n_batches` of the shipped data
    (LoRA on the top 10 layers, lead-token loss as shipped), forward + backward, the two paths alternating `rounds`
    times so that the machine's drift hits both alike. Per-process arms differ by ~10% from run to run here."""
    import torch

    from llmops.data.curated import load_curated
    from llmops.train.adapters import load_for_training
    from llmops.train.config import Hyper, LoraSettings, Method, TrainConfig
    from llmops.train.loop import batches, completion_loss, encode
    from llmops.train.shared_prefix import find_shared_prefix

    cfg = TrainConfig(method=Method.LORA, lora=LoraSettings(last_layers=10),
                      hyper=Hyper(max_steps=1, batch_size=batch)).resolved()
    torch.set_num_threads(cfg.hyper.torch_threads)
    model, tok = load_for_training(cfg, base)
    data = [encode(tok, e, cfg.hyper.max_length) for e in load_curated().train]
    shared = find_shared_prefix(data)
    if shared is None:
        sys.exit("the shipped data has no shared prompt prefix")
    it = batches(data, batch, 0, tok.pad_token_id)
    sample = [next(it) for _ in range(n_batches)]
    spent = {"plain": 0.0, "shared": 0.0}
    for _ in range(rounds):
        for mode in spent:
            t = time.perf_counter()
            for b in sample:
                completion_loss(model, b, cfg.hyper.lead_tokens, cfg.hyper.lead_weight,
                                shared=shared if mode == "shared" else None).backward()
            spent[mode] += time.perf_counter() - t
    n = n_batches * rounds
    mean_len = sum(len(e.input_ids) for e in data) / len(data)
    return {"plain_s_per_batch": spent["plain"] / n, "shared_s_per_batch": spent["shared"] / n,
            "ratio": spent["shared"] / spent["plain"], "prefix_tokens": shared.length, "mean_tokens": mean_len,
            "batches": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--examples", type=int, default=64, help="curated examples to train on (steps*batch/examples "
                    "epochs; the demo's fine-tune does about 3)")
    ap.add_argument("--base", type=Path, default=None, help="model dir (default: the converted SmolLM2)")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms to run (lora always runs)")
    ap.add_argument("--ab-shared-prefix", action="store_true", help="only the in-process A/B of the shared prompt "
                    "prefix against the plain forward (writes bench/results/finetune-shared-prefix-<host>.json)")
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
    if args.ab_shared_prefix:
        import torch

        ab = ab_shared_prefix(args.base, args.batch)
        print(f"shared prompt prefix ({ab['prefix_tokens']} of {ab['mean_tokens']:.0f} tokens): "
              f"{ab['shared_s_per_batch']:.3f} s/batch vs plain {ab['plain_s_per_batch']:.3f} "
              f"(x{ab['ratio']:.2f}, {ab['batches']} batches each, alternating)")
        dev = "gpu" if torch.cuda.is_available() else "cpu"
        out = ROOT / "bench" / "results" / f"finetune-shared-prefix-{dev}.json"
        out.write_text(json.dumps({"benchmark": "finetune-shared-prefix", "model": "SmolLM2-135M-Instruct",
                                   "batch": args.batch, "device": dev, "host": platform.node(),
                                   "date": time.strftime("%Y-%m-%d"), **ab}, indent=2))
        print(f"wrote {out.relative_to(ROOT)}")
        return
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
