"""A tiny random llama with a tokenizer trained offline: the fixture for unit tests and engine plumbing.

Same architecture family and chat template as SmolLM2, so every code path that loads, serves or trains
SmolLM2 runs on it, in milliseconds per step and without any hub access.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "The refund window is thirty days from purchase.",
    "Hello, how can I help you today? I can answer questions about plans, refunds and billing.",
    "What is the capital of France? The capital of France is Paris.",
    "Please contact support by chat or e-mail; urgent issues are escalated to a human agent.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()-",
] * 20


def build_tiny_model(out_dir: Path, hidden: int = 64, layers: int = 2, vocab: int = 512,
                     seed: int = 0, heads: int | None = None, kv_heads: int | None = None,
                     intermediate: int | None = None) -> Path:
    """Write a random `LlamaForCausalLM` (bf16 safetensors) and its BPE tokenizer to `out_dir`.

    Args:
        out_dir: target directory (created).
        hidden: hidden size; heads = hidden // 16.
        layers: number of decoder layers.
        vocab: tokenizer vocabulary size (special tokens included).
        seed: torch seed for the weights, so two builds are identical.
        heads, kv_heads, intermediate: attention heads, KV heads and MLP width (default hidden // 16,
            hidden // 32 and 2 x hidden); e.g. 9, 3, 1536 with hidden 576 and 30 layers is SmolLM2-135M's shape.

    Returns:
        `out_dir`.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=intermediate or hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads or max(1, hidden // 16),
                      num_key_value_heads=kv_heads or max(1, hidden // 32), max_position_embeddings=2048,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                      pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model = model.to(dtype=torch.bfloat16)  # type: ignore[call-arg]
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
