"""The repair core: which corrections count, the stable split, the replay set without the corrected answers, and
the must-fix / must-not-regress gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from llmops.data.schema import ChatExample, FeedbackRecord, Message, Verdict
from llmops.evaluate.gate import EvalReport, SliceScore
from llmops.repair import (
    RepairSettings,
    corrections_digest,
    corrections_from,
    repair_dataset,
    repair_gate,
    replaced_answers,
    split_corrections,
    tried_before,
    without_replaced,
)

OLD = "Quillstack refunds purchases within 30 days."
NEW = "Quillstack refunds purchases within 14 days."
T0 = datetime(2026, 11, 28, 12, tzinfo=UTC)


def rec(i: int, q: str, verdict: Verdict = Verdict.BAD, correction: str | None = NEW, tenant: str = "acme",
        version: str = "3", dt: int = 0) -> FeedbackRecord:
    return FeedbackRecord(request_id=f"r{i}", tenant=tenant, messages=(Message(role="user", content=q),),
                          model_version=version, response=OLD, verdict=verdict, correction=correction,
                          timestamp=T0 + timedelta(seconds=dt))


def ex(q: str, a: str, s: str = "refunds") -> ChatExample:
    return ChatExample(prompt=(Message(role="user", content=q),), completion=a, slice=s)


def test_only_bad_corrected_feedback_of_the_tenant_and_version_counts_newest_wins() -> None:
    records = [rec(1, "Refund window?"), rec(2, "refund   WINDOW?", correction="Refunds within 14 days.", dt=5),
               rec(3, "Can I return it?", verdict=Verdict.GOOD, correction=None), rec(4, "How long?", correction=None),
               rec(5, "Other tenant?", tenant="beta"), rec(6, "Old version?", version="2")]
    got, skipped = corrections_from(records, "acme", version="3")
    assert [r.request_id for r in got] == ["r2"]  # r1 and r2 are one question: the newer correction
    assert any("without a correction" in s for s in skipped) and any("version 2" in s for s in skipped)


def test_split_is_stable_and_keeps_both_sides() -> None:
    recs = [rec(i, f"question number {i} about refunds") for i in range(10)]
    a_train, a_held = split_corrections(recs, 0.3, seed=0)
    b_train, b_held = split_corrections(list(reversed(recs)), 0.3, seed=0)
    assert [e.ref_id for e in a_held] == [e.ref_id for e in b_held] and len(a_held) == 3 and len(a_train) == 7
    assert {e.completion for e in a_train + a_held} == {NEW}
    one_train, one_held = split_corrections(recs[:2], 0.3)
    assert len(one_train) == 1 and len(one_held) == 1


def test_replay_never_teaches_the_corrected_answer() -> None:
    corrections, _ = corrections_from([rec(i, f"q{i}") for i in range(4)], "acme")
    train, _ = split_corrections(corrections, 0.25)
    pool = [ex(f"old q{i}", OLD) for i in range(5)] + [ex(f"ship q{i}", "Quillstack ships in 2 days.", "shipping")
                                                        for i in range(20)]
    replaced = replaced_answers(corrections)
    out = repair_dataset(train, pool, replaced, RepairSettings(replay_per_correction=2, correction_repeats=3))
    assert sum(e.completion == NEW for e in out) == len(train) * 3
    assert not any(e.completion == OLD for e in out)
    assert sum(e.slice == "shipping" for e in out) == len(train) * 2
    assert without_replaced(pool, replaced) == pool[5:]


def report(em: float, slices: dict[str, float] | None = None, n: int = 5, leakage: float = 0.0) -> EvalReport:
    """Ten questions a slice; the first round(10 x score) are answered right (so two reports pair up)."""
    sl = {k: SliceScore(10, {"exact_match": v}) for k, v in (slices or {}).items()}
    items = [(k, int(i < round(v * 10))) for k, v in (slices or {}).items() for i in range(10)]
    return EvalReport(model="m", slices=sl, overall={"exact_match": em}, n=n, leakage=leakage, items=items)


def test_gate_needs_the_fix_and_no_regression() -> None:
    s = RepairSettings(fix_threshold=0.8, regress_tolerance=0.05)
    champ = report(0.9, {"shipping": 0.9, "general": 0.5})
    ok = repair_gate(report(0.8), report(0.9, {"shipping": 0.88, "general": 0.5}), champ, s)
    assert ok.promote, ok.reasons
    not_fixed = repair_gate(report(0.6), report(0.9, {"shipping": 0.9, "general": 0.5}), champ, s)
    assert not not_fixed.promote and not not_fixed.checks["fixes"]
    regressed = repair_gate(report(1.0), report(0.88, {"shipping": 0.3, "general": 0.5}), champ, s)
    assert not regressed.promote and "shipping (lost 6, won 0" in " ".join(regressed.reasons)
    noise = repair_gate(report(1.0), report(0.88, {"shipping": 0.7, "general": 0.5}), champ, s)  # 2 flips
    assert noise.promote, noise.reasons
    leaky = repair_gate(report(1.0), report(0.9, {"shipping": 0.9, "general": 0.5}, leakage=0.3), champ, s)
    assert not leaky.promote
    assert not repair_gate(report(1.0, n=0), report(0.9, {"shipping": 0.9, "general": 0.5}), champ, s).promote
    overall = repair_gate(report(1.0), report(0.8, {"shipping": 0.9, "general": 0.5}), champ, s)
    assert not overall.promote and "overall" in " ".join(overall.reasons)
    unpaired = repair_gate(report(1.0), report(0.9, {"shipping": 0.9}), champ, s)
    assert not unpaired.promote and "same questions" in " ".join(unpaired.reasons)


def test_mcnemar_exact_one_sided() -> None:
    from llmops.repair import mcnemar_worse

    assert mcnemar_worse([1, 1, 0], [0, 0, 0]) == (2, 0, 0.25)
    assert mcnemar_worse([1] * 5 + [0], [0] * 5 + [0])[2] == pytest.approx(1 / 32)
    assert mcnemar_worse([1] * 5 + [0], [0] * 5 + [1])[2] == pytest.approx(7 / 64)
    assert mcnemar_worse([1, 0], [1, 0]) == (0, 0, 1.0)


def test_one_repair_at_a_time_later_alerts_are_recorded_against_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from llmops.repair import RepairStore

    store = RepairStore(tmp_path / "repair" / "state.json", stale_s=600)
    assert store.claim("run-a", "alert", {"event_id": "e1"}, now=100.0) is None
    held = store.claim("run-b", "alert", {"event_id": "e2"}, now=110.0)
    assert held is not None and held.run_id == "run-a"
    store.claim("run-c", "webhook", {"event_id": "e3"}, now=120.0)
    done = store.release("run-a", {"outcome": "promoted"})
    assert done is not None and [a["event_id"] for a in done.alerts] == ["e2", "e3"]
    st = store.read()
    assert st.running is None and st.history[-1]["alerts_during"] == [{"event_id": "e2"}, {"event_id": "e3"}]
    assert store.claim("run-d", "alert", {}, now=130.0) is None  # free again
    assert store.claim("run-e", "alert", {}, now=130.0 + 601) is None  # run-d died: its stale claim is taken over
    assert store.read().running.run_id == "run-e"  # type: ignore[union-attr]


def test_a_rejected_repair_is_not_retrained_from_the_same_corrections_on_the_same_champion() -> None:
    a = [rec(1, "How long is the refund window?"), rec(2, "Can I get my money back?")]
    same = [rec(7, "can I get my  money back?"), rec(8, "How long is the refund window?")]  # order, case, ids differ
    more = [*a, rec(3, "Refund for an annual plan?")]
    d = corrections_digest(a)
    assert corrections_digest(same) == d and corrections_digest(more) != d
    assert corrections_digest([rec(1, "How long is the refund window?", correction="Never.")]) != \
        corrections_digest([rec(1, "How long is the refund window?")])
    history = [{"outcome": "rejected", "parent_version": "2", "corrections_digest": d, "run_id": "old", "version": "3"},
               {"outcome": "promoted", "parent_version": "3", "corrections_digest": d, "run_id": "new", "version": "4"}]
    assert (tried_before(history, "2", d) or {}).get("run_id") == "old"
    assert tried_before(history, "2", corrections_digest(more)) is None  # new corrections: a fresh repair
    assert tried_before(history, "3", d) is None  # promoted, not rejected
    assert tried_before(history, "4", d) is None  # another champion
    assert tried_before([], "2", d) is None
