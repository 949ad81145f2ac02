"""Adapter fine-tuning: QLoRA (bitsandbytes NF4 + peft), LoRA and DoRA on the shared training loop."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmops.data.schema import ChatExample
from llmops.errors import LlmopsError
from llmops.train.config import Method, TrainConfig
from llmops.train.loop import LoopResult, MetricSink, run_loop


class FourBitGenerateGuard(LlmopsError):
    """generate() on a 4-bit model before training leaves lora_B.grad None and the loss frozen."""


def guard_generate(model: Any) -> None:
    """Make `generate()` raise on a 4-bit model until training starts: calling it first silently freezes the
    LoRA gradients (ARCHITECTURE.md). `release_generate` lifts the guard once the first step has run."""

    def refuse(*_: Any, **__: Any) -> Any:
        raise FourBitGenerateGuard(
            "generate() was called on the 4-bit model before training",
            "evaluate the base model from its bf16 weights instead; generating on the NF4 model before "
            "training leaves the LoRA gradients None and the loss frozen",
        )

    model.__dict__["_llmops_generate"] = model.generate
    model.generate = refuse


def release_generate(model: Any) -> None:
    if "_llmops_generate" in model.__dict__:
        model.generate = model.__dict__.pop("_llmops_generate")


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each decoder layer in backward (non-reentrant, so the frozen embeddings need no grad)."""
    # transformers 5 renamed it (the old name warns); keep the old one for older releases
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})  # first parameter of both (its name differs)
    model.config.use_cache = False


def load_for_training(cfg: TrainConfig, base_dir: Path) -> tuple[Any, Any]:
    """The base model (bf16, or NF4 for QLoRA) wrapped with a fresh LoRA / DoRA adapter, and its tokenizer.

    On a machine with CUDA the model is placed on the current GPU (QLoRA quantizes onto it), else on the CPU;
    the training loop moves each batch to the model's device."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if not cfg.method.is_adapter or cfg.lora is None:
        raise LlmopsError(f"method {cfg.method.value} is not an adapter method", "use train.full for full fine-tunes")
    tok = AutoTokenizer.from_pretrained(base_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cuda = torch.cuda.is_available()
    # `hyper.attention` (default sdpa). eager: PyTorch's CPU flash-attention backward costs ~9 ms a layer on these
    # ~75-token rows (4.6x its forward); eager's matmul + softmax took a LoRA step on the shipped data from
    # 0.64-0.72 s to 0.58-0.61 s here, but its other round-off moved the trained model: held-out exact match 0.859
    # on the demo's data, 0.795 on the CI test's (below the 0.8 goal), so it is not the default
    attn: dict[str, Any] = {"attn_implementation": cfg.hyper.attention}
    model: Any
    if cfg.method is Method.QLORA:
        q = cfg.quant
        assert q is not None
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                                 bnb_4bit_use_double_quant=q.double_quant,
                                 bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype))
        # on a GPU the 4-bit weights are quantized straight onto it (device_map), else they stay on the CPU
        placement = {"device_map": {"": torch.cuda.current_device()}} if cuda else {}
        model = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=bnb, dtype=torch.bfloat16,
                                                     **placement, **attn)
        if q.upcast_non_quantized:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        else:
            for p in model.parameters():  # what prepare_model_for_kbit_training does, less its float32 cast
                p.requires_grad_(False)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16, **attn)
        if cuda:
            model = model.to("cuda")
    if cfg.lora.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    layers = None
    if cfg.lora.last_layers is not None:
        n = AutoConfig.from_pretrained(base_dir).num_hidden_layers
        layers = list(range(max(0, n - cfg.lora.last_layers), n))
    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), layers_to_transform=layers,
                      use_dora=cfg.method is Method.DORA, task_type="CAUSAL_LM")
    torch.manual_seed(cfg.hyper.seed)  # the adapter's initial weights: same seed, same run
    peft_model = get_peft_model(model, lcfg)
    if cfg.method is Method.QLORA:
        guard_generate(peft_model)
    return peft_model, tok


def train_adapter(cfg: TrainConfig, base_dir: Path, train: Sequence[ChatExample], evaluation: Sequence[ChatExample],
                  out_dir: Path, sink: MetricSink | None = None) -> tuple[Path, LoopResult]:
    """Train an adapter and save it to `out_dir/adapter`; a killed run resumes from its last checkpoint.

    Args:
        cfg: resolved config of an adapter method.
        base_dir: bf16 safetensors of the base version.
        train: training examples; evaluation: examples for the eval loss (early stopping), may be empty.
        out_dir: checkpoints and the adapter.
        sink: receives per-step metrics (loss, learning_rate, tokens_per_s, s_per_step, eval_loss).

    Returns:
        The adapter directory and how the loop went.
    """
    import torch

    if not train:
        raise LlmopsError("no training examples after validation", "read the dataset's quarantine report")
    torch.set_num_threads(cfg.hyper.torch_threads)
    model, tok = load_for_training(cfg, base_dir)
    result = run_loop(model, tok, train, evaluation, cfg.hyper, out_dir, sink,
                      on_start=lambda: release_generate(model))
    adapter_dir = out_dir / "adapter"
    model.save_pretrained(adapter_dir)
    tok.save_pretrained(adapter_dir)
    return adapter_dir, result


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Merge the adapter into the bf16 base (QLoRA too: the served model is never 4-bit) and save it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir
