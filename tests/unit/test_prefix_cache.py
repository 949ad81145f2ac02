"""The frozen-prefix cache (llmops/train/prefix.py): with adapters on the top layers only, training on the cached
states of the frozen layers computes the same loss and the same adapter gradients as the full forward, and the
training run it drives follows the same loss curve."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.data.curated import chat
from llmops.data.schema import ChatExample
from llmops.train.adapters import load_for_training, train_adapter
from llmops.train.config import Hyper, LoraSettings, Method, TrainConfig
from llmops.train.loop import batches, completion_loss, encode, with_states
from llmops.train.prefix import find_frozen_prefix, prefix_states

from .lossgrad import assert_same_loss_and_grads

# prompts of different lengths: the cache is built in length-sorted batches, training batches mix them
EXAMPLES = [ChatExample(prompt=chat("Tell me " + "really " * (i % 4) + f"about plan {i}?"),
                        completion=f"Plan {i} costs {10 + i} dollars a month.") for i in range(12)]


@pytest.fixture(scope="module")
def deep_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmops.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("deep") / "tiny-llama-6", layers=6)


def cfg(last_layers: int | None, cache: bool | None = True, steps: int = 6) -> TrainConfig:
    return TrainConfig(method=Method.LORA, lora=LoraSettings(last_layers=last_layers, dropout=0.0),
                       hyper=Hyper(max_steps=steps, batch_size=4, learning_rate=5e-3, checkpoint_every=100,
                                   torch_threads=1, lead_tokens=2, lead_weight=3.0, cache_frozen_prefix=cache,
                                   share_prompt_prefix=False)
                       ).resolved()


def test_prefix_found_only_below_the_first_trainable_layer(deep_model_dir: Path) -> None:
    model, _ = load_for_training(cfg(2), deep_model_dir)
    prefix = find_frozen_prefix(model)
    assert prefix is not None and prefix.first_trainable == 4
    every, _ = load_for_training(cfg(None), deep_model_dir)
    assert find_frozen_prefix(every) is None  # the bottom layer trains: nothing to cache


def test_cached_states_give_the_same_loss_and_gradients(deep_model_dir: Path) -> None:
    model, tok = load_for_training(cfg(2), deep_model_dir)
    model = model.float()
    prefix = find_frozen_prefix(model)
    assert prefix is not None
    data = [encode(tok, e, 256) for e in EXAMPLES]
    states = prefix_states(prefix, data, batch_size=5, pad_id=tok.pad_token_id)
    assert [s.shape[0] for s in states] == [len(e.input_ids) for e in data]
    batch = next(batches(data, 4, 3, tok.pad_token_id))
    assert_same_loss_and_grads(model, lambda: completion_loss(model, batch, 2, 3.0),
                               lambda: completion_loss(model, with_states(batch, states), 2, 3.0, prefix))
    assert len(prefix.decoder.layers) == 6  # the full stack is back after the cached forward


def test_shared_tokens_run_once_in_the_cache_pass_and_give_the_same_states(deep_model_dir: Path) -> None:
    import torch

    from llmops.train.shared_prefix import find_shared_prefix

    model, tok = load_for_training(cfg(2), deep_model_dir)
    model = model.float()
    prefix = find_frozen_prefix(model)
    assert prefix is not None
    data = [encode(tok, e, 256) for e in EXAMPLES]
    shared = find_shared_prefix(data)
    assert shared is not None
    plain = prefix_states(prefix, data, batch_size=5, pad_id=tok.pad_token_id)
    once = prefix_states(prefix, data, batch_size=5, pad_id=tok.pad_token_id, shared=shared)
    assert [s.shape for s in once] == [s.shape for s in plain]
    for a, b in zip(plain, once, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_run_with_the_cache_follows_the_plain_run(deep_model_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _, plain = train_adapter(cfg(2, cache=False), deep_model_dir, EXAMPLES, [], tmp_path / "plain")
    assert "frozen-prefix cache" not in capsys.readouterr().out
    _, cached = train_adapter(cfg(2, cache=True), deep_model_dir, EXAMPLES, [], tmp_path / "cached")
    assert "frozen-prefix cache: layers 0-3 run once per example (12 examples" in capsys.readouterr().out
    assert cached.losses == pytest.approx(plain.losses, rel=2e-2)
    assert cached.losses[-1] < cached.losses[0]


def test_auto_caches_only_when_the_run_passes_over_the_data_more_than_once(deep_model_dir: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    train_adapter(cfg(2, cache=None, steps=3), deep_model_dir, EXAMPLES, [], tmp_path / "once")  # 12 of 12: 1.0x
    assert "frozen-prefix cache" not in capsys.readouterr().out
    train_adapter(cfg(2, cache=None, steps=4), deep_model_dir, EXAMPLES, [], tmp_path / "more")  # 16 of 12: 1.3x
    assert "frozen-prefix cache: layers 0-3" in capsys.readouterr().out
