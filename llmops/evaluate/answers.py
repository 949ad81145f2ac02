"""A model's greedy answers to evaluation prompts, kept by what the model is, so no model answers a prompt twice.

A registered version's sha256 (checked at every pull) names its weights and tokenizer exactly; with the generation
settings below it names the greedy answers too. The gate of the training pipeline answers the held-out questions and
control prompts with the champion and the challenger; the repair later scores the same champion (now the
challenger, promoted) on a subset of those prompts. Its answers are read back from the answer book instead of
generated again (measured on the demo: 20-31 s of a 2-core machine).

One caveat, stated in the report: answers generated in a batch of other prompts (left padding) can differ from
answers generated in another batch by bf16 round-off. A kept answer is the model's own answer under this exact
configuration, just not necessarily the bit-identical answer of a re-run in a different batch.

Books live in the object store at `eval-answers/<model sha256>/<settings digest>.json` and are logged to the
MLflow run that wrote them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from llmops.data.schema import ChatExample

MAX_NEW_TOKENS = 48
DTYPE = "bfloat16"
PREFIX = "eval-answers"


def prompt_key(example: ChatExample) -> str:
    """The prompt's messages (roles and contents), hashed; the completion and slice are not part of it."""
    blob = json.dumps([m.model_dump() for m in example.prompt], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@cache
def generation_settings() -> dict[str, Any]:
    """Everything besides the model and the prompt that decides a greedy answer."""
    import tokenizers
    import torch
    import transformers

    return {"decoding": "greedy", "max_new_tokens": MAX_NEW_TOKENS, "dtype": DTYPE, "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def settings_digest(settings: Mapping[str, Any] | None = None) -> str:
    blob = json.dumps(dict(settings or generation_settings()), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def book_key(model_sha256: str, settings: Mapping[str, Any] | None = None) -> str:
    if len(model_sha256) != 64 or any(c not in "0123456789abcdef" for c in model_sha256):
        raise ValueError(f"not a sha256 of a model: {model_sha256!r}")
    return f"{PREFIX}/{model_sha256}/{settings_digest(settings)}.json"


def book_json(model_sha256: str, answers: Mapping[str, str], settings: Mapping[str, Any] | None = None) -> str:
    return json.dumps({"model_sha256": model_sha256, "settings": dict(settings or generation_settings()),
                       "answers": dict(sorted(answers.items()))}, indent=1, ensure_ascii=False)


def load_book(s3: Any, bucket: str, model_sha256: str) -> dict[str, str]:
    """The kept answers of this model under the current settings; empty when none were kept (or the book is for
    other settings: its key then differs, and a book whose content disagrees with its key is not trusted)."""
    try:
        body = s3.get_object(Bucket=bucket, Key=book_key(model_sha256))["Body"].read()
    except s3.exceptions.NoSuchKey:
        return {}
    book = json.loads(body)
    if book.get("model_sha256") != model_sha256 or book.get("settings") != generation_settings():
        return {}
    return {str(k): str(v) for k, v in book.get("answers", {}).items()}


def save_book(s3: Any, bucket: str, model_sha256: str, answers: Mapping[str, str]) -> str:
    """Add `answers` to the model's book (earlier answers stay); returns the object key."""
    merged = {**load_book(s3, bucket, model_sha256), **answers}
    key = book_key(model_sha256)
    s3.put_object(Bucket=bucket, Key=key, Body=book_json(model_sha256, merged).encode(),
                  ContentType="application/json")
    return key


def split_known(examples: Sequence[ChatExample], known: Mapping[str, str]) -> tuple[list[int], dict[int, str]]:
    """Indices of the examples still to answer, and the kept answers of the others by index."""
    todo: list[int] = []
    have: dict[int, str] = {}
    for i, ex in enumerate(examples):
        k = prompt_key(ex)
        if k in known:
            have[i] = known[k]
        else:
            todo.append(i)
    return todo, have
