"""The serving log index and the feedback record it makes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmops.data.serving_log import FeedbackCall, ServingLog, feedback_record


def served(rid: str, answer: str = "Quillstack refunds within 30 days.") -> str:
    return json.dumps({"request_id": rid, "tenant": "acme", "model_version": "3",
                       "messages": [{"role": "user", "content": "How long do refunds take?"}],
                       "response": answer, "timestamp": "2026-11-28T12:00:00+00:00"})


def test_lookup_reads_new_lines_incrementally_and_skips_bad_ones(tmp_path: Path) -> None:
    log = tmp_path / "node1.jsonl"
    log.write_text(served("r1") + "\n" + "{not json\n" + json.dumps({"request_id": "r-bad"}) + "\n")
    idx = ServingLog(tmp_path)
    assert idx.get("r1") is not None and idx.get("r2") is None
    assert idx.malformed == 2
    with log.open("a") as f:
        f.write(served("r2") + "\n" + served("r3")[:20])  # r3 is still being written
    assert idx.get("r2") is not None and idx.get("r3") is None
    with log.open("a") as f:
        f.write(served("r3")[20:] + "\n")
    assert idx.get("r3") is not None
    assert idx.malformed == 2  # nothing read twice


def test_capacity_keeps_the_newest(tmp_path: Path) -> None:
    (tmp_path / "n.jsonl").write_text("".join(served(f"r{i}") + "\n" for i in range(10)))
    idx = ServingLog(tmp_path, capacity=3)
    idx.refresh()
    assert idx.get("r9") is not None and idx.get("r0") is None


def test_feedback_record_carries_the_served_request(tmp_path: Path) -> None:
    (tmp_path / "n.jsonl").write_text(served("r1") + "\n")
    s = ServingLog(tmp_path).get("r1")
    assert s is not None
    rec = feedback_record(FeedbackCall(request_id="r1", verdict="bad", correction="Refunds within 14 days."), s,
                          datetime(2026, 11, 28, tzinfo=UTC))
    assert (rec.tenant, rec.model_version, rec.response) == ("acme", "3", "Quillstack refunds within 30 days.")
    assert rec.correction == "Refunds within 14 days." and rec.verdict.value == "bad"


@pytest.mark.parametrize("body", [{"request_id": "r1", "verdict": "meh"}, {"request_id": "", "verdict": "bad"},
                                  {"request_id": "r1", "verdict": "bad", "correction": ""},
                                  {"request_id": "r1", "verdict": "bad", "extra": 1}])
def test_bad_feedback_calls_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FeedbackCall.model_validate(body)
