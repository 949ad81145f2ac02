"""The training pipeline's one config: what to train. How to distribute it lives in configs/launch/."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from llmops.config import StrictModel, load_config


class Method(str, Enum):
    QLORA = "qlora"
    LORA = "lora"
    DORA = "dora"
    FULL_FSDP = "full_fsdp"
    FULL_ZERO3 = "full_zero3"

    @property
    def is_adapter(self) -> bool:
        return self in (Method.QLORA, Method.LORA, Method.DORA)


class DataSettings(StrictModel):
    curated_dir: Path | None = None  # default: data/support of this checkout
    feedback_bucket: str = "llmops"
    feedback_prefix: str | None = "feedback/"  # None: curated data only
    eval_fraction: float = Field(0.1, ge=0.0, le=0.5)
    general_mix: float = Field(0.35, ge=0.0, le=1.0)  # general examples per policy example, to avoid over-generalising


class LoraSettings(StrictModel):
    r: int = Field(16, ge=1, le=256)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    last_layers: int | None = Field(None, ge=1)  # adapt only the top N decoder layers (cheaper backward)
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward: less memory, ~1/3 slower


class QuantSettings(StrictModel):
    """bitsandbytes 4-bit settings (QLoRA only)."""

    quant_type: str = Field("nf4", pattern="^(nf4|fp4)$")
    double_quant: bool = True
    compute_dtype: str = Field("bfloat16", pattern="^(bfloat16|float16|float32)$")
    # peft's prepare_model_for_kbit_training casts every weight that is not 4-bit (embeddings, LM head, norms) to
    # float32; false keeps them in compute_dtype (as bf16 LoRA does), which halves their memory
    upcast_non_quantized: bool = True


class FullSettings(StrictModel):
    """Full fine-tunes: how many processes and the launcher config under configs/launch/."""

    nproc: int = Field(2, ge=1, le=64)
    launch_config: Path | None = None  # default: configs/launch/fsdp.yaml or zero3.json
    cpu_offload: bool = False
    gradient_checkpointing: bool = False


class Hyper(StrictModel):
    max_steps: int = Field(40, ge=1)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    learning_rate: float = Field(1e-3, gt=0, lt=1)
    warmup_steps: int = Field(2, ge=0)
    max_length: int = Field(192, ge=16)
    seed: int = 0
    checkpoint_every: int = Field(10, ge=1)
    early_stopping_patience: int = Field(0, ge=0)  # 0: off; else stop after N evaluations without improvement
    eval_every: int = Field(10, ge=1)
    torch_threads: int = Field(2, ge=1)
    lead_tokens: int = Field(0, ge=0)  # weigh the first answer tokens (the ones that choose the answer) ...
    lead_weight: float = Field(1.0, ge=1.0)  # ... this many times in the loss (1: plain mean)
    # adapters on the top layers only: run the frozen layers once per example. None (auto): when the run passes over
    # the data more than once (the cache pass costs about one pass of those layers; every further view is saved)
    cache_frozen_prefix: bool | None = None
    # the tokens every example starts with (the chat template's system turn) run once per batch, not once per row:
    # the same loss (checked at the start of every run), a third fewer positions per step on the shipped data
    share_prompt_prefix: bool = True
    # the decoder's attention kernel: sdpa (PyTorch's scaled-dot-product attention) or eager (matmul + softmax;
    # ~10% faster LoRA steps on a CPU here, different round-off: see llmops/train/adapters.py)
    attention: Literal["sdpa", "eager"] = "sdpa"


class GateSettings(StrictModel):
    target_metric: str = "exact_match"
    margin: float = Field(0.2, ge=0.0, le=1.0)
    slice_tolerance: float = Field(0.05, ge=0.0, le=1.0)
    min_samples: int = Field(50, ge=1)
    max_leakage: float = Field(0.1, ge=0.0, le=1.0)


class TrainConfig(StrictModel):
    """`llmops train --config configs/train/smollm2_qlora.yaml` (every key documented in README)."""

    model_name: str = "support-assistant"
    base_version: str = "champion"  # version number or alias the fine-tune starts from
    method: Method = Method.QLORA
    data: DataSettings = DataSettings()
    lora: LoraSettings | None = LoraSettings()
    quant: QuantSettings | None = None
    full: FullSettings | None = None
    hyper: Hyper = Hyper()
    gate: GateSettings = GateSettings()

    @model_validator(mode="after")
    def _compatible(self) -> TrainConfig:
        m = self.method
        if m.is_adapter and self.full is not None:
            raise ValueError(f"method {m.value} is an adapter method: remove `full:` (it is for full_fsdp / "
                             "full_zero3)")
        if not m.is_adapter and "lora" in self.model_fields_set and self.lora is not None:
            raise ValueError(f"method {m.value} is a full fine-tune: remove `lora:` (it is for qlora / lora / dora)")
        if not m.is_adapter and (self.quant is not None):
            raise ValueError(f"method {m.value} is a full fine-tune: remove `quant:` (4-bit is for qlora)")
        if m is not Method.QLORA and self.quant is not None:
            raise ValueError(f"`quant:` only applies to method qlora, not {m.value}")
        if m.is_adapter and self.lora is None:
            raise ValueError(f"method {m.value} needs `lora:` settings")
        return self

    def resolved(self) -> TrainConfig:
        """Fill method-dependent defaults (4-bit settings for qlora, launcher for full fine-tunes)."""
        upd: dict[str, object] = {}
        if self.method is Method.QLORA and self.quant is None:
            upd["quant"] = QuantSettings()
        if not self.method.is_adapter:
            upd["lora"] = None
            if self.full is None:
                upd["full"] = FullSettings()
        return self.model_copy(update=upd)


def load_train_config(path: str | Path) -> TrainConfig:
    return load_config(path, TrainConfig).resolved()
