"""One rank of an FSDP2 full fine-tune; started by llmops.train.full.launch_full under torchrun.

Each decoder layer is one `fully_shard` unit, then the root. The root is a small module around the model whose
forward is the shared completion-only loss (llmops.train.loop.completion_loss), so FSDP's root hooks gather the
embeddings, final norm and (tied) LM head even though that loss calls `model.model` and `model.lm_head` directly.
Each rank takes every world_size-th batch of the shared shuffled stream; FSDP averages the gradients.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from llmops.train.full import FsdpLaunch, load_fsdp_launch, read_run, worker_args
from llmops.train.loop import batches, completion_loss, encode, lr_at


class CompletionLossModule(nn.Module):
    """Root FSDP unit: forward(batch) is the completion loss of the wrapped causal LM."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss: torch.Tensor = completion_loss(self.model, batch)
        return loss


def shard(model: Any, launch: FsdpLaunch, offload: bool, device: torch.device) -> CompletionLossModule:
    """Apply FSDP2 to every decoder layer, then to the root loss module.

    Args:
        model: a HF causal LM with `model.model.layers` (fp32 weights).
        launch: the launcher settings (reshard, mixed precision, offload).
        offload: CPUOffloadPolicy for shards, gradients and the optimizer step.
        device: this rank's device.

    Returns:
        The sharded root module.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mp = launch.mixed_precision
    pdt = ("bfloat16" if device.type == "cuda" else "float32") if mp.param_dtype == "auto" else mp.param_dtype
    policy = MixedPrecisionPolicy(param_dtype=getattr(torch, pdt), reduce_dtype=getattr(torch, mp.reduce_dtype))
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    off = CPUOffloadPolicy(pin_memory=device.type == "cuda") if offload else OffloadPolicy()
    kw: dict[str, Any] = {"mesh": mesh, "mp_policy": policy, "offload_policy": off}
    for layer in model.model.layers:
        fully_shard(layer, reshard_after_forward=launch.reshard_after_forward, **kw)
    root = CompletionLossModule(model)
    fully_shard(root, **kw)
    return root


def local_numel(module: nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model) over the module's parameters."""
    from torch.distributed.tensor import DTensor

    local = total = 0
    for p in module.parameters():
        local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
        total += p.numel()
    return local, total


def tied_aliases(model: nn.Module) -> list[str]:
    """Names of parameters that are another parameter (tied LM head): save_pretrained must not write them."""
    seen: set[int] = set()
    dup = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            dup.append(name)
        seen.add(id(p))
    return dup


def main(argv: Sequence[str] | None = None) -> None:
    """Train on this rank; rank 0 saves the full model (bf16) and result.json.

    Args:
        argv: the arguments `launch_full` passes (None: sys.argv[1:]).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = worker_args(argv)
    cfg, examples = read_run(args)
    launch = load_fsdp_launch(args.launch)
    assert cfg.full is not None
    h = cfg.hyper
    cuda = torch.cuda.is_available()
    backend = launch.backend if launch.backend != "auto" else ("nccl" if cuda else "gloo")
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    torch.manual_seed(h.seed)

    tok = AutoTokenizer.from_pretrained(args.base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    if cfg.full.gradient_checkpointing:
        # transformers 5 renamed it (the old name warns); keep the old one for older releases
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        model.config.use_cache = False
    offload = cfg.full.cpu_offload or launch.cpu_offload
    if not offload:
        model.to(device)
    root = shard(model, launch, offload, device)
    mine, total = local_numel(root)
    shards: list[Any] = [None] * world
    dist.all_gather_object(shards, mine)

    data = [encode(tok, ex, h.max_length) for ex in examples]
    per_rank = max(1, h.batch_size // world)  # hyper.batch_size is the global batch, as in the 1-process loop
    stream = batches(data, per_rank, h.seed, tok.pad_token_id)
    opt = torch.optim.AdamW(root.parameters(), lr=h.learning_rate, weight_decay=0.0)
    root.train()
    losses: list[float] = []
    step_seconds: list[float] = []
    t0 = time.monotonic()
    for step in range(h.max_steps):
        t_step = time.monotonic()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, h)
        total_loss = torch.zeros((), device=device)
        for _ in range(h.grad_accum):
            for _ in range(rank):  # this rank's batch: every world_size-th of the shared stream
                next(stream)
            batch = {k: v.to(device) for k, v in next(stream).items()}
            for _ in range(world - rank - 1):
                next(stream)
            loss = root(batch) / h.grad_accum
            loss.backward()
            total_loss += loss.detach()
        torch.nn.utils.clip_grad_norm_(root.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dist.all_reduce(total_loss, op=dist.ReduceOp.SUM)
        losses.append(float(total_loss) / world)  # float() waits for the step's kernels
        step_seconds.append(time.monotonic() - t_step)
        if rank == 0:
            print(f"step {step + 1}/{h.max_steps} loss {losses[-1]:.4f}", flush=True)
    seconds = time.monotonic() - t0
    peaks: list[Any] = [None] * world  # each rank's peak GPU memory of the training steps (0 on CPU)
    dist.all_gather_object(peaks, int(torch.cuda.max_memory_allocated()) if cuda else 0)

    state: dict[str, Any] = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    model_dir = Path(args.out) / "model"
    if rank == 0:
        sd = {k.removeprefix("model."): v.to(torch.bfloat16) for k, v in state.items()}
        for name in tied_aliases(model):
            sd.pop(name, None)
        model.config.dtype = torch.bfloat16
        model.save_pretrained(model_dir, state_dict=sd, safe_serialization=True)
        tok.save_pretrained(model_dir)
        res = {"model_dir": str(model_dir), "steps": h.max_steps, "losses": losses, "seconds": seconds,
               "per_rank_param_numel": shards, "total_param_numel": total, "world_size": world,
               "backend": backend, "step_seconds": step_seconds, "per_rank_peak_mem_bytes": peaks}
        (Path(args.out) / "result.json").write_text(json.dumps(res, indent=2))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
