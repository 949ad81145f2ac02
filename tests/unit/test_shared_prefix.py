"""The shared prompt prefix (llmops/train/shared_prefix.py): the tokens every example starts with run once per
batch; the loss and the adapter gradients equal the plain forward's, and a training run follows the plain run."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.data.curated import chat
from llmops.data.schema import ChatExample, Message
from llmops.train.adapters import load_for_training, train_adapter
from llmops.train.config import Hyper, LoraSettings, Method, TrainConfig
from llmops.train.loop import IGNORE, Encoded, batches, completion_loss, encode
from llmops.train.shared_prefix import find_shared_prefix

from .lossgrad import assert_same_loss_and_grads

EXAMPLES = [ChatExample(prompt=chat("Tell me " + "really " * (i % 4) + f"about plan {i}?"),
                        completion=f"Plan {i} costs {10 + i} dollars a month.") for i in range(12)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmops.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("shared") / "tiny-llama-4", layers=4)


def cfg(last_layers: int | None, share: bool, steps: int = 6) -> TrainConfig:
    return TrainConfig(method=Method.LORA, lora=LoraSettings(last_layers=last_layers, dropout=0.0),
                       hyper=Hyper(max_steps=steps, batch_size=4, learning_rate=5e-3, checkpoint_every=100,
                                   torch_threads=1, lead_tokens=2, lead_weight=3.0, cache_frozen_prefix=False,
                                   share_prompt_prefix=share)).resolved()


def test_the_prefix_is_the_common_head_and_stops_before_any_label() -> None:
    a = Encoded([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [IGNORE] * 10 + [11, 12])
    b = Encoded([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14], [IGNORE] * 10 + [13, 14])
    shared = find_shared_prefix([a, b], min_tokens=4)
    assert shared is not None and shared.ids == tuple(range(1, 10))  # 10 is common but predicts the first label
    c = Encoded([1, 2, 3, 9, 9, 9, 9, 9, 9, 9], [IGNORE] * 8 + [9, 9])
    assert find_shared_prefix([a, b, c], min_tokens=4) is None  # 3 common tokens: not worth it
    assert find_shared_prefix([], min_tokens=4) is None


def test_once_per_batch_gives_the_same_loss_and_gradients(model_dir: Path) -> None:
    model, tok = load_for_training(cfg(2, True), model_dir)
    model = model.float()
    data = [encode(tok, e, 256) for e in EXAMPLES]
    shared = find_shared_prefix(data)
    assert shared is not None and shared.length >= 10  # the system turn and the user turn's header
    batch = next(batches(data, 4, 3, tok.pad_token_id))
    assert len({int(m.sum()) for m in batch["attention_mask"]}) > 1  # rows of different lengths: padding on the right
    assert_same_loss_and_grads(model, lambda: completion_loss(model, batch, 2, 3.0),
                               lambda: completion_loss(model, batch, 2, 3.0, shared=shared))
    other = ChatExample(prompt=(Message(role="user", content="No system turn here?"),), completion="None.")
    odd = next(batches([encode(tok, other, 256)] * 2, 2, 0, tok.pad_token_id))
    assert not shared.matches(odd["input_ids"])  # a batch without the prefix takes the plain forward
    assert float(completion_loss(model, odd, shared=shared)) == pytest.approx(float(completion_loss(model, odd)))


def test_a_run_with_the_shared_prefix_follows_the_plain_run(model_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _, plain = train_adapter(cfg(None, False), model_dir, EXAMPLES, [], tmp_path / "plain")
    assert "shared prompt prefix" not in capsys.readouterr().out
    _, once = train_adapter(cfg(None, True), model_dir, EXAMPLES, [], tmp_path / "once")
    out = capsys.readouterr().out
    assert "shared prompt prefix: the first" in out and "run once per batch" in out, out
    assert once.losses == pytest.approx(plain.losses, rel=2e-2)
    assert once.losses[-1] < once.losses[0]


def test_lora_dropout_turns_the_shared_prefix_off(model_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """With dropout, the prefix run once would share one mask across the batch's rows: not the plain forward."""
    c = cfg(None, True, steps=1)
    c = c.model_copy(update={"lora": c.lora.model_copy(update={"dropout": 0.1})})
    train_adapter(c, model_dir, EXAMPLES, [], tmp_path / "dropout")
    out = capsys.readouterr().out
    assert "shared prompt prefix off: the model has dropout" in out and "run once per batch" not in out, out
