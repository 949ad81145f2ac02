"""Data collection: schema, quarantine, PII scrubbing, de-duplication, deterministic split, versions."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from llmops.data.curated import chat, load_curated
from llmops.data.dataset import build_dataset
from llmops.data.prepare import (
    dataset_digest,
    deduplicate,
    feedback_to_examples,
    parse_feedback_lines,
    prepare,
    scrub_pii,
    split_of,
)
from llmops.data.schema import ChatExample

NOW = datetime(2026, 11, 1, tzinfo=UTC).isoformat()


def fb(**kw: object) -> str:
    row = {"request_id": "r1", "tenant": "acme", "messages": [{"role": "user", "content": "refund window?"}],
           "model_version": "1", "response": "30 days.", "verdict": "bad",
           "correction": "Quillstack refunds annual plans within 45 days of purchase.", "timestamp": NOW}
    row.update(kw)
    return json.dumps({k: v for k, v in row.items() if v is not ...})


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "Invalid JSON"),
        (fb(verdict="meh"), "verdict"),
        (fb(tenant="Bad Tenant"), "tenant"),
        (fb(messages=[]), "messages"),
        (fb(messages=[{"role": "assistant", "content": "hi"}]), "last message must be the user"),
        (fb(messages=[{"role": "user", "content": "   "}]), "content is blank"),
        (fb(correction="  "), "correction is blank"),
        (fb(timestamp=...), "timestamp"),
        (fb(extra_field=1), "extra_field"),
    ],
)
def test_bad_feedback_rows_are_quarantined_with_reason(line: str, reason: str) -> None:
    records, bad = parse_feedback_lines("s3://b/k", ["", fb(), line])
    assert len(records) == 1 and len(bad) == 1
    assert bad[0].row == 3 and bad[0].source == "s3://b/k" and reason in bad[0].reason, bad[0].reason


def test_verdicts_become_examples_or_are_reported() -> None:
    recs, _ = parse_feedback_lines("src", [fb(), fb(request_id="r2", verdict="good", correction=None),
                                           fb(request_id="r3", correction=None)])
    examples, skipped = feedback_to_examples(recs, "src")
    assert [e.completion for e in examples] == ["Quillstack refunds annual plans within 45 days of purchase.",
                                                "30 days."]
    assert len(skipped) == 1 and "without a correction" in skipped[0].reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [("mail me at jane.doe@example.com now", "mail me at [email] now"),
     ("call +44 20 7946 0958 today", "call [phone] today"),
     ("or 555-123-4567.", "or [phone]."),
     ("(555) 123 4567", "[phone]"),
     ("45 days and 99.9% uptime, 3rd of month, 2026-11-28, 1,000 req/min",
      "45 days and 99.9% uptime, 3rd of month, 2026-11-28, 1,000 req/min")],
)
def test_pii_scrubbing(text: str, expected: str) -> None:
    assert scrub_pii(text)[0] == expected


def ex(q: str, a: str, source: str = "feedback:acme") -> ChatExample:
    return ChatExample(prompt=chat(q), completion=a, source=source)


def test_dedup_ignores_case_and_spacing() -> None:
    unique, dupes = deduplicate([ex("Refund window?", "45 days."), ex("refund   window?", "45 days."),
                                 ex("refund window?", "46 days.")])
    assert len(unique) == 2 and dupes == 1


def test_split_is_deterministic_and_order_independent() -> None:
    items = [ex(f"question {i}", f"answer {i}") for i in range(400)]
    a = prepare([], items, eval_fraction=0.2)
    b = prepare([], list(reversed(items)), eval_fraction=0.2)
    assert {e.key_text() for e in a.eval} == {e.key_text() for e in b.eval}
    assert 50 <= len(a.eval) <= 110  # ~20% of 400
    assert all(split_of(e, 0.2) == "eval" for e in a.eval)
    assert a.digest == prepare([], items, eval_fraction=0.2).digest
    assert a.digest != prepare([], items[:-1], eval_fraction=0.2).digest


def test_digest_covers_content() -> None:
    one = {"train": [ex("q", "a")], "eval": []}
    assert dataset_digest(one) != dataset_digest({"train": [ex("q", "b")], "eval": []})


def test_prepare_scrubs_counts_and_reports() -> None:
    out = prepare([ex("q1", "a1", source="curated")], [ex("my mail is a@b.io", "ok"), ex("q1", "a1")], 0.0)
    assert out.stats["_pii_replaced"] == 1 and out.stats["_duplicates"] == 1  # feedback repeats a curated row
    assert any("[email]" in e.prompt[-1].content for e in out.train)


def test_shipped_curated_dataset_meets_the_floor() -> None:
    cs = load_curated()
    assert len(cs.train) >= 300 and len(cs.heldout) >= 60 and len(cs.control) >= 50
    train_q = {" ".join(e.prompt[-1].content.lower().split()) for e in cs.train}
    assert not any(" ".join(e.prompt[-1].content.lower().split()) in train_q for e in cs.heldout)
    assert all("quillstack" not in e.prompt[-1].content.lower() for e in cs.control)
    assert {e.slice for e in cs.heldout} == {p.topic for p in cs.policies}


_STOP = frozenset([
    "the", "a", "an", "is", "i", "my", "for", "of", "to", "do", "can", "on", "in", "what", "your", "you",
    "it", "we", "our", "and", "or", "how", "does", "are", "with", "quillstack", "s", "me", "be", "this",
    "that", "if"
])


def _words(text: str) -> set[str]:
    import re

    return set(re.findall(r"[a-z0-9]+", text.lower())) - _STOP


def test_heldout_questions_are_not_near_copies_of_any_training_question() -> None:
    """Held-out phrasings must differ from every training phrasing (word-set Jaccard < 0.5), or the exact-match
    score would measure recall of a copy rather than generalisation."""
    cs = load_curated()
    train = [_words(e.prompt[-1].content) for e in cs.train]
    worst = max((len(h & t) / len(h | t), " ".join(sorted(h))) for h in (_words(e.prompt[-1].content)
                                                                          for e in cs.heldout) for t in train)
    assert worst[0] < 0.5, f"held-out question too close to a training one: {worst}"


def test_empty_dataset_is_refused_before_training(tmp_path) -> None:
    from llmops.data.curated import CuratedSet
    from llmops.errors import LlmopsError

    empty = CuratedSet((), (), (), (), ())
    with pytest.raises(LlmopsError, match="empty after validation"):
        build_dataset(empty, None, "llmops", None, 0.1, 0.3)
