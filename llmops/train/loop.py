"""The training loop shared by every method: completion-only loss, checkpoints, resume, early stopping.

Own loop rather than TRL's SFTTrainer: on this 2-core CPU it ran a SmolLM2 LoRA step (batch 16) in 6.7 s,
this loop in about half (see bench/finetune.py); the logits are computed only where the loss is.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops.data.schema import ChatExample
from llmops.train.config import Hyper
from llmops.train.prefix import (
    MAX_PREFIX_BYTES,
    FrozenPrefix,
    find_frozen_prefix,
    prefix_bytes,
    prefix_states,
    top_layers,
)
from llmops.train.shared_prefix import SharedPrefix, find_shared_prefix, rest_hidden

MetricSink = Callable[[dict[str, float], int], None]
IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class LoopResult:
    steps: int
    final_loss: float
    best_eval_loss: float | None
    seconds: float
    resumed_from: str | None
    losses: tuple[float, ...]
    stopped_early: bool


def encode(tok: Any, ex: ChatExample, max_length: int) -> Encoded:
    """Tokens of prompt + completion through the chat template; labels only on the assistant's answer."""
    messages = [m.model_dump() for m in ex.prompt]
    prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "keys"):
        prompt_ids = prompt_ids["input_ids"]
    full = tok.apply_chat_template([*messages, {"role": "assistant", "content": ex.completion}], tokenize=True)
    if isinstance(full, dict) or hasattr(full, "keys"):
        full = full["input_ids"]
    full = list(full)
    if full[: len(prompt_ids)] != list(prompt_ids):
        raise ValueError("the chat template does not extend the prompt with the answer; cannot mask the prompt")
    # drop the template's trailing newline after the end-of-turn token, keep the end-of-turn itself as a label
    while len(full) > len(prompt_ids) + 1 and full[-1] != tok.eos_token_id and tok.decode(full[-1:]).strip() == "":
        full.pop()
    full = full[:max_length]
    labels = [IGNORE] * len(prompt_ids) + full[len(prompt_ids):]
    return Encoded(full, labels[: len(full)])


def epoch_batches(n: int, lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch's batches of indices: shuffled, then grouped by length inside windows of 32 batches so
    little compute goes to padding, then the batches themselves shuffled. Deterministic for a given rng."""
    order = list(range(n))
    rng.shuffle(order)
    window = batch_size * 32
    groups: list[list[int]] = []
    for w in range(0, n, window):
        part = sorted(order[w: w + window], key=lambda i: lengths[i])
        groups += [part[i: i + batch_size] for i in range(0, len(part), batch_size)]
    full = [g for g in groups if len(g) == batch_size] or groups[:1]
    rng.shuffle(full)
    return full


def batches(data: Sequence[Encoded], batch_size: int, seed: int, pad_id: int) -> Iterator[dict[str, Any]]:
    """Endless batches (a new order each epoch, deterministic for a seed), right-padded."""
    import torch

    epoch = 0
    lengths = [len(e.input_ids) for e in data]
    while True:
        for idx in epoch_batches(len(data), lengths, batch_size, random.Random(seed * 1000 + epoch)):
            chunk = [data[j] for j in idx]
            width = max(len(e.input_ids) for e in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, e in enumerate(chunk):
                ids[r, : len(e.input_ids)] = torch.tensor(e.input_ids)
                labels[r, : len(e.labels)] = torch.tensor(e.labels)
                mask[r, : len(e.input_ids)] = 1
            yield {"input_ids": ids, "labels": labels, "attention_mask": mask, "rows": torch.tensor(idx)}
        epoch += 1


def with_states(batch: dict[str, Any], states: Sequence[Any]) -> dict[str, Any]:
    """The batch plus its examples' cached frozen-prefix states as right-padded `inputs_embeds`."""
    import torch

    rows = [states[int(i)] for i in batch["rows"]]
    embeds = torch.zeros((len(rows), batch["input_ids"].shape[1], rows[0].shape[-1]), dtype=rows[0].dtype)
    for r, st in enumerate(rows):
        embeds[r, : st.shape[0]] = st
    return {**batch, "inputs_embeds": embeds}


def completion_loss(model: Any, batch: dict[str, Any], lead_tokens: int = 0, lead_weight: float = 1.0,
                    prefix: FrozenPrefix | None = None, shared: SharedPrefix | None = None) -> Any:
    """Mean cross-entropy over answer tokens. Hidden states go through the LM head only where a label is,
    which skips most of the 49k-vocabulary projection for the prompt tokens.

    `lead_tokens` > 0 weighs the first answer tokens `lead_weight` times: they decide which answer the
    model gives (the rest of a memorised answer follows from them), so their gradient would otherwise be
    diluted by the many easy tokens after them.

    With `prefix` and the batch's cached states (`with_states`), only the layers above the frozen prefix run. With
    `shared` (every row starts with the same tokens), those tokens run once for the whole batch."""
    import torch.nn.functional as F

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    start = 0  # the position of hidden[:, 0]
    if prefix is not None and "inputs_embeds" in batch:
        with top_layers(prefix):
            hidden = inner.model(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                                 use_cache=False).last_hidden_state
    elif shared is not None and shared.matches(batch["input_ids"]) and \
            (rest := rest_hidden(inner.model, batch, shared)) is not None:
        hidden, start = rest, shared.length
    else:
        hidden = inner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, start + 1:]
    keep = labels != IGNORE
    logits = inner.lm_head(hidden[:, :-1][keep])
    if lead_tokens <= 0 or lead_weight == 1.0:
        return F.cross_entropy(logits.float(), labels[keep])
    position = keep.long().cumsum(dim=1)[keep]  # 1-based index of each label within its answer
    weights = 1.0 + (lead_weight - 1.0) * (position <= lead_tokens).float()
    per_token = F.cross_entropy(logits.float(), labels[keep], reduction="none")
    return (per_token * weights).sum() / weights.sum()


def model_device(model: Any) -> Any:
    """Where the model's input embeddings live (the GPU for a model placed there, else the CPU)."""
    return model.get_input_embeddings().weight.device


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """The batch's tensors on `device` (no copy when they are already there)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def trainable(model: Any) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def lr_at(step: int, h: Hyper) -> float:
    if step < h.warmup_steps:
        return h.learning_rate * (step + 1) / (h.warmup_steps + 1)
    progress = (step - h.warmup_steps) / max(1, h.max_steps - h.warmup_steps)
    return h.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_checkpoint(out_dir: Path, step: int, model: Any, opt: Any, losses: list[float]) -> Path:
    import torch
    from safetensors.torch import save_file

    ck = out_dir / f"checkpoint-{step}"
    tmp = out_dir / f".tmp-checkpoint-{step}"
    tmp.mkdir(parents=True, exist_ok=True)
    weights = {n: p.detach().contiguous().cpu() for n, p in trainable(model).items()}
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "losses": losses}))
    tmp.rename(ck)
    for old in sorted(out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
        import shutil

        shutil.rmtree(old)
    return ck


def latest_checkpoint(out_dir: Path) -> Path | None:
    cks = sorted(out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return cks[-1] if cks else None


def run_loop(model: Any, tok: Any, train: Sequence[ChatExample], evaluation: Sequence[ChatExample], h: Hyper,
             out_dir: Path, sink: MetricSink | None = None, on_start: Callable[[], None] | None = None) -> LoopResult:
    """Train the model's trainable parameters; resume from the newest checkpoint in `out_dir` if any."""
    import torch
    from safetensors.torch import load_file

    torch.manual_seed(h.seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    data = [encode(tok, ex, h.max_length) for ex in train]
    held = [encode(tok, ex, h.max_length) for ex in evaluation]
    params = trainable(model)
    opt = torch.optim.AdamW(params.values(), lr=h.learning_rate, weight_decay=0.0)
    start_step, losses, resumed = 0, [], None
    ck = latest_checkpoint(out_dir)
    if ck is not None:
        state = load_file(str(ck / "trainable.safetensors"))
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[n])
        opt.load_state_dict(torch.load(ck / "optimizer.pt", weights_only=True))
        meta = json.loads((ck / "state.json").read_text())
        start_step, losses, resumed = int(meta["step"]), list(meta["losses"]), str(ck)
    device = model_device(model)
    it = batches(data, h.batch_size, h.seed, pad)
    for _ in range(start_step * h.grad_accum):  # same data order as an uninterrupted run
        next(it)
    prefix, states = frozen_prefix_states(model, data, h, pad, device) if start_step < h.max_steps else (None, None)
    shared = shared_prompt_prefix(model, data, h, pad, device) if prefix is None and start_step < h.max_steps \
        else None
    if on_start is not None:
        on_start()
    model.train()
    best, best_state, bad_evals, stopped = None, None, 0, False
    t0, tokens = time.monotonic(), 0
    step = start_step
    for step in range(start_step, h.max_steps):
        lr = lr_at(step, h)
        for g in opt.param_groups:
            g["lr"] = lr
        total = 0.0
        for _ in range(h.grad_accum):
            batch = next(it)
            batch = to_device(with_states(batch, states) if states else batch, device)
            loss = completion_loss(model, batch, h.lead_tokens, h.lead_weight, prefix, shared) / h.grad_accum
            loss.backward()
            total += float(loss.detach())
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        done = step + 1
        elapsed = max(time.monotonic() - t0, 1e-6)
        row = {"loss": total, "learning_rate": lr, "tokens_per_s": tokens / elapsed,
               "s_per_step": elapsed / (done - start_step)}
        if held and h.early_stopping_patience and done % h.eval_every == 0:
            ev = eval_loss(model, held, h.batch_size, pad)
            row["eval_loss"] = ev
            if best is None or ev < best - 1e-4:
                best, bad_evals = ev, 0
                best_state = {n: p.detach().clone() for n, p in params.items()}
            else:
                bad_evals += 1
        if sink is not None:
            sink(row, done)
        if done % h.checkpoint_every == 0 or done == h.max_steps:
            save_checkpoint(out_dir, done, model, opt, losses)
        if best is not None and bad_evals >= h.early_stopping_patience:
            stopped = True
            break
    if best_state is not None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(best_state[n])
    model.eval()
    final_step = step + 1 if h.max_steps > start_step else start_step
    return LoopResult(final_step, losses[-1] if losses else float("nan"), best, time.monotonic() - t0, resumed,
                      tuple(losses), stopped)


def frozen_prefix_states(model: Any, data: Sequence[Encoded], h: Hyper, pad: int,
                         device: Any) -> tuple[FrozenPrefix | None, list[Any] | None]:
    """The frozen prefix and each training example's states entering its first trainable layer, when caching
    them is on (`hyper.cache_frozen_prefix`; auto: the run passes over the data more than once), fits in memory and
    gives the same loss as the full forward on a batch (checked here in eval mode; a model whose decoder treats
    `inputs_embeds` differently falls back)."""
    import torch

    views = h.max_steps * h.batch_size * h.grad_accum
    wanted = h.cache_frozen_prefix if h.cache_frozen_prefix is not None else views > len(data)
    prefix = find_frozen_prefix(model) if wanted and data else None
    if prefix is None:
        return None, None
    need = prefix_bytes(prefix, data)
    if need > MAX_PREFIX_BYTES:
        print(f"frozen-prefix cache off: {need / 2**30:.1f} GiB of states > {MAX_PREFIX_BYTES / 2**30:.0f} GiB")
        return None, None
    t0 = time.monotonic()
    shared = find_shared_prefix(data) if h.share_prompt_prefix else None
    states = prefix_states(prefix, data, h.batch_size, pad, shared)
    probe = next(batches(data, min(h.batch_size, len(data)), h.seed, pad))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        full = float(completion_loss(model, to_device(probe, device)))
        cached = float(completion_loss(model, to_device(with_states(probe, states), device), prefix=prefix))
    model.train(was_training)
    if not math.isclose(full, cached, rel_tol=1e-3, abs_tol=1e-4):
        print(f"frozen-prefix cache off: its loss {cached:.5f} differs from the full forward's {full:.5f}")
        return None, None
    head = f", the first {shared.length} tokens once for all" if shared is not None else ""
    print(f"frozen-prefix cache: layers 0-{prefix.first_trainable - 1} run once per example "
          f"({len(data)} examples{head}, {need / 2**20:.0f} MiB, {time.monotonic() - t0:.1f}s); steps run the "
          "layers above")
    return prefix, states


def shared_prompt_prefix(model: Any, data: Sequence[Encoded], h: Hyper, pad: int, device: Any
                         ) -> SharedPrefix | None:
    """The tokens every training example starts with, run once per step (`hyper.share_prompt_prefix`, default on),
    when there are enough of them and a batch's loss through it equals the plain forward's (checked here in eval
    mode; a decoder that does not take a repeated key/value cache falls back)."""
    import torch

    shared = find_shared_prefix(data) if h.share_prompt_prefix else None
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    checkpointing = getattr(inner, "is_activation_checkpointing", None)  # transformers 5.x; `is_gradient_...` before
    if checkpointing is None:
        checkpointing = getattr(inner, "is_gradient_checkpointing", False)
    if shared is None or checkpointing:  # recomputed layers keep no cache in training
        return None
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        # the prefix, run once, would share one dropout mask across the batch's rows: no longer the plain forward
        print("shared prompt prefix off: the model has dropout (e.g. `lora.dropout` > 0)")
        return None
    probe = to_device(next(batches(data, min(h.batch_size, len(data)), h.seed, pad)), device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = float(completion_loss(model, probe, h.lead_tokens, h.lead_weight))
            once = float(completion_loss(model, probe, h.lead_tokens, h.lead_weight, shared=shared))
    except (TypeError, ValueError, AttributeError, RuntimeError) as e:  # a decoder without a usable cache
        print(f"shared prompt prefix off: the decoder refused it ({type(e).__name__}: {e})")
        return None
    finally:
        model.train(was_training)
    if not math.isclose(full, once, rel_tol=5e-3, abs_tol=1e-4):
        print(f"shared prompt prefix off: its loss {once:.5f} differs from the plain forward's {full:.5f}")
        return None
    mean = sum(len(e.input_ids) for e in data) / len(data)
    print(f"shared prompt prefix: the first {shared.length} tokens of every example (mean length {mean:.0f}) run "
          f"once per batch (loss {once:.5f} vs {full:.5f} plain)")
    return shared


def eval_loss(model: Any, held: Sequence[Encoded], batch_size: int, pad: int) -> float:
    import torch

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(held), batch_size):
            b = to_device(next(batches(held[i: i + batch_size], len(held[i: i + batch_size]), 0, pad)),
                          model_device(model))
            total += float(completion_loss(model, b)) * len(held[i: i + batch_size])
            n += len(held[i: i + batch_size])
    model.train()
    return total / max(n, 1)
