"""Frozen-prefix activations: train the top layers without re-running the frozen ones every step.

An adapter on the top layers only (`lora.last_layers`) leaves the embeddings and every layer below the first
trainable one frozen and deterministic: the hidden states that enter the first trainable layer are the same for an
example in every epoch. `prefix_states` computes them once (no grad, eval mode); each step then feeds them to the
trainable layers as `inputs_embeds` (`top_layers`), so a step costs the top layers' forward and backward instead of
the whole stack's forward plus the top layers' backward. The loss is the same function of the same numbers (a unit
test compares both paths); the memory is one hidden vector per training token (`prefix_bytes`), kept on the CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmops.train.loop import Encoded
    from llmops.train.shared_prefix import SharedPrefix

MAX_PREFIX_BYTES = 4 << 30  # above this the states would crowd the machine's memory: train the plain way


@dataclass(frozen=True)
class FrozenPrefix:
    decoder: Any  # the decoder stack (its `layers` and `embed_tokens`), e.g. LlamaModel
    first_trainable: int  # index of the first layer with a trainable parameter (> 0)


def _decoder(model: Any) -> Any:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, "model", None)


def find_frozen_prefix(model: Any) -> FrozenPrefix | None:
    """The frozen bottom of the decoder, when there is one worth caching; None otherwise (a full fine-tune, trainable
    embeddings, adapters on every layer, or a model without the usual `model.layers` decoder)."""
    decoder = _decoder(model)
    layers = getattr(decoder, "layers", None)
    embed = getattr(decoder, "embed_tokens", None)
    if layers is None or embed is None or any(p.requires_grad for p in embed.parameters()):
        return None
    first = next((i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())), None)
    if not first:  # None: nothing trains in the layers; 0: the bottom layer trains
        return None
    return FrozenPrefix(decoder, first)


def prefix_bytes(prefix: FrozenPrefix, data: Sequence[Encoded]) -> int:
    """Memory the states would take: one hidden vector per token in the model's dtype."""
    weight = prefix.decoder.embed_tokens.weight
    hidden = int(weight.shape[-1])
    itemsize = weight.element_size() if weight.is_floating_point() and weight.element_size() >= 2 else 4
    return sum(len(e.input_ids) for e in data) * hidden * itemsize


class _Stop(Exception):
    """Raised by the hook on the first trainable layer: the rest of the forward is not needed."""


def prefix_states(prefix: FrozenPrefix, data: Sequence[Encoded], batch_size: int, pad_id: int,
                  shared: SharedPrefix | None = None) -> list[Any]:
    """The hidden states entering layer `first_trainable` for each example ([len, hidden], CPU), computed in
    length-sorted, right-padded batches (causal attention: padding on the right does not change the real tokens).

    With `shared` (tokens every example starts with), those run once: their states are the same in every example,
    and their keys and values in the frozen layers, repeated over each batch, serve the rest of its rows."""
    import torch

    decoder, captured = prefix.decoder, []
    device = decoder.embed_tokens.weight.device

    def grab(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _Stop

    order = sorted(range(len(data)), key=lambda i: len(data[i].input_ids))
    out: list[Any] = [None] * len(data)
    was_training = decoder.training
    decoder.eval()
    handle = decoder.layers[prefix.first_trainable].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            head: Any = None
            cache: Any = None
            skip = 0
            if shared is not None:
                head, cache = _shared_head(decoder, shared, captured)
                skip = shared.length if cache is not None else 0
            for s in range(0, len(order), batch_size):
                idx = order[s: s + batch_size]
                width = max(len(data[i].input_ids) for i in idx)
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, : len(data[i].input_ids)] = torch.tensor(data[i].input_ids)
                    mask[r, : len(data[i].input_ids)] = 1
                captured.clear()
                kwargs: dict[str, Any] = {"use_cache": False}
                if skip:  # the rest of each row on top of the shared tokens' keys and values
                    batch_cache = copy.deepcopy(cache)
                    batch_cache.batch_repeat_interleave(len(idx))
                    kwargs = {"cache": batch_cache, "use_cache": True}
                try:
                    decoder(input_ids=ids[:, skip:].to(device), attention_mask=mask.to(device), **kwargs)
                except _Stop:
                    pass
                states = captured[0]
                for r, i in enumerate(idx):
                    row = states[r, : len(data[i].input_ids) - skip].detach().to("cpu")
                    out[i] = torch.cat([head, row]) if skip else row.clone()
    finally:
        handle.remove()
        decoder.train(was_training)
    return out


def _shared_head(decoder: Any, shared: SharedPrefix, captured: list[Any]) -> tuple[Any, Any]:
    """The shared tokens' states entering the first trainable layer ([P, hidden], CPU) and the frozen layers' cache
    of their keys and values (None, with the plain pass, when the decoder keeps no cache)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=decoder.config)
    ids = torch.tensor([shared.ids], dtype=torch.long, device=decoder.embed_tokens.weight.device)
    captured.clear()
    try:
        decoder(input_ids=ids, cache=cache, use_cache=True)
    except _Stop:
        pass
    if not captured or cache.get_seq_length() != shared.length:
        return None, None
    return captured[0][0].detach().to("cpu").clone(), cache


@contextmanager
def top_layers(prefix: FrozenPrefix) -> Iterator[None]:
    """The decoder runs only its layers from `first_trainable` up while inside (fed the cached states as
    `inputs_embeds`); the full stack is back on exit, before anything else uses the model."""
    import torch

    decoder = prefix.decoder
    full = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(full)[prefix.first_trainable:])
    try:
        yield
    finally:
        decoder.layers = full
