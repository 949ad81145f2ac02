"""Send a schedule of chat completions through the gateway with the async OpenAI client."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from llmops.loadgen.schedule import Arrival
from llmops.loadgen.stats import Outcome, summarise

PROMPTS = (
    "How long is the refund window?",
    "What is the capital of France?",
    "Give me one tip for writing clear e-mails.",
    "Can I export my notes, and in which formats?",
    "Explain photosynthesis in one sentence.",
)


async def _one(client: object, model: str, arrival: Arrival, t0: float, i: int,
               stop: threading.Event | None) -> Outcome | None:
    import openai

    while (wait := t0 + arrival.at_s - time.monotonic()) > 0:
        if stop is not None and stop.is_set():
            return None  # the run was stopped before this request's time: it is never sent
        await asyncio.sleep(min(wait, 0.5))
    sent = time.monotonic()
    try:
        raw = await client.chat.completions.with_raw_response.create(  # type: ignore[attr-defined]
            model=model, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            max_tokens=arrival.max_tokens, temperature=0)
        resp = raw.parse()
        text = resp.choices[0].message.content if resp.choices else None
        ok = bool(text)
        tokens = resp.usage.completion_tokens if resp.usage else 0
        return Outcome(sent - t0, time.monotonic() - sent, raw.status_code, ok,
                       raw.headers.get("x-llmops-model-version", ""), "" if ok else "empty completion", tokens)
    except openai.APIStatusError as err:
        return Outcome(sent - t0, time.monotonic() - sent, err.status_code, False, "",
                       f"HTTP {err.status_code}: {str(err.message)[:120]}")
    except (openai.APIConnectionError, openai.APITimeoutError) as err:
        return Outcome(sent - t0, time.monotonic() - sent, 0, False, "", type(err).__name__)


async def run_schedule(base_url: str, model: str, arrivals: Sequence[Arrival], timeout_s: float = 120,
                       stop: threading.Event | None = None) -> list[Outcome]:
    """Open-loop: each request is sent at its arrival time whatever the earlier ones are doing."""
    import openai

    # openai's default connection pool (1000) bounds concurrency; the schedule decides the rest (open loop).
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=timeout_s)
    t0 = time.monotonic()
    try:
        results = await asyncio.gather(*(_one(client, model, a, t0, i, stop) for i, a in enumerate(arrivals)))
        return [r for r in results if r is not None]
    finally:
        await client.close()


def run_load(base_url: str, model: str, arrivals: Sequence[Arrival], out: Path | None = None,
             timeout_s: float = 120, stop: threading.Event | None = None) -> dict[str, object]:
    """Run the schedule (until its end, or until `stop` is set), summarise it, and write the summary plus
    every outcome as JSON to `out`."""
    t = time.monotonic()
    outcomes = asyncio.run(run_schedule(base_url, model, arrivals, timeout_s, stop))
    summary = summarise(outcomes, time.monotonic() - t)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"summary": summary, "outcomes": [o.__dict__ for o in outcomes]}, indent=1))
    return summary
