"""bench/serving_throughput.py: the CPU engine (continuous batching) vs a plain HF `generate` loop, same prompts.

    python bench/serving_throughput.py [--concurrency 1,8,16] [--max-tokens 32] [--requests-per-client 3]

Engine arm: the project's node (`LocalProcessLauncher`, `transformers serve --continuous-batching` with the stack's
CB settings, one torch thread) on SmolLM2-135M-Instruct, hash-verified; `c` clients each send their requests
back to back through the OpenAI API. Baseline arm: in a separate process with the same one torch thread, the same
model and chat-templated prompts, a loop that answers the same `c x n` requests one at a time with
`model.generate` (what a naive server does). Both count the tokens they generated (usage / output length), so
tokens/s compare like for like. Goal (issue 7): engine >= 2x the loop at 16 concurrent.
Writes bench/results/serving-throughput-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["How do I reset my password?", "What is the refund window for annual plans?",
           "Can I change my billing date?", "How do I export my data?", "Is there a student discount?",
           "How do I delete my account?", "Which browsers are supported?", "How do I add a team member?"]

BASELINE = r'''
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)
model_dir, prompts, max_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
def one(p):
    ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
    return out.shape[1] - ids["input_ids"].shape[1]
one(prompts[0])  # warm-up, as the engine's readiness check warms it
t = time.perf_counter(); tokens = sum(one(p) for p in prompts); wall = time.perf_counter() - t
print(json.dumps({"tokens": tokens, "wall_s": wall, "requests": len(prompts)}))
'''


def engine_level(url: str, model: str, c: int, n: int, max_tokens: int) -> dict[str, Any]:
    import httpx

    def client(i: int) -> tuple[int, list[float]]:
        toks, lat = 0, []
        with httpx.Client(timeout=600) as http:
            for j in range(n):
                t = time.perf_counter()
                r = http.post(f"{url}/v1/chat/completions", json={
                    "model": model, "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": PROMPTS[(i * n + j) % len(PROMPTS)]}]})
                r.raise_for_status()
                lat.append(time.perf_counter() - t)
                toks += int(r.json()["usage"]["completion_tokens"])
        return toks, lat

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=c) as ex:
        res = list(ex.map(client, range(c)))
    wall = time.perf_counter() - t
    tokens = sum(r[0] for r in res)
    lats = sorted(x for r in res for x in r[1])
    return {"concurrency": c, "requests": c * n, "tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "p50_latency_s": round(lats[len(lats) // 2], 2)}


def baseline_level(model_dir: Path, c: int, n: int, max_tokens: int) -> dict[str, Any]:
    prompts = [PROMPTS[(i * n + j) % len(PROMPTS)] for i in range(c) for j in range(n)]
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", BASELINE, str(model_dir), json.dumps(prompts), str(max_tokens)],
                       capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"baseline loop failed:\n{r.stderr[-2000:]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return {"concurrency": c, "requests": d["requests"], "tokens": d["tokens"], "wall_s": round(d["wall_s"], 2),
            "tokens_per_s": round(d["tokens"] / d["wall_s"], 1)}


def main() -> None:
    from llmops.basemodel import convert_base_model
    from llmops.pool.launcher import LocalProcessLauncher
    from llmops.pool.state import NodeRecord
    from llmops.proc import free_port
    from llmops.stackconfig import ServingSettings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="1,8,16")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests-per-client", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving-throughput-cpu.json")
    a = ap.parse_args()
    levels = [int(x) for x in a.concurrency.split(",")]
    settings = ServingSettings()  # the stack's defaults: CB blocks, one torch thread
    with tempfile.TemporaryDirectory(prefix="llmops-serving-") as tmp:
        base = convert_base_model()  # the machine-wide conversion (make install)
        model_dir = base.path
        launcher = LocalProcessLauncher(Path(tmp) / "nodes", settings, ROOT)
        node = launcher.start(NodeRecord(name="bench", model="smollm2", engine="transformers", version="1",
                                         sha256=base.sha256, host="127.0.0.1",
                                         port=free_port(32000)), model_dir)
        engine = []
        try:
            launcher.wait_ready(node, timeout_s=300)
            for c in levels:
                engine.append(engine_level(node.url, "smollm2", c, a.requests_per_client, a.max_tokens))
                print(f"engine   c={c:<3} {engine[-1]['tokens_per_s']:>7.1f} tok/s  ({engine[-1]['tokens']} tokens "
                      f"in {engine[-1]['wall_s']} s)", flush=True)
        finally:
            launcher.stop(node)
        baseline = []
        for c in levels:
            baseline.append(baseline_level(model_dir, c, a.requests_per_client, a.max_tokens))
            print(f"HF loop  c={c:<3} {baseline[-1]['tokens_per_s']:>7.1f} tok/s  ({baseline[-1]['tokens']} tokens "
                  f"in {baseline[-1]['wall_s']} s)", flush=True)
    ratios = {str(e["concurrency"]): round(e["tokens_per_s"] / b["tokens_per_s"], 2)
              for e, b in zip(engine, baseline, strict=True)}
    top = str(max(levels))
    doc = {"benchmark": "serving_throughput", "machine": f"{platform.node()}, 2 cores, CPU",
           "date": datetime.now().isoformat(timespec="seconds"), "model": "SmolLM2-135M-Instruct bf16",
           "engine": f"transformers serve --continuous-batching (cb_num_blocks {settings.cb_num_blocks}, block "
                     f"{settings.cb_block_size}), {settings.torch_threads} torch thread",
           "baseline": "model.generate one request at a time, 1 torch thread",
           "max_tokens": a.max_tokens, "requests_per_client": a.requests_per_client,
           "engine_levels": engine, "baseline_levels": baseline, "engine_vs_loop": ratios,
           "goal": f"engine >= 2x the HF loop at {top} concurrent", "goal_met": ratios[top] >= 2.0}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1))
    print(f"engine / HF loop tokens/s by concurrency: {ratios}; goal (>= 2x at {top}): "
          f"{'met' if doc['goal_met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
