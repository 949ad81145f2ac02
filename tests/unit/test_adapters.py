"""Adapter fine-tuning on the tiny random llama: every method trains, saves, merges; QLoRA's generate guard;
a killed run resumes from its checkpoint and continues exactly as an uninterrupted one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmops.data.curated import chat
from llmops.data.schema import ChatExample
from llmops.train.adapters import FourBitGenerateGuard, load_for_training, merge_adapter, train_adapter
from llmops.train.config import Hyper, Method, TrainConfig
from llmops.train.loop import IGNORE, encode

EXAMPLES = [ChatExample(prompt=chat(f"What is the refund window for plan {i}?"),
                        completion=f"The refund window for plan {i} is {10 + i} days.") for i in range(8)]


def cfg(method: Method, steps: int = 4, **hyper: object) -> TrainConfig:
    h = {"max_steps": steps, "batch_size": 4, "learning_rate": 5e-3, "checkpoint_every": 2, "torch_threads": 1,
         **hyper}
    return TrainConfig(method=method, hyper=Hyper(**h)).resolved()  # type: ignore[arg-type]


def test_labels_cover_only_the_answer(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = encode(tok, EXAMPLES[0], max_length=256)
    answer = [t for t in enc.labels if t != IGNORE]
    assert tok.decode(answer).strip().startswith("The refund window for plan 0 is 10 days.")
    assert answer[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    n_prompt = sum(1 for t in enc.labels if t == IGNORE)
    assert "refund window for plan 0?" in tok.decode(enc.input_ids[:n_prompt])


@pytest.mark.parametrize("method", [Method.LORA, Method.DORA, Method.QLORA])
def test_each_adapter_method_trains_saves_and_merges(method: Method, tiny_model_dir: Path, tmp_path: Path) -> None:
    rows: list[tuple[int, dict[str, float]]] = []
    adapter, result = train_adapter(cfg(method), tiny_model_dir, EXAMPLES, [], tmp_path / "run",
                                    sink=lambda r, s: rows.append((s, r)))
    assert result.steps == 4 and [s for s, _ in rows] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["tokens_per_s"] > 0 for _, r in rows)
    assert (adapter / "adapter_config.json").is_file()
    merged = merge_adapter(tiny_model_dir, adapter, tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())
    changed = any((a - b).abs().max() > 0 for a, b in zip(model.parameters(), base.parameters(), strict=True))
    assert changed, "merging the trained adapter changed no weight"


def test_qlora_refuses_generate_before_training(tiny_model_dir: Path) -> None:
    model, tok = load_for_training(cfg(Method.QLORA), tiny_model_dir)
    ids = tok("hello", return_tensors="pt")
    with pytest.raises(FourBitGenerateGuard, match="before training"):
        model.generate(**ids, max_new_tokens=2)


def test_qlora_lora_b_receives_gradients(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The failure the guard prevents: lora_B must move away from its zero init during training.
    adapter, _ = train_adapter(cfg(Method.QLORA, steps=3), tiny_model_dir, EXAMPLES, [], tmp_path / "q")
    from safetensors.torch import load_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)


def test_killed_run_resumes_like_an_uninterrupted_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    _, full = train_adapter(cfg(Method.LORA, steps=4), tiny_model_dir, EXAMPLES, [], tmp_path / "a")
    # "Kill" a second run after step 2: keep only its step-2 checkpoint, then start it again.
    _, _ = train_adapter(cfg(Method.LORA, steps=4), tiny_model_dir, EXAMPLES, [], tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoint-4")
    _, resumed = train_adapter(cfg(Method.LORA, steps=4), tiny_model_dir, EXAMPLES, [], tmp_path / "b")
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-2")
    assert resumed.losses == pytest.approx(full.losses, rel=1e-4)


def test_loss_falls(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Judged on the full training set every 5 steps (not on noisy per-batch losses).
    evals: list[float] = []
    c = cfg(Method.LORA, steps=40, learning_rate=5e-3, checkpoint_every=100, early_stopping_patience=100,
            eval_every=5)
    train_adapter(c, tiny_model_dir, EXAMPLES, EXAMPLES, tmp_path / "lf",
                  sink=lambda row, _: evals.append(row["eval_loss"]) if "eval_loss" in row else None)
    # deterministic (seeded); frozen LoRA weights would give a flat line
    assert len(evals) == 8 and evals[-1] < evals[0] - 0.3, evals


def test_early_stopping_stops_when_eval_loss_rises_and_keeps_the_best(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Eval answers contradict the training answers: the better the model fits, the worse its eval loss.
    contradicting = [ex.model_copy(update={"completion": f"Never, for plan {i}."}) for i, ex in enumerate(EXAMPLES)]
    evals: list[float] = []
    c = cfg(Method.LORA, steps=60, learning_rate=2e-2, early_stopping_patience=2, eval_every=3, checkpoint_every=100)
    _, r = train_adapter(c, tiny_model_dir, EXAMPLES, contradicting, tmp_path / "es",
                         sink=lambda row, _: evals.append(row["eval_loss"]) if "eval_loss" in row else None)
    assert r.stopped_early and r.steps < 60
    assert r.best_eval_loss == min(evals)


def test_lead_tokens_weigh_the_start_of_the_answer(tiny_model_dir: Path) -> None:
    """The weighted loss is the weighted mean of per-token losses: weight 1 everywhere is the plain mean, and a
    lead weight moves the loss toward the first answer tokens' own mean."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops.train.loop import batches, completion_loss

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    batch = next(batches([encode(tok, e, 256) for e in EXAMPLES[:4]], 4, 0, tok.pad_token_id or 0))
    with torch.no_grad():
        plain = float(completion_loss(model, batch))
        same = float(completion_loss(model, batch, lead_tokens=3, lead_weight=1.0))
        heavy = float(completion_loss(model, batch, lead_tokens=3, lead_weight=1000.0))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE
        per_token = F.cross_entropy(logits[keep].float(), labels[keep], reduction="none")
        lead = keep.long().cumsum(dim=1)[keep] <= 3
    assert same == pytest.approx(plain, rel=1e-5)
    assert heavy == pytest.approx(float(per_token[lead].mean()), rel=1e-2)
    assert heavy != pytest.approx(plain, rel=1e-3)


def test_same_seed_same_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The adapter's initial weights are seeded too: two runs of one config train identically (CI and users get
    the result they measured), and another seed gives another run."""
    _, a = train_adapter(cfg(Method.LORA, steps=3), tiny_model_dir, EXAMPLES, [], tmp_path / "a")
    _, b = train_adapter(cfg(Method.LORA, steps=3), tiny_model_dir, EXAMPLES, [], tmp_path / "b")
    _, c = train_adapter(cfg(Method.LORA, steps=3, seed=1), tiny_model_dir, EXAMPLES, [], tmp_path / "c")
    assert a.losses == b.losses
    assert a.losses != c.losses


def test_gradient_checkpointing_trains_the_same_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    """lora.gradient_checkpointing recomputes activations in backward: less memory, the same losses."""
    from llmops.train.config import LoraSettings

    plain = cfg(Method.LORA, steps=3)
    gc = plain.model_copy(update={"lora": LoraSettings(gradient_checkpointing=True)})
    _, a = train_adapter(plain, tiny_model_dir, EXAMPLES, [], tmp_path / "a")
    _, b = train_adapter(gc, tiny_model_dir, EXAMPLES, [], tmp_path / "b")
    assert b.losses == pytest.approx(a.losses, rel=1e-4)


@pytest.mark.parametrize("upcast", [True, False])
def test_qlora_upcast_of_the_weights_left_unquantized(upcast: bool, tiny_model_dir: Path) -> None:
    """peft's kbit preparation casts embeddings and norms to float32; quant.upcast_non_quantized=false keeps bf16."""
    import torch

    from llmops.train.config import QuantSettings

    c = cfg(Method.QLORA).model_copy(update={"quant": QuantSettings(upcast_non_quantized=upcast)})
    model, _ = load_for_training(c, tiny_model_dir)
    emb = model.get_input_embeddings().weight
    assert emb.dtype == (torch.float32 if upcast else torch.bfloat16)
    assert not emb.requires_grad
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
