"""Answer books: a model scored once is not asked the same prompt again. The scores from kept answers equal the scores
from generating them; only missing prompts are generated; a book is read back only for the same model and settings."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

import llmops.evaluate.run as run
from llmops.data.curated import chat
from llmops.data.schema import ChatExample
from llmops.evaluate.answers import book_key, load_book, prompt_key, save_book
from llmops.evaluate.run import evaluate_model

HELDOUT = [ChatExample(prompt=chat(f"How long is the refund window for plan {i}?"), completion=f"{10 + i} days.",
                       slice=f"topic{i % 2}") for i in range(6)]
CONTROL = [ChatExample(prompt=chat(f"Write a haiku about number {i}."), completion="(any)", slice="control")
           for i in range(3)]
POLICY = ["Refunds within 30 days."]
SHA = "ab" * 32


class FakeS3:
    """get_object / put_object over a dict, with boto3's NoSuchKey."""

    class exceptions:  # noqa: N801 (boto3's name)
        class NoSuchKey(Exception):
            pass

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        if (Bucket, Key) not in self.objects:
            raise self.exceptions.NoSuchKey(Key)
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)])}

    def put_object(self, Bucket: str, Key: str, Body: bytes, ContentType: str) -> None:  # noqa: N803
        self.objects[(Bucket, Key)] = Body


def _same_scores(a: Any, b: Any) -> None:
    assert (a.overall, a.slices, a.items, a.leakage, a.samples, a.answers) == \
        (b.overall, b.slices, b.items, b.leakage, b.samples, b.answers)


def test_kept_answers_score_the_same_without_loading_the_model(tiny_model_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = evaluate_model(tiny_model_dir, "champion", HELDOUT, CONTROL, POLICY, threads=1)
    assert fresh.reused == 0 and len(fresh.answers) == len(HELDOUT) + len(CONTROL)

    def no_model(*_: Any, **__: Any) -> Any:
        raise AssertionError("the model was loaded although every answer was kept")

    monkeypatch.setattr(run, "load_for_eval", no_model)
    kept = evaluate_model(tiny_model_dir, "champion", HELDOUT, CONTROL, POLICY, known=fresh.answers)
    assert kept.reused == len(HELDOUT) + len(CONTROL)
    _same_scores(kept, fresh)
    # a subset of the prompts (the repair's suite: held-out minus the corrected questions) reads the same answers
    sub = evaluate_model(tiny_model_dir, "champion", HELDOUT[2:], CONTROL, POLICY, known=fresh.answers)
    assert sub.answers == {k: v for k, v in fresh.answers.items() if k not in {prompt_key(e) for e in HELDOUT[:2]}}


def test_only_the_missing_prompts_are_generated(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = evaluate_model(tiny_model_dir, "m", HELDOUT, CONTROL, POLICY, threads=1)
    asked: list[list[str]] = []
    real = run.generate_answers

    def spy(model: Any, tok: Any, examples: list[ChatExample], **kw: Any) -> list[str]:
        asked.append([e.prompt[-1].content for e in examples])
        return real(model, tok, examples, **kw)

    monkeypatch.setattr(run, "generate_answers", spy)
    missing = {prompt_key(HELDOUT[1]), prompt_key(HELDOUT[4]), prompt_key(CONTROL[0])}
    part = evaluate_model(tiny_model_dir, "m", HELDOUT, CONTROL, POLICY, threads=1,
                          known={k: v for k, v in fresh.answers.items() if k not in missing})
    assert sorted(q for call in asked for q in call) == sorted(
        e.prompt[-1].content for e in (HELDOUT[1], HELDOUT[4], CONTROL[0]))
    assert part.reused == len(fresh.answers) - 3
    # greedy answers of a prompt can move with its batch (padding, bf16 round-off): equal answers are not asserted
    # for the re-generated three, only that each has one and the kept ones came back unchanged
    assert part.answers.keys() == fresh.answers.keys()
    assert {k: v for k, v in part.answers.items() if k not in missing} == \
        {k: v for k, v in fresh.answers.items() if k not in missing}


def test_a_book_round_trips_merges_and_is_refused_for_other_settings() -> None:
    s3 = FakeS3()
    assert load_book(s3, "llmops", SHA) == {}
    key = save_book(s3, "llmops", SHA, {"k1": "a1"})
    assert key == book_key(SHA) and key.startswith(f"eval-answers/{SHA}/")
    save_book(s3, "llmops", SHA, {"k2": "a2"})
    assert load_book(s3, "llmops", SHA) == {"k1": "a1", "k2": "a2"}
    assert load_book(s3, "llmops", "cd" * 32) == {}  # another model: nothing
    body = json.loads(s3.objects[("llmops", key)])
    body["settings"]["max_new_tokens"] = 7  # a book whose content disagrees with its key is not trusted
    s3.objects[("llmops", key)] = json.dumps(body).encode()
    assert load_book(s3, "llmops", SHA) == {}
    with pytest.raises(ValueError, match="not a sha256"):
        book_key("v2")


def test_the_prompt_key_is_the_messages_only() -> None:
    a = ChatExample(prompt=chat("Q?"), completion="A.", slice="x")
    assert prompt_key(a) == prompt_key(ChatExample(prompt=chat("Q?"), completion="other", slice="y", source="s"))
    assert prompt_key(a) != prompt_key(ChatExample(prompt=chat("Q!"), completion="A."))
