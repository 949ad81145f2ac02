"""Shared prompt prefix: the tokens every training example starts with run once per step, not once per example.

A chat template puts the same tokens before every question: the support assistant's system turn and the start of
the user's (`<|im_start|>system\\nYou are the Quillstack support assistant. ...<|im_end|>\\n<|im_start|>user\\n`).
With right padding and causal attention those positions attend only to
each other, so their keys and values are the same in every row of a batch. A step runs them once (batch 1, with
gradients: the adapters change them), repeats their key/value cache over the batch and runs only the rest of each row
on top of it. Same function of the same numbers (a unit test compares the loss and the adapter gradients with the
plain forward, and `run_loop` checks the loss on a real batch before it uses it); a third fewer token positions per
step on the shipped data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmops.train.loop import Encoded

IGNORE = -100
MIN_SHARED_TOKENS = 8  # below this the saving is smaller than the extra batch-1 forward


@dataclass(frozen=True)
class SharedPrefix:
    ids: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.ids)

    def matches(self, input_ids: Any) -> bool:
        """Every row of the batch starts with the prefix (a batch from other data falls back to the plain forward)."""
        import torch

        head = input_ids[:, : self.length]
        return bool(head.shape[1] == self.length and input_ids.shape[1] > self.length
                    and torch.equal(head, torch.tensor(self.ids, dtype=head.dtype, device=head.device)
                                    .expand_as(head)))


def find_shared_prefix(data: Sequence[Encoded], min_tokens: int = MIN_SHARED_TOKENS) -> SharedPrefix | None:
    """The longest token prefix common to every example that ends before the first position any label depends on
    (the label at position j is predicted from position j - 1, which must stay in the per-row part); None when it is
    shorter than `min_tokens`."""
    if not data:
        return None
    first = data[0].input_ids
    n = len(first)
    for e in data[1:]:
        limit = min(n, len(e.input_ids))
        m = 0
        while m < limit and e.input_ids[m] == first[m]:
            m += 1
        n = m
        if n < min_tokens:
            return None
    first_label = min(next((i for i, t in enumerate(e.labels) if t != IGNORE), len(e.labels)) for e in data)
    n = min(n, first_label - 1)
    return SharedPrefix(tuple(first[:n])) if n >= min_tokens else None


def rest_hidden(decoder: Any, batch: dict[str, Any], shared: SharedPrefix) -> Any | None:
    """The decoder's last hidden states for the positions after the prefix: the prefix runs once (batch 1), its
    key/value cache is repeated over the batch, the rest of each row attends to it. `decoder` is the model's decoder
    stack (e.g. LlamaModel); gradients flow into the prefix's keys and values from every row. None when the decoder
    keeps no cache (activation checkpointing in training turns it off): the caller runs the plain forward."""
    ids = batch["input_ids"]
    pre = decoder(input_ids=ids[:1, : shared.length], use_cache=True)
    cache = getattr(pre, "cache", None)  # transformers 5.x names it `cache` (`past_key_values` before)
    if cache is None or cache.get_seq_length() != shared.length:  # no cache kept (e.g. activation checkpointing)
        return None
    cache.batch_repeat_interleave(ids.shape[0])
    out = decoder(input_ids=ids[:, shared.length:], attention_mask=batch["attention_mask"], cache=cache,
                  use_cache=True)
    return out.last_hidden_state
