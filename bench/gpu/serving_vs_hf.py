"""Serving throughput and time to first token: an LMDeploy (PyTorch backend) node started by the project's launcher
vs Hugging Face `generate`, one request at a time (a loop) and batched, on the same model and GPU (issue 8, part 3).

Run on the lent GPU machine (bench/gpu/README.md has the exact device command):
    python3 bench/gpu/serving_vs_hf.py --out $OUT/gpu-serving-vs-hf-h200.json

Model: the random llama of SmolLM2-135M's shape that bench/gpu/lmdeploy_node.py builds (bf16). Every request is
the same chat prompt and generates exactly 64 tokens (LMDeploy: `ignore_eos`; HF: min_new_tokens = max_new_tokens),
greedy. At each concurrency c, c requests arrive at once:
- lmdeploy: c streaming chat completions in flight together over HTTP (median of 3 bursts by tokens/s after a
  warm-up burst); TTFT = time to the first streamed token of each request.
- hf_loop: one `generate` per request, served one after the other (what a plain HF server does); TTFT of each
  request counts its wait behind the earlier ones, since all c arrived at the start (one run per level).
- hf_batched: one `generate` over all c prompts at once (no HTTP); TTFT = time to the first generated token
  (median of 3).
tokens/s = generated tokens / wall time of the burst. LMDeploy's figures include HTTP and the chat template; HF's
do not, which favours HF.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

PROMPT = "Tell me about refunds."
LEVELS = (1, 8, 32, 64)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def stream_burst(url: str, model: str, n: int, max_tokens: int) -> dict[str, Any]:
    import httpx

    async def one(client: httpx.AsyncClient, t0: float) -> tuple[float, float, int]:
        ttft, chunks, usage = None, 0, None
        async with client.stream("POST", f"{url}/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
                "temperature": 0, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if obj.get("usage"):
                    usage = int(obj["usage"]["completion_tokens"])
                for ch in obj.get("choices") or []:
                    if (ch.get("delta") or {}).get("content"):
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        chunks += 1
        return time.perf_counter() - t0, ttft if ttft is not None else float("nan"), usage or chunks

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=256)) as client:
        t0 = time.perf_counter()
        res = await asyncio.gather(*(one(client, t0) for _ in range(n)))
        wall = time.perf_counter() - t0
    tokens = sum(t for _, _, t in res)
    ttfts = [f for _, f, _ in res]
    return {"concurrency": n, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_mean_s": statistics.fmean(ttfts), "ttft_p50_s": pct(ttfts, 0.5), "ttft_max_s": max(ttfts),
            "mean_latency_s": statistics.fmean(lat for lat, _, _ in res)}


def lmdeploy_phase(model_path: Path, digest: str, work: Path, max_tokens: int) -> dict[str, Any]:
    from lmdeploy_node import start_ready_node

    launcher, node, cold = start_ready_node(work, model_path, digest)
    try:
        asyncio.run(stream_burst(node.url, node.model, 8, max_tokens))  # warm-up
        levels = []
        for n in LEVELS:
            runs = sorted((asyncio.run(stream_burst(node.url, node.model, n, max_tokens)) for _ in range(3)),
                          key=lambda r: r["tokens_per_s"])
            levels.append({**runs[1], "tokens_per_s_runs": [r["tokens_per_s"] for r in runs]})
            mid = runs[1]
            print(f"lmdeploy c={n}: {mid['tokens_per_s']:.0f} tok/s, TTFT p50 {mid['ttft_p50_s'] * 1000:.0f} ms",
                  flush=True)
    finally:
        launcher.stop(node)
    return {"cold_start_to_ready_s": cold, "levels": levels,
            "settings": "PyTorch backend, CUDA graphs on, --cache-max-entry-count 0.1, --max-batch-size 64, "
                        "--session-len 2048, started by llmops.pool.launcher.LocalProcessLauncher"}


def first_token_streamer() -> Any:
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        """Records when the first generated token came (generate's first put() is the prompt)."""

        def __init__(self) -> None:
            self.calls = 0
            self.at: float | None = None

        def put(self, _value: Any) -> None:  # the tokens arrive on the CPU: the step is done
            self.calls += 1
            if self.calls == 2 and self.at is None:
                self.at = time.perf_counter()

        def end(self) -> None:
            pass

    return FirstToken()


def hf_phase(model_path: Path, max_tokens: int, loop_budget_s: float) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only to check this script
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).to(dev).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"].to(dev)
    kw = {"max_new_tokens": max_tokens, "min_new_tokens": max_tokens, "do_sample": False,
          "pad_token_id": tok.pad_token_id}

    def gen(batch: int, t0: float) -> tuple[float, int]:
        st = first_token_streamer()
        with torch.no_grad():
            out = model.generate(input_ids=ids.repeat(batch, 1), attention_mask=torch.ones_like(ids).repeat(batch, 1),
                                 streamer=st, **kw)
        assert st.at is not None
        return st.at - t0, int((out.shape[1] - ids.shape[1]) * batch)

    gen(1, time.perf_counter())  # warm-up
    gen(64, time.perf_counter())
    loop, batched = [], []
    spent = 0.0
    for n in LEVELS:
        if spent > loop_budget_s:
            loop.append({"concurrency": n, "skipped": f"the loop had used {spent:.0f} s, over --hf-loop-budget-s"})
            continue
        t0 = time.perf_counter()
        ttfts, tokens, service = [], 0, []
        for _ in range(n):  # all n arrived at t0; served one after the other
            t_req = time.perf_counter()
            first, k = gen(1, t0)
            ttfts.append(first)
            service.append(first - (t_req - t0))
            tokens += k
        wall = time.perf_counter() - t0
        spent += wall
        loop.append({"concurrency": n, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
                     "ttft_mean_s": statistics.fmean(ttfts), "ttft_p50_s": pct(ttfts, 0.5), "ttft_max_s": max(ttfts),
                     "ttft_without_queue_mean_s": statistics.fmean(service)})
        print(f"hf_loop c={n}: {tokens / wall:.0f} tok/s, TTFT p50 {pct(ttfts, 0.5) * 1000:.0f} ms", flush=True)
    for n in LEVELS:
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            first, tokens = gen(n, t0)
            wall = time.perf_counter() - t0
            runs.append({"concurrency": n, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
                         "ttft_s": first})
        runs.sort(key=lambda r: r["tokens_per_s"])
        batched.append({**runs[1], "tokens_per_s_runs": [r["tokens_per_s"] for r in runs]})
        print(f"hf_batched c={n}: {runs[1]['tokens_per_s']:.0f} tok/s, TTFT {runs[1]['ttft_s'] * 1000:.0f} ms",
              flush=True)
    return {"prompt_tokens": int(ids.shape[1]), "hf_loop": loop, "hf_batched": batched,
            "settings": "transformers generate, bf16, sdpa attention (default), dynamic KV cache (default), greedy, "
                        "no torch.compile"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/llmops-gpu-serve"))
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hf-loop-budget-s", type=float, default=200.0, help="skip the HF loop's next levels after this")
    ap.add_argument("--skip-lmdeploy", action="store_true")
    args = ap.parse_args()

    import torch
    import transformers
    from lmdeploy_node import build_model

    model_path, digest, build_s = build_model(args.work)
    doc: dict[str, Any] = {
        "benchmark": "gpu-serving-vs-hf", "device": torch.cuda.get_device_name(0), "host": platform.node(),
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "transformers": transformers.__version__,
        "model": "random llama, SmolLM2-135M shape (hidden 576, 30 layers, 9 heads, 3 KV heads, MLP 1536), bf16",
        "model_sha256": digest, "build_s": build_s, "prompt": PROMPT, "max_tokens": args.max_tokens,
        "method": "c requests arrive at once; lmdeploy: c concurrent streaming HTTP chat completions (median of 3 "
                  "bursts); hf_loop: one generate per request, one after another, TTFT includes the wait; "
                  "hf_batched: one generate over c prompts (median of 3); exactly max_tokens tokens each, greedy"}
    if not args.skip_lmdeploy:
        import lmdeploy

        doc["lmdeploy_version"] = lmdeploy.__version__
        doc["lmdeploy"] = lmdeploy_phase(model_path, digest, args.work, args.max_tokens)
        args.out.write_text(json.dumps(doc, indent=2))
    doc.update(hf_phase(model_path, args.max_tokens, args.hf_loop_budget_s))
    ratios: dict[str, Any] = {}
    if "lmdeploy" in doc:
        for lm, lp, bt in zip(doc["lmdeploy"]["levels"], doc["hf_loop"], doc["hf_batched"], strict=True):
            n = lm["concurrency"]
            if "tokens_per_s" in lp:
                ratios[f"lmdeploy/hf_loop tokens/s at {n}"] = lm["tokens_per_s"] / lp["tokens_per_s"]
                ratios[f"hf_loop/lmdeploy TTFT p50 at {n}"] = lp["ttft_p50_s"] / lm["ttft_p50_s"]
            ratios[f"lmdeploy/hf_batched tokens/s at {n}"] = lm["tokens_per_s"] / bt["tokens_per_s"]
    doc["ratios"] = ratios
    doc["goal"] = "lmdeploy >= 5x the HF loop's tokens/s at 32 concurrent"
    args.out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(ratios, indent=1))


if __name__ == "__main__":
    main()
