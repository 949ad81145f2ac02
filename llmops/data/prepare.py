"""Validate, scrub, de-duplicate and split examples; the dataset version is the hash of its content."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from llmops.data.schema import ChatExample, FeedbackRecord, Message, Verdict

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# A phone number: optional +, digit groups joined by spaces, dots, dashes or brackets, 9-15 digits in all.
_PHONE_CANDIDATE = re.compile(r"(?<![\w.])\+?\(?\d[\d\s().-]{6,}\d(?![\w%])")


def _phone(m: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in m.group(0))
    return "[phone]" if 9 <= digits <= 15 else m.group(0)


@dataclass(frozen=True)
class Quarantined:
    """A row that did not become an example, and why. Nothing is dropped silently."""

    source: str
    row: int
    reason: str
    raw: str = ""


@dataclass
class PreparedDataset:
    """The splits of one dataset version plus everything that explains it."""

    train: list[ChatExample]
    eval: list[ChatExample]
    quarantine: list[Quarantined]
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return dataset_digest({"train": self.train, "eval": self.eval})


def scrub_pii(text: str) -> tuple[str, int]:
    """Replace e-mail addresses and phone numbers with placeholders; returns (text, replacements)."""
    text, n_mail = _EMAIL.subn("[email]", text)
    scrubbed = _PHONE_CANDIDATE.sub(_phone, text)
    n_phone = scrubbed.count("[phone]") - text.count("[phone]")
    return scrubbed, n_mail + n_phone


def scrub_example(ex: ChatExample) -> tuple[ChatExample, int]:
    total = 0
    prompt = []
    for m in ex.prompt:
        content, n = scrub_pii(m.content)
        total += n
        prompt.append(Message(role=m.role, content=content))
    completion, n = scrub_pii(ex.completion)
    return ex.model_copy(update={"prompt": tuple(prompt), "completion": completion}), total + n


def parse_feedback_lines(source: str, lines: Iterable[str]) -> tuple[list[FeedbackRecord], list[Quarantined]]:
    """Parse JSON lines into FeedbackRecords; every bad line goes to quarantine with its reason."""
    records, bad = [], []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(FeedbackRecord.model_validate_json(line))
        except ValidationError as err:
            reason = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in err.errors())
            bad.append(Quarantined(source, i, reason, line[:500]))
    return records, bad


def feedback_to_examples(records: Sequence[FeedbackRecord], source: str
                         ) -> tuple[list[ChatExample], list[Quarantined]]:
    """Good verdicts teach their response, bad verdicts their correction; bad without correction teach nothing."""
    out, skipped = [], []
    for i, r in enumerate(records, start=1):
        if r.verdict is Verdict.GOOD:
            completion = r.response
        elif r.correction:
            completion = r.correction
        else:
            skipped.append(Quarantined(source, i, "bad verdict without a correction: nothing to learn",
                                       r.request_id))
            continue
        if not completion.strip():
            skipped.append(Quarantined(source, i, "empty response", r.request_id))
            continue
        out.append(ChatExample(prompt=r.messages, completion=completion, slice=f"feedback-{r.verdict.value}",
                               source=f"feedback:{r.tenant}", ref_id=r.request_id))
    return out, skipped


def deduplicate(examples: Iterable[ChatExample]) -> tuple[list[ChatExample], int]:
    """Keep the first of examples with the same normalised prompt and completion."""
    seen: set[str] = set()
    out, dupes = [], 0
    for ex in examples:
        k = ex.key_text()
        if k in seen:
            dupes += 1
            continue
        seen.add(k)
        out.append(ex)
    return out, dupes


def split_of(ex: ChatExample, eval_fraction: float, salt: str = "llmops") -> str:
    """'train' or 'eval', from a hash of the content: stable across runs and machines, independent of order."""
    h = int.from_bytes(hashlib.sha256(f"{salt}\0{ex.key_text()}".encode()).digest()[:8], "big")
    return "eval" if h / 2**64 < eval_fraction else "train"


def to_jsonl(examples: Iterable[ChatExample]) -> str:
    return "".join(json.dumps(ex.model_dump(mode="json"), sort_keys=True) + "\n" for ex in examples)


def from_jsonl(text: str) -> list[ChatExample]:
    """The examples `to_jsonl` wrote (blank lines skipped)."""
    return [ChatExample.model_validate_json(line) for line in text.splitlines() if line.strip()]


def dataset_digest(splits: dict[str, Sequence[ChatExample]]) -> str:
    """sha256 over the canonical JSONL of every split, in split-name order."""
    h = hashlib.sha256()
    for name in sorted(splits):
        h.update(f"== {name}\n".encode())
        h.update(to_jsonl(splits[name]).encode())
    return h.hexdigest()


def prepare(curated_train: Sequence[ChatExample], feedback: Sequence[ChatExample], eval_fraction: float,
            quarantine: Sequence[Quarantined] = ()) -> PreparedDataset:
    """Scrub, de-duplicate and split. Curated examples all train (their held-out set is separate);
    feedback examples are split by content hash so the same example always lands on the same side."""
    scrubbed, pii = [], 0
    for ex in [*curated_train, *feedback]:
        clean, n = scrub_example(ex)
        scrubbed.append(clean)
        pii += n
    unique, dupes = deduplicate(scrubbed)
    train: list[ChatExample] = []
    ev: list[ChatExample] = []
    for ex in unique:
        if ex.source in ("curated", "general") or split_of(ex, eval_fraction) == "train":
            train.append(ex)
        else:
            ev.append(ex)
    stats = dict(Counter(ex.slice for ex in train))
    stats.update({"_train": len(train), "_eval": len(ev), "_duplicates": dupes, "_pii_replaced": pii,
                  "_quarantined": len(quarantine)})
    return PreparedDataset(train=train, eval=ev, quarantine=list(quarantine), stats=stats)
