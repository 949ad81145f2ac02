"""Batched greedy generation for evaluation (left-padded, KV-cached)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmops.data.schema import ChatExample
from llmops.evaluate.answers import DTYPE, MAX_NEW_TOKENS


def load_for_eval(model_dir: Path, threads: int = 2) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, DTYPE)).eval()
    return model, tok


def generate_answers(model: Any, tok: Any, examples: Sequence[ChatExample], max_new_tokens: int = MAX_NEW_TOKENS,
                     batch_size: int = 128) -> list[str]:
    """Greedy answers to each example's prompt, in order. Prompts are sorted by length to pad less."""
    import torch

    prompts = [tok.apply_chat_template([m.model_dump() for m in ex.prompt], add_generation_prompt=True,
                                       tokenize=False) for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    eos = [t for t in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} if isinstance(t, int) and t >= 0]
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i: i + batch_size]
            enc = tok([prompts[j] for j in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id)
            for row, j in enumerate(idx):
                out[j] = tok.decode(gen[row, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    return out
