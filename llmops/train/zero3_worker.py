"""One rank of a DeepSpeed ZeRO-3 full fine-tune; started by llmops.train.full.launch_full under torchrun.

HF Trainer drives DeepSpeed with the JSON from configs/launch/ (its "auto" values come from hyper). The loss is
the shared completion-only loss (llmops.train.loop.completion_loss); ZeRO-3 gathers each submodule's
parameters in its own hooks, so calling `model.model` and `model.lm_head` directly is safe. On CPU it runs
with `use_cpu=True` and DS_ACCELERATOR=cpu (set by the launcher); DeepSpeed JIT-builds a comm op on first use.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer, TrainerCallback

from llmops.train.full import load_zero3_launch, read_run, worker_args
from llmops.train.loop import IGNORE, Encoded, completion_loss, encode


class EncodedDataset(torch.utils.data.Dataset):
    """Prompt + completion token ids with prompt-masked labels (from llmops.train.loop.encode)."""

    def __init__(self, rows: Sequence[Encoded]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        e = self.rows[i]
        return {"input_ids": e.input_ids, "labels": e.labels}


class PadCollator:
    """Right-pad a list of examples to the longest: pad id for inputs, -100 for labels, 0 in the mask."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class CompletionTrainer(Trainer):
    """Trainer whose loss is the shared completion-only loss (a per-micro-batch mean; Trainer scales for GA)."""

    loss_is_scaled_for_ga = False

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        inner = getattr(model, "module", model)  # the DeepSpeed engine wraps the HF model
        loss = completion_loss(inner, inputs)
        return (loss, None) if return_outputs else loss


class StepClock(TrainerCallback):
    """Wall time from the first step's start to the end of training (without start-up and saving)."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.seconds = 0.0
        self.step_t0 = 0.0
        self.step_seconds: list[float] = []  # each optimizer step, until its loss was logged

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_t0 = time.monotonic()
        if self.t0 is None:
            self.t0 = self.step_t0

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # logging_steps=1: the Trainer reads the loss (a device sync) right after each step
        if len(self.step_seconds) < state.global_step:
            self.step_seconds.append(time.monotonic() - self.step_t0)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.t0 is not None:
            self.seconds = time.monotonic() - self.t0


def partition_numel(model: nn.Module) -> tuple[int, int]:
    """(elements of this rank's ZeRO-3 partitions, elements of the whole model)."""
    local = total = 0
    params: list[Any] = list(model.parameters())  # ZeRO-3 adds ds_tensor (local partition) and ds_numel
    for p in params:
        if hasattr(p, "ds_tensor"):
            local += p.ds_tensor.numel()
            total += int(p.ds_numel)
        else:
            local += p.numel()
            total += p.numel()
    return local, total


def checkpointing_arg() -> str:
    """TrainingArguments' name for gradient checkpointing: `activation_checkpointing` since transformers 5.2x,
    `gradient_checkpointing` before (5.17 on the lent GPU machine has only the old one)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def main(argv: Sequence[str] | None = None) -> None:
    """Train on this rank with HF Trainer + DeepSpeed ZeRO-3; the main process saves the model and result.json.

    Args:
        argv: the arguments `launch_full` passes (None: sys.argv[1:]).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    # DeepSpeed 0.19 calls the renamed collectives on every step; one warning each per step floods train.log
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    args = worker_args(argv)
    cfg, examples = read_run(args)
    assert cfg.full is not None
    ds_config = load_zero3_launch(args.launch)
    h = cfg.hyper
    cuda = torch.cuda.is_available()
    out = Path(args.out)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    checkpointing: dict[str, Any] = {checkpointing_arg(): cfg.full.gradient_checkpointing}
    targs = TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=h.max_steps, learning_rate=h.learning_rate,
        per_device_train_batch_size=max(1, h.batch_size // world), gradient_accumulation_steps=h.grad_accum,
        warmup_steps=h.warmup_steps,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1}, weight_decay=0.0,
        max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none", seed=h.seed, use_cpu=not cuda,
        bf16=cuda, deepspeed=ds_config, **checkpointing,
        dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False,
    )
    tok = AutoTokenizer.from_pretrained(args.base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # TrainingArguments(deepspeed=...) came first, so from_pretrained partitions the weights as it loads (zero.Init)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.bfloat16 if cuda else torch.float32)
    data = EncodedDataset([encode(tok, ex, h.max_length) for ex in examples])
    clock = StepClock()
    trainer = CompletionTrainer(model=model, args=targs, train_dataset=data,
                                data_collator=PadCollator(tok.pad_token_id), callbacks=[clock])
    trainer.train()
    peaks: list[Any] = [None] * world  # each rank's peak GPU memory of the training steps (0 on CPU)
    dist.all_gather_object(peaks, int(torch.cuda.max_memory_allocated()) if cuda else 0)

    assert trainer.model is not None
    mine, total = partition_numel(trainer.model)
    shards: list[Any] = [None] * world
    dist.all_gather_object(shards, mine)
    model_dir = out / "model"
    trainer.save_model(str(model_dir))  # collective: gathers the ZeRO-3 partitions (16-bit save in the JSON)
    losses = [float(r["loss"]) for r in trainer.state.log_history if "loss" in r]
    if trainer.is_world_process_zero():
        tok.save_pretrained(model_dir)
        (model_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the registry wants weights only
        res = {"model_dir": str(model_dir), "steps": trainer.state.global_step, "losses": losses,
               "seconds": clock.seconds, "per_rank_param_numel": shards, "total_param_numel": total,
               "world_size": world, "backend": dist.get_backend(), "step_seconds": clock.step_seconds,
               "per_rank_peak_mem_bytes": peaks}
        (out / "result.json").write_text(json.dumps(res, indent=2))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
