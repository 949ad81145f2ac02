"""Quality regressions (pure): when the bad-feedback ratio says the champion is wrong, and what the repair flow
trains on.

The receiver counts feedback as `llmops_feedback_total{tenant, model, model_version, verdict}`; the rule
`RegressionDetected` fires when, over `window_s`, at least `min_feedback` verdicts arrived and more than `bad_ratio`
of them were bad, for `for_s`. Alertmanager -> receiver turns it into the Prefect event
`llmops.regression.detected`, which triggers the `repair` deployment.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from llmops.config import StrictModel
from llmops.data.schema import ChatExample, FeedbackRecord, Verdict
from llmops.evaluate.gate import EvalReport


class RepairPolicy(StrictModel):
    """When a pool's answers count as regressed, and how a repair is trained and gated."""

    bad_ratio: float = Field(0.3, gt=0, lt=1)  # share of bad verdicts that signals a regression
    window_s: float = Field(120.0, ge=10)  # over this window
    min_feedback: int = Field(10, ge=1)  # and only with at least this many verdicts in it
    for_s: float = Field(10.0, ge=0)  # Prometheus `for:`


def _dur(seconds: float) -> str:
    return f"{max(int(round(seconds)), 0)}s"


def regression_rules(model: str, policy: RepairPolicy, tenant: str = "default") -> dict[str, Any]:
    """The rule group (for the pool's rule file) with the `RegressionDetected` alert."""
    sel = f'model="{model}",tenant="{tenant}"'
    w = _dur(policy.window_s)
    total = f"sum(increase(llmops_feedback_total{{{sel}}}[{w}]))"
    bad = f'sum(increase(llmops_feedback_total{{{sel},verdict="bad"}}[{w}]))'
    labels = {"model": model, "pool": model, "tenant": tenant}
    return {"name": f"llmops-quality-{model}", "rules": [
        {"record": "llmops:pool_bad_feedback_ratio", "expr": f"({bad} or vector(0)) / {total}", "labels": labels},
        {"alert": "RegressionDetected",
         "expr": f"(({bad} or vector(0)) / {total} > {policy.bad_ratio:g}) and ({total} >= {policy.min_feedback})",
         "for": _dur(policy.for_s),
         "labels": {**labels, "severity": "page", "action": "repair"},
         "annotations": {"summary": f"more than {policy.bad_ratio:.0%} of the feedback on {model} is bad "
                                    f"(window {w}, at least {policy.min_feedback} verdicts)",
                         "value_bad_ratio": "{{ $value }}"}},
    ]}


class RepairSettings(StrictModel):
    """How the `repair` flow builds, trains and gates a fix (configs/repair.yaml)."""

    train_config: str = "configs/train/smollm2_repair.yaml"  # method and hyper-parameters of the fix
    min_corrections: int = Field(3, ge=1)  # fewer: no training, an event and an artifact say why
    heldout_fraction: float = Field(0.3, gt=0, lt=1)  # of the corrected questions: the must-fix check
    replay_per_correction: float = Field(32.0, ge=0)  # champion training examples replayed per correction
    correction_repeats: int = Field(3, ge=1)  # each correction appears this often in the repair set
    fix_threshold: float = Field(0.8, gt=0, le=1)  # must fix: exact match on the held-out corrections
    regress_tolerance: float = Field(0.05, ge=0, le=1)  # must not regress: the suite overall
    regress_p: float = Field(0.05, gt=0, lt=1)  # and no slice worse by McNemar's exact test at this level
    max_leakage: float = Field(0.1, ge=0, le=1)
    seed: int = 0


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def corrections_from(records: Sequence[FeedbackRecord], tenant: str, version: str | None = None
                     ) -> tuple[list[FeedbackRecord], list[str]]:
    """Bad verdicts with a correction, of one tenant (and of one served version when given); for a question asked
    more than once, the newest correction wins. Returns them with the reasons others were left out."""
    skipped: list[str] = []
    latest: dict[str, FeedbackRecord] = {}
    for r in sorted(records, key=lambda r: r.timestamp):
        if r.tenant != tenant or r.verdict is not Verdict.BAD:
            continue
        if not r.correction:
            skipped.append(f"{r.request_id}: bad verdict without a correction")
            continue
        if version is not None and r.model_version != version:
            skipped.append(f"{r.request_id}: about version {r.model_version}, not {version}")
            continue
        latest[_norm(r.messages[-1].content)] = r
    return list(latest.values()), skipped


def _bucket(text: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}:{_norm(text)}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_corrections(corrections: Sequence[FeedbackRecord], heldout_fraction: float, seed: int = 0
                      ) -> tuple[list[ChatExample], list[ChatExample]]:
    """(train, held-out) examples, split by a hash of the question (stable across runs); both sides non-empty
    when there are two or more corrections."""
    ex = [ChatExample(prompt=r.messages, completion=r.correction or "", slice="repair", source=f"feedback:{r.tenant}",
                      ref_id=r.request_id) for r in corrections]
    ranked = sorted(ex, key=lambda e: _bucket(e.prompt[-1].content, seed))
    n_held = min(max(1, round(len(ranked) * heldout_fraction)), len(ranked) - 1) if len(ranked) > 1 else 0
    return ranked[n_held:], ranked[:n_held]


def replaced_answers(corrections: Sequence[FeedbackRecord]) -> set[str]:
    """The champion's answers users corrected: replaying or judging on them would teach or demand the old answer."""
    return {_norm(r.response) for r in corrections if r.response.strip()}


def _words(text: str) -> set[str]:
    return set(_norm(text).replace(".", " ").replace(",", " ").split())


def without_replaced(examples: Sequence[ChatExample], replaced: set[str], similarity: float = 0.8
                     ) -> list[ChatExample]:
    """Examples whose answer is not one users corrected (nor within word-Jaccard `similarity` of one: a champion
    that paraphrased its trained answer still taught the old fact)."""
    rep = [_words(r) for r in replaced]

    def close(text: str) -> bool:
        w = _words(text)
        return _norm(text) in replaced or any(len(w & r) / max(len(w | r), 1) >= similarity for r in rep)
    return [e for e in examples if not close(e.completion)]


def repair_dataset(train_corrections: Sequence[ChatExample], replay_pool: Sequence[ChatExample],
                   replaced: set[str], settings: RepairSettings) -> list[ChatExample]:
    """Corrections (repeated) plus a seeded sample of the champion's training data, minus the corrected answers,
    shuffled: the fix is learnt and nothing else is forgotten."""
    pool = without_replaced(replay_pool, replaced)
    k = min(len(pool), round(len(train_corrections) * settings.replay_per_correction))
    rng = random.Random(settings.seed)
    out = [*train_corrections] * settings.correction_repeats + rng.sample(pool, k)
    rng.shuffle(out)
    return out


@dataclass(frozen=True)
class RepairDecision:
    promote: bool
    reasons: tuple[str, ...]
    checks: dict[str, bool]


def mcnemar_worse(champion: Sequence[int], candidate: Sequence[int]) -> tuple[int, int, float]:
    """Paired comparison on the same items: (items only the champion got right, items only the candidate got
    right, one-sided exact McNemar p-value that the candidate is worse)."""
    b = sum(1 for x, y in zip(champion, candidate, strict=True) if x and not y)
    c = sum(1 for x, y in zip(champion, candidate, strict=True) if y and not x)
    n = b + c
    p = sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n if n else 1.0
    return b, c, p


def repair_gate(fix: EvalReport, suite_candidate: EvalReport, suite_champion: EvalReport,
                settings: RepairSettings) -> RepairDecision:
    """Must fix (exact match on the held-out corrections >= fix_threshold) and must not regress: the standing
    suite's exact match may not fall more than `regress_tolerance` below the champion's, and no slice may be worse
    by McNemar's exact test on the same questions (p < `regress_p`). A slice holds 6-12 questions: a fixed
    per-slice tolerance rejects one or two flips that are noise (measured on the stack: a repair that raised the
    suite 0.825 -> 0.841 lost 2 of 12 questions in one slice and won others). Leakage within bounds."""
    checks: dict[str, bool] = {}
    reasons: list[str] = []
    em = fix.overall.get("exact_match", 0.0)
    checks["fixes"] = fix.n > 0 and em >= settings.fix_threshold
    reasons.append(f"must fix: exact match {em:.3f} on {fix.n} held-out corrected question(s) "
                   f"(needs {settings.fix_threshold:.2f})")
    new_all, old_all = suite_candidate.overall.get("exact_match", 0.0), suite_champion.overall.get("exact_match", 0.0)
    regressed = []
    if new_all < old_all - settings.regress_tolerance:
        regressed.append(f"overall ({new_all:.3f} < {old_all:.3f})")
    paired = len(suite_candidate.items) == len(suite_champion.items) and all(
        a[0] == b[0] for a, b in zip(suite_candidate.items, suite_champion.items, strict=True))
    if not paired:
        regressed.append("the two reports do not cover the same questions")
    for name in suite_champion.slices:
        if not paired:
            break
        old = [v for s, v in suite_champion.items if s == name]
        new = [v for s, v in suite_candidate.items if s == name]
        b, c, p = mcnemar_worse(old, new)
        if p < settings.regress_p:
            regressed.append(f"{name} (lost {b}, won {c} of {len(old)}; McNemar p={p:.3f})")
    checks["no_regression"] = not regressed
    reasons.append("must not regress: " + (f"{', '.join(regressed)}" if regressed else
                                           f"overall {new_all:.3f} vs champion {old_all:.3f} (tolerance "
                                           f"{settings.regress_tolerance:.2f}); no slice worse (McNemar p >= "
                                           f"{settings.regress_p:g})"))
    checks["leakage_ok"] = suite_candidate.leakage <= settings.max_leakage
    reasons.append(f"control-prompt leakage {suite_candidate.leakage:.3f} (max {settings.max_leakage:.2f})")
    return RepairDecision(all(checks.values()), tuple(reasons), checks)


def corrections_digest(corrections: Sequence[FeedbackRecord]) -> str:
    """Which corrections a repair learnt from (question and answer, order-free): the same digest on the same parent
    is the same repair."""
    lines = sorted(f"{_norm(r.messages[-1].content)}\t{_norm(r.correction or '')}" for r in corrections)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def tried_before(history: Sequence[dict[str, Any]], parent_version: str, digest: str) -> dict[str, Any] | None:
    """The newest repair that was rejected by its gate with these very corrections on this champion, if any.

    Alertmanager re-sends a still-firing RegressionDetected (repeat_interval) and the bad ratio stays high while
    the old champion serves: without this, a fix that failed its gate would be trained again, identically, on every
    re-send. New corrections (a different digest) or a new champion start a fresh repair."""
    for entry in reversed(history):
        if (entry.get("outcome") == "rejected" and entry.get("parent_version") == parent_version
                and entry.get("corrections_digest") == digest):
            return entry
    return None


class RunningRepair(StrictModel):
    run_id: str
    started_at: float
    trigger: str = ""
    alerts: list[dict[str, str]] = Field(default_factory=list)  # alerts that arrived while it ran


class RepairState(StrictModel):
    running: RunningRepair | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)  # newest last, at most 50


class RepairStore:
    """`<state>/repair/state.json` under a file lock: one repair at a time; a claim older than `stale_s` (a run
    that died without releasing it) is taken over."""

    def __init__(self, path: Path, stale_s: float = 1800.0) -> None:
        self.path, self.stale_s = path, stale_s
        path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> RepairState:
        return RepairState.model_validate_json(self.path.read_text()) if self.path.is_file() else RepairState()

    def _transact(self, change: Callable[[RepairState], tuple[RepairState, RunningRepair | None]]
                  ) -> RunningRepair | None:
        """Read, change and atomically write the state under the exclusive file lock; returns `change`'s result."""
        with self.path.with_suffix(".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            new, result = change(self.read())
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(new.model_dump_json(indent=1))
            tmp.replace(self.path)
            return result

    def _live(self, cur: RunningRepair | None, now: float) -> bool:
        """A repair holds the slot and has not gone stale (a run that died without releasing it)."""
        return cur is not None and now - cur.started_at < self.stale_s

    def claim(self, run_id: str, trigger: str, alert: dict[str, str], now: float) -> RunningRepair | None:
        """Take the repair slot; if another live repair holds it, record `alert` against that one and return it."""
        def change(st: RepairState) -> tuple[RepairState, RunningRepair | None]:
            cur = st.running
            if cur is not None and cur.run_id != run_id and self._live(cur, now):
                held = cur.model_copy(update={"alerts": [*cur.alerts, alert]})
                return st.model_copy(update={"running": held}), held
            mine = RunningRepair(run_id=run_id, started_at=now, trigger=trigger)
            return st.model_copy(update={"running": mine}), None
        return self._transact(change)

    def record_if_running(self, alert: dict[str, str], now: float) -> RunningRepair | None:
        """Record `alert` against the live repair, if one runs (the receiver then starts no run for it); None and
        nothing written otherwise."""
        def change(st: RepairState) -> tuple[RepairState, RunningRepair | None]:
            cur = st.running
            if cur is None or not self._live(cur, now):
                return st, None
            held = cur.model_copy(update={"alerts": [*cur.alerts, alert]})
            return st.model_copy(update={"running": held}), held
        if not self.path.is_file():
            return None
        return self._transact(change)

    def release(self, run_id: str, outcome: dict[str, Any]) -> RunningRepair | None:
        """Free the slot (if this run holds it) and append the outcome to the history; returns what it held."""
        def change(st: RepairState) -> tuple[RepairState, RunningRepair | None]:
            cur = st.running if st.running is not None and st.running.run_id == run_id else None
            entry = {**outcome, "run_id": run_id, "alerts_during": list(cur.alerts) if cur else []}
            return st.model_copy(update={"running": None if cur else st.running,
                                         "history": [*st.history, entry][-50:]}), cur
        return self._transact(change)
