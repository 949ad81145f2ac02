"""Full fine-tunes on 2 CPU ranks (torchrun, gloo): FSDP2 and DeepSpeed ZeRO-3 on the tiny llama.

Each run really shards (every rank holds about half of the parameters), lowers the loss on a small repeated
dataset and leaves a consolidated model that loads with the full parameter count.
Times here: FSDP2 ~10 s, ZeRO-3 ~15 s; ZeRO-3's first run on a machine also JIT-builds DeepSpeed's shm comm op
(g++/ninja, cached in ~/.cache/torch_extensions), which took 25-55 s more.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops.config import parse_config
from llmops.data.schema import ChatExample, Message
from llmops.errors import ConfigError
from llmops.train.config import FullSettings, Hyper, Method, TrainConfig
from llmops.train.full import LAUNCH_DIR, FullResult, launch_full, load_fsdp_launch, load_zero3_launch

PAIRS = [
    ("What is the refund window?", "The refund window is thirty days from purchase."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How do I contact support?", "Please contact support by chat or e-mail."),
    ("Hello", "Hello, how can I help you today?"),
]


def examples() -> list[ChatExample]:
    return [ChatExample(prompt=(Message(role="user", content=q),), completion=a) for q, a in PAIRS] * 2


def run(method: Method, base: Path, out: Path) -> FullResult:
    # global batch 4 (2 per rank), high constant-ish LR: the random tiny model memorises 4 answers quickly
    cfg = TrainConfig(method=method, lora=None, full=FullSettings(nproc=2),
                      hyper=Hyper(max_steps=10, batch_size=4, learning_rate=3e-3, warmup_steps=0, seed=0))
    return launch_full(cfg, base, examples(), out, timeout_s=240)


def check(res: FullResult, out: Path) -> None:
    assert res.steps == 10 and len(res.losses) == 10
    assert len(res.step_seconds) == 10 and all(t > 0 for t in res.step_seconds)
    assert res.per_rank_peak_mem_bytes == (0, 0)  # CPU ranks: no GPU memory
    first, last = sum(res.losses[:2]) / 2, sum(res.losses[-2:]) / 2
    assert last < first - 0.5, f"loss did not fall: {res.losses}"
    assert len(res.per_rank_param_numel) == 2
    for n in res.per_rank_param_numel:
        assert 0.4 <= n / res.total_param_numel <= 0.6, (res.per_rank_param_numel, res.total_param_numel)
    assert (out / "train.jsonl").read_text().count("\n") == len(examples())
    assert json.loads((out / "result.json").read_text())["world_size"] == 2

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(res.model_dir)
    assert sum(p.numel() for p in model.parameters()) == res.total_param_numel
    assert AutoTokenizer.from_pretrained(res.model_dir).chat_template


def test_fsdp2_shards_and_learns(tiny_model_dir: Path, tmp_path: Path) -> None:
    res = run(Method.FULL_FSDP, tiny_model_dir, tmp_path / "fsdp")
    check(res, tmp_path / "fsdp")


def test_zero3_shards_and_learns(tiny_model_dir: Path, tmp_path: Path) -> None:
    res = run(Method.FULL_ZERO3, tiny_model_dir, tmp_path / "zero3")
    check(res, tmp_path / "zero3")


def test_qlora_with_full_settings_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"method": "qlora", "full": {"nproc": 2}}, TrainConfig)
    assert "full:" in str(err.value) and "qlora" in str(err.value)


def test_shipped_launch_configs_are_valid() -> None:
    fsdp = load_fsdp_launch(LAUNCH_DIR / "fsdp.yaml")
    assert fsdp.cpu_offload is False and fsdp.mixed_precision.param_dtype == "auto"
    for name in ("zero3.json", "zero3_offload.json"):
        ds = load_zero3_launch(LAUNCH_DIR / name)
        assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_accumulation_steps"] == "auto"
    assert "offload_param" in load_zero3_launch(LAUNCH_DIR / "zero3_offload.json")["zero_optimization"]


def test_zero3_json_with_train_batch_size_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_batch_size": 16}))
    with pytest.raises(ConfigError, match="train_batch_size"):
        load_zero3_launch(bad)
