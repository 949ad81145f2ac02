"""GPU proof of the node launcher: the project's LocalProcessLauncher starts an LMDeploy (PyTorch backend)
node on a hash-verified model, waits for it like any node (health, one-token completion, served name), then
measures completions at several concurrencies and reads LMDeploy's /metrics.

Run on the lent GPU machine (see bench/gpu/README.md for the exact device command):
    python3 bench/gpu/lmdeploy_node.py --out $OUT/gpu-lmdeploy-node.json
The model is a random llama with SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 KV heads) and a
512-token BPE tokenizer built offline: weights are random, so answers are noise; shapes and costs are real.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


async def burst(url: str, model: str, n: int, max_tokens: int) -> dict[str, float]:
    import httpx

    async def one(client: httpx.AsyncClient) -> tuple[float, int]:
        t = time.perf_counter()
        r = await client.post(f"{url}/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "Tell me about refunds."}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})
        r.raise_for_status()
        return time.perf_counter() - t, int(r.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(timeout=300) as client:
        t0 = time.perf_counter()
        res = await asyncio.gather(*(one(client) for _ in range(n)))
        wall = time.perf_counter() - t0
    tokens = sum(t for _, t in res)
    return {"concurrency": n, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "mean_latency_s": sum(lat for lat, _ in res) / n}


def build_model(work: Path) -> tuple[Path, str, float]:
    """The random SmolLM2-135M-shaped llama, through the model cache as a node gets it: (path, sha256, build s)."""
    from llmops.hashing import dir_sha256
    from llmops.model_cache import ModelCache
    from llmops.tinymodel import build_tiny_model

    t = time.perf_counter()
    src = build_tiny_model(work / "src", hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536)
    digest = dir_sha256(src)
    cache = ModelCache(work / "cache")
    cached = cache.get(digest, lambda tmp: subprocess.run(["cp", "-r", f"{src}/.", str(tmp)], check=True))
    return cached.path, digest, time.perf_counter() - t


def start_ready_node(work: Path, model_path: Path, digest: str, eager: bool = False,
                     serving_log_dir: Path | None = None, tenant: str = "default") -> tuple[Any, Any, float]:
    """The project's launcher starts an LMDeploy node (PyTorch backend, 0.1 KV cache, batch 64) on the model and
    waits until it is ready: (launcher, node, seconds to ready). The caller stops it with `launcher.stop(node)`."""
    from llmops.pool.launcher import LocalProcessLauncher
    from llmops.pool.state import NodeRecord
    from llmops.proc import free_port
    from llmops.stackconfig import Engine, ServingSettings

    settings = ServingSettings(engine=Engine.LMDEPLOY, lmdeploy_python=sys.executable, lmdeploy_eager_mode=eager,
                               lmdeploy_cache_max_entry_count=0.1, lmdeploy_max_batch_size=64, start_timeout_s=400)
    launcher = LocalProcessLauncher(work / "nodes", settings, ROOT, serving_log_dir=serving_log_dir, tenant=tenant)
    node = NodeRecord(name="gpu-node1", model="support-assistant", engine="lmdeploy", version="1", sha256=digest,
                      host="127.0.0.1", port=free_port(23333))
    t = time.perf_counter()
    node = launcher.start(node, model_path)
    try:
        launcher.wait_ready(node, timeout_s=400)
    except BaseException:
        launcher.stop(node)
        raise
    return launcher, node, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/llmops-gpu"))
    ap.add_argument("--eager", action="store_true", help="--eager-mode (no CUDA graphs)")
    args = ap.parse_args()

    import httpx

    model_path, digest, build_s = build_model(args.work)
    launcher, node, cold_start_s = start_ready_node(args.work, model_path, digest, args.eager,
                                                    serving_log_dir=args.work / "serving", tenant="acme")
    try:
        asyncio.run(burst(node.url, node.model, 8, 64))  # warm-up: first requests compile and allocate
        results = []
        for n in (1, 8, 32, 64):  # median of 3 bursts per concurrency
            runs = sorted((asyncio.run(burst(node.url, node.model, n, 64)) for _ in range(3)),
                          key=lambda r: r["tokens_per_s"])
            results.append({**runs[1], "tokens_per_s_runs": [r["tokens_per_s"] for r in runs]})
        # the wrapper's serving log: a user request with the gateway's request id is logged, a probe is not
        served = httpx.post(f"{node.url}/v1/chat/completions", timeout=60, headers={"X-Request-Id": "gpu-req-1"},
                            json={"model": node.model, "max_tokens": 8,
                                  "messages": [{"role": "user", "content": "What is the refund window?"}]})
        log_file = args.work / "serving" / f"{node.name}.jsonl"
        log_lines = [json.loads(x) for x in log_file.read_text().splitlines()] if log_file.exists() else []
        serving_log = {"status": served.status_code,
                       "version_header": served.headers.get("x-llmops-model-version"),
                       "info": httpx.get(f"{node.url}/llmops/info", timeout=10).json(),
                       "lines": len(log_lines),
                       "logged_request": next((x for x in log_lines if x["request_id"] == "gpu-req-1"), None)}
        metrics = httpx.get(f"{node.url}/metrics", timeout=10).text
        names = sorted({ln.split("{")[0].split(" ")[0] for ln in metrics.splitlines()
                        if ln.startswith("lmdeploy:")})
    finally:
        launcher.stop(node)
    import torch

    doc = {"benchmark": "gpu-lmdeploy-node", "device": torch.cuda.get_device_name(0), "host": platform.node(),
           "date": time.strftime("%Y-%m-%d"), "engine": "lmdeploy pytorch backend", "eager_mode": args.eager,
           "model": "random llama, SmolLM2-135M shape, bf16", "model_sha256": digest, "build_s": build_s,
           "cold_start_to_ready_s": cold_start_s, "completions": results, "lmdeploy_metrics": names,
           "serving_log": serving_log,
           "ratios": {"tokens_per_s_64_vs_1": results[-1]["tokens_per_s"] / results[0]["tokens_per_s"]}}
    args.out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
