"""Quality probe: a fixed prompt set sent to one node, scored with the training pipeline's metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from llmops.data.schema import ChatExample


@dataclass(frozen=True)
class ProbeResult:
    score: float  # 0.5 x format compliance (all prompts) + 0.5 x ROUGE-L on the policy prompts
    format_compliance: float
    rouge_l: float
    failed_requests: int
    samples: tuple[tuple[str, str], ...]


def probe_set(heldout: Sequence[ChatExample], control: Sequence[ChatExample], n_policy: int = 8,
              n_control: int = 4) -> list[ChatExample]:
    """A fixed, spread-out subset: every k-th held-out policy question plus a few control prompts."""
    step = max(1, len(heldout) // max(1, n_policy))
    return [*list(heldout)[::step][:n_policy], *list(control)[:n_control]]


async def _ask(client: httpx.AsyncClient, url: str, model: str, ex: ChatExample) -> str | None:
    try:
        r = await client.post(f"{url}/v1/chat/completions", headers={"X-Llmops-Probe": "1"}, json={
            "model": model, "messages": [m.model_dump() for m in ex.prompt], "max_tokens": 48, "temperature": 0})
        if r.status_code != 200:
            return None
        return str(r.json()["choices"][0]["message"]["content"] or "")
    except (httpx.HTTPError, KeyError, IndexError, ValueError):
        return None


def run_probe(node_url: str, model: str, prompts: Sequence[ChatExample], timeout_s: float = 120) -> ProbeResult:
    """Ask every prompt concurrently (the engine batches them) and score the answers."""
    from llmops.evaluate.run import metric

    async def ask_all() -> list[str | None]:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            return list(await asyncio.gather(*(_ask(client, node_url, model, ex) for ex in prompts)))

    answers = asyncio.run(ask_all())
    failed = sum(a is None for a in answers)
    texts = [a or "" for a in answers]
    fmt = float(metric("format_compliance").compute(predictions=texts, references=[""] * len(texts))[
        "format_compliance"])
    policy = [(t, ex.completion) for t, ex in zip(texts, prompts, strict=True) if ex.slice != "control"]
    rouge = float(metric("rouge_l").compute(predictions=[p for p, _ in policy], references=[r for _, r in policy])[
        "rouge_l"]) if policy else 0.0
    samples = tuple((ex.prompt[-1].content, t) for ex, t in list(zip(prompts, texts, strict=True))[:4])
    return ProbeResult(0.5 * fmt + 0.5 * rouge, fmt, rouge, failed, samples)
