"""GPU fine-tuning by method through the project's training code: QLoRA vs bf16 LoRA vs full fine-tuning on one
GPU (issue 8, part 1) and, on a machine with 2 GPUs, FSDP2 and DeepSpeed ZeRO-3 full fine-tuning on both
(part 2). Every run is its own process, so each peak (torch.cuda.max_memory_allocated) is its own.

Run on the lent GPU machine (bench/gpu/README.md has the exact device command):
    python3 bench/gpu/finetune_methods.py --out-dir $OUT

The base is a random llama with TinyLlama-1.1B's shapes (hidden 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632,
vocabulary 32000, untied LM head: 1.10 B parameters, bf16) and the offline 512-token tokenizer of
llmops.tinymodel; every example is truncated to exactly `--seq` tokens, so every step sees batch x seq tokens.
- adapters (llmops.train.adapters.train_adapter): r=16, alpha 32, all 7 projections of all layers; qlora is NF4
  with double quantization and bf16 compute; with and without gradient checkpointing.
- full (llmops.train.full.launch_full, configs/launch/fsdp.yaml and zero3.json): AdamW on every weight; FSDP2
  keeps float32 master weights and computes in bf16, ZeRO-3 (HF Trainer + DeepSpeed) does the same with its bf16
  mode. full_1gpu is FSDP2 on one rank; hyper.batch_size is the global batch, so 2 ranks take seq x batch/2 each.
Writes gpu-finetune-methods-<card>.json and, with 2 GPUs, gpu-full-2gpu-<card>.json into --out-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TINYLLAMA = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
             "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048,
             "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
LLAMA7B = {**TINYLLAMA, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096}  # Llama-2-7B's
SHAPES = {"tinyllama-1.1b": TINYLLAMA, "llama-7b": LLAMA7B}
TINY = {**TINYLLAMA, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 1000}
# name: (kind, settings)
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("adapter", {"method": "lora", "gc": False}),
    "qlora": ("adapter", {"method": "qlora", "gc": False}),
    "lora_gc": ("adapter", {"method": "lora", "gc": True}),
    "qlora_gc": ("adapter", {"method": "qlora", "gc": True}),
    "qlora_gc_bf16_rest": ("adapter", {"method": "qlora", "gc": True, "upcast": False}),
    "full_1gpu": ("full", {"method": "full_fsdp", "nproc": 1}),
    "fsdp2_2gpu": ("full", {"method": "full_fsdp", "nproc": 2}),
    "zero3_2gpu": ("full", {"method": "full_zero3", "nproc": 2}),
}
ONE_GPU = ["lora", "qlora", "lora_gc", "qlora_gc", "qlora_gc_bf16_rest", "full_1gpu"]
TWO_GPU = ["fsdp2_2gpu", "zero3_2gpu"]
GIB = 2**30


def build_base(out: Path, shape: str) -> dict[str, Any]:
    """Tokenizer of llmops.tinymodel + a random bf16 llama of TinyLlama-1.1B's shapes, initialised on the GPU."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmops.tinymodel import build_tiny_model

    t = time.perf_counter()
    build_tiny_model(out)  # tokenizer + chat template (its 2-layer model is replaced below)
    for f in out.glob("model*.safetensors*"):
        f.unlink()
    tok = AutoTokenizer.from_pretrained(out)
    shapes = TINY if os.environ.get("LLMOPS_BENCH_TINY") else SHAPES[shape]  # TINY: a CPU check of this script
    cfg = LlamaConfig(**shapes, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return {"params": sum(p.numel() for p in model.parameters()), "build_s": time.perf_counter() - t}


def examples(n: int = 64, seed: int = 0) -> list[Any]:
    """Chat examples whose completion is far longer than any --seq: each is truncated to exactly seq tokens."""
    from llmops.data.schema import ChatExample, Message
    from llmops.tinymodel import _CORPUS

    sentences = sorted(set(_CORPUS))
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = " ".join(rng.choice(sentences) for _ in range(60))[:7000]
        out.append(ChatExample(prompt=(Message(role="user", content=f"Question {i}: tell me about refunds."),),
                               completion=words))
    return out


def adapter_run(base: Path, work: Path, s: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from llmops.train.adapters import train_adapter
    from llmops.train.config import Hyper, LoraSettings, Method, QuantSettings, TrainConfig

    method = Method(s["method"])
    quant = QuantSettings(upcast_non_quantized=s.get("upcast", True)) if method is Method.QLORA else None
    cfg = TrainConfig(method=method, lora=LoraSettings(gradient_checkpointing=s["gc"]), quant=quant,
                      hyper=Hyper(max_steps=a.steps, batch_size=a.batch, max_length=a.seq, learning_rate=1e-3,
                                  warmup_steps=2, checkpoint_every=100_000, torch_threads=4)).resolved()
    times: list[float] = []
    mem: dict[str, int] = {}
    last = [0.0]

    def sink(_row: dict[str, float], step: int) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        if step == 1:  # weights + adapter + optimizer state, between steps
            mem["resident_after_step1_bytes"] = int(torch.cuda.memory_allocated()) if cuda else 0

    cuda = torch.cuda.is_available()
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    last[0] = t0
    _, res = train_adapter(cfg, base, examples(), [], work, sink)
    steady = times[2:] or times  # the first steps include warm-up (allocator, kernels' autotuning)
    peak = int(torch.cuda.max_memory_allocated()) if cuda else 0
    return {"method": method.value, "gradient_checkpointing": s["gc"],
            "quant": cfg.quant.model_dump() if cfg.quant else None,
            "peak_mem_bytes": peak, **mem, "peak_mem_gib": peak / GIB,
            "s_per_step": statistics.median(steady), "step_seconds": times, "tokens_per_step": a.batch * a.seq,
            "losses": list(res.losses), "total_s": time.perf_counter() - t0}


def full_run(base: Path, work: Path, s: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    from llmops.train.config import FullSettings, Hyper, Method, TrainConfig
    from llmops.train.full import default_launch_config, launch_full

    method = Method(s["method"])
    cfg = TrainConfig(method=method, lora=None, full=FullSettings(nproc=s["nproc"]),
                      hyper=Hyper(max_steps=a.full_steps, batch_size=a.batch, max_length=a.seq,
                                  learning_rate=1e-4, warmup_steps=3, checkpoint_every=100_000, seed=0))
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    res = launch_full(cfg, base, examples(), work, timeout_s=a.timeout - 20)
    steady = list(res.step_seconds[2:]) or list(res.step_seconds)
    return {"method": method.value, "nproc": s["nproc"], "launch_config": str(default_launch_config(cfg).name),
            "per_rank_peak_mem_bytes": list(res.per_rank_peak_mem_bytes),
            "peak_mem_gib_per_gpu": max(res.per_rank_peak_mem_bytes, default=0) / GIB,
            "peak_mem_gib": max(res.per_rank_peak_mem_bytes, default=0) / GIB,  # the largest rank's
            "s_per_step": statistics.median(steady), "step_seconds": list(res.step_seconds),
            "global_tokens_per_step": a.batch * a.seq, "losses": res.losses,
            "per_rank_param_numel": res.per_rank_param_numel, "total_param_numel": res.total_param_numel,
            "total_s_with_launch_and_save": time.perf_counter() - t0}


def child(name: str, a: argparse.Namespace) -> None:
    kind, s = RUNS[name]
    work = a.work / name
    r = adapter_run(a.work / "base", work, s, a) if kind == "adapter" else full_run(a.work / "base", work, s, a)
    print("RESULT " + json.dumps(r))


def run_child(name: str, a: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", name, "--work", str(a.work), "--steps", str(a.steps),
            "--full-steps", str(a.full_steps), "--batch", str(a.batch), "--seq", str(a.seq),
            "--timeout", str(a.timeout)]
    t = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=a.timeout, check=False)
    except subprocess.TimeoutExpired as e:
        return {"error": f"timed out after {a.timeout} s", "stderr_tail": str(e.stderr or "")[-3000:]}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"error": f"exit code {p.returncode}", "stderr_tail": p.stderr[-4000:], "stdout_tail": p.stdout[-2000:]}
    r: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    r["process_s"] = time.perf_counter() - t
    return r


def ratio(results: dict[str, Any], a: str, b: str, key: str) -> float | None:
    ra, rb = results.get(a, {}), results.get(b, {})
    if key not in ra or key not in rb or not rb[key]:
        return None
    return float(ra[key]) / float(rb[key])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/llmops-gpu-ft"))
    ap.add_argument("--steps", type=int, default=12, help="adapter steps")
    ap.add_argument("--full-steps", type=int, default=30, help="full fine-tune steps")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--timeout", type=int, default=240, help="seconds per run")
    ap.add_argument("--runs", default="", help="comma-separated subset of " + ",".join(RUNS))
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama-1.1b")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a)
        return
    if a.build:
        print("RESULT " + json.dumps(build_base(a.work / "base", a.shape)))
        return
    assert a.out_dir is not None, "--out-dir is required"
    import torch

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    ngpu = torch.cuda.device_count()
    slug = card.split()[-1].lower()
    if a.shape != "tinyllama-1.1b":
        slug = f"{a.shape}-{slug}"
    a.out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    b = subprocess.run([sys.executable, __file__, "--build", "--work", str(a.work), "--shape", a.shape],
                       capture_output=True, text=True, check=False)
    if b.returncode != 0:
        sys.exit(f"building the base model failed:\n{b.stderr[-3000:]}")
    built = json.loads([ln for ln in b.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    print(f"base built: {built}", flush=True)
    names = [n for n in a.runs.split(",") if n] or ONE_GPU + (TWO_GPU if ngpu >= 2 else [])
    common = {"device": card, "gpus_on_machine": ngpu, "host": platform.node(), "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__,
              "model": (f"random llama, {a.shape} shapes ("
                        + ", ".join(f"{k} {v}" for k, v in SHAPES[a.shape].items()) + "), bf16 weights on disk"),
              "params": built["params"], "batch": a.batch, "seq": a.seq, "tokens_per_step": a.batch * a.seq,
              "peak_memory": "torch.cuda.max_memory_allocated of the run's process (each rank's, for full runs)"}
    try:
        import peft
        import transformers

        common["transformers"], common["peft"] = transformers.__version__, peft.__version__
        import bitsandbytes

        common["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    results: dict[str, Any] = {}

    def write() -> None:
        r1 = {n: results[n] for n in ONE_GPU if n in results}
        doc1 = {"benchmark": "gpu-finetune-methods", **common, "adapter_steps": a.steps, "full_steps": a.full_steps,
                "adapter": "LoRA r=16, alpha 32, all 7 projections, all layers; QLoRA: NF4, double quant, "
                           "bf16 compute", "results": r1,
                "ratios": {
                    "qlora/lora peak memory (no gradient checkpointing, the default)": ratio(
                        results, "qlora", "lora", "peak_mem_bytes"),
                    "qlora_gc/lora_gc peak memory": ratio(results, "qlora_gc", "lora_gc", "peak_mem_bytes"),
                    "qlora_gc_bf16_rest/lora_gc peak memory": ratio(results, "qlora_gc_bf16_rest", "lora_gc",
                                                                    "peak_mem_bytes"),
                    "qlora/lora step time": ratio(results, "qlora", "lora", "s_per_step"),
                    "qlora_gc/lora_gc step time": ratio(results, "qlora_gc", "lora_gc", "s_per_step"),
                    "lora_gc/lora step time": ratio(results, "lora_gc", "lora", "s_per_step"),
                    "lora/full_1gpu peak memory": ratio(results, "lora", "full_1gpu", "peak_mem_gib"),
                    "qlora_gc/full_1gpu peak memory": ratio(results, "qlora_gc", "full_1gpu", "peak_mem_gib"),
                    "lora/full_1gpu step time": ratio(results, "lora", "full_1gpu", "s_per_step")},
                "goal": "qlora <= 0.4x the peak memory of bf16 lora"}
        (a.out_dir / f"gpu-finetune-methods-{slug}.json").write_text(json.dumps(doc1, indent=2))
        if ngpu >= 2 and any(n in results for n in TWO_GPU):
            r2 = {n: results[n] for n in ["full_1gpu", *TWO_GPU] if n in results}
            rat: dict[str, Any] = {}
            one = results.get("full_1gpu", {})
            for n in TWO_GPU:
                r = results.get(n, {})
                if r.get("peak_mem_gib_per_gpu") and one.get("peak_mem_gib_per_gpu"):
                    rat[f"{n}/full_1gpu peak memory per GPU"] = r["peak_mem_gib_per_gpu"] / one["peak_mem_gib_per_gpu"]
                    rat[f"{n}/full_1gpu step time"] = r["s_per_step"] / one["s_per_step"]
                    la, lb = r["losses"], one["losses"]
                    k = min(len(la), len(lb))
                    rat[f"{n} vs full_1gpu mean |loss difference| per step"] = sum(
                        abs(x - y) for x, y in zip(la[:k], lb[:k], strict=True)) / max(k, 1)
            doc2 = {"benchmark": "gpu-full-2gpu", **common, "full_steps": a.full_steps,
                    "note": "batch is the global batch: with 2 ranks each takes batch/2 x seq; lr 1e-4, warmup 3, "
                            "cosine to 0.1x; FSDP2 (fsdp.yaml) and ZeRO-3 (zero3.json) keep fp32 master weights, "
                            "compute in bf16", "results": r2, "ratios": rat}
            (a.out_dir / f"gpu-full-2gpu-{slug}.json").write_text(json.dumps(doc2, indent=2))

    for n in names:
        t = time.perf_counter()
        results[n] = run_child(n, a)
        r = results[n]
        if "error" in r:
            print(f"{n}: FAILED {r['error']}\n{r.get('stderr_tail', '')[-2500:]}", flush=True)
        else:
            peak = r.get("peak_mem_gib", r.get("peak_mem_gib_per_gpu"))
            print(f"{n}: peak {peak:.2f} GiB, {r['s_per_step'] * 1000:.0f} ms/step, losses "
                  f"{r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} ({time.perf_counter() - t:.0f} s)", flush=True)
        write()
    print(json.dumps(json.loads((a.out_dir / f"gpu-finetune-methods-{slug}.json").read_text())["ratios"], indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
