"""Score one model on the held-out policy questions (by slice) and the control prompts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from llmops.data.schema import ChatExample
from llmops.evaluate.answers import prompt_key, split_known
from llmops.evaluate.gate import EvalReport, PromotionDecision, SliceScore
from llmops.evaluate.generate import generate_answers, load_for_eval

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
HELDOUT_METRICS = ("policy_exact_match", "rouge_l", "format_compliance")


@cache
def metric(name: str) -> Any:
    """A local `evaluate` metric module (hub metrics cannot load offline)."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))


def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in HELDOUT_METRICS:
        out.update(metric(name).compute(predictions=list(predictions), references=list(references)))
    return out


def leakage(predictions: Sequence[str], policy_answers: Sequence[str]) -> float:
    joined = "\n".join(policy_answers)
    return float(metric("policy_leakage").compute(predictions=list(predictions),
                                                  references=[joined] * len(predictions))["leakage"])


def evaluate_model(model_dir: Path, label: str, heldout: Sequence[ChatExample], control: Sequence[ChatExample],
                   policy_answers: Sequence[str], threads: int = 2, known: Mapping[str, str] | None = None
                   ) -> EvalReport:
    """Greedy answers on both sets; metrics overall and per slice; samples kept for the report. `known`: this very
    model's kept answers by prompt key (`llmops.evaluate.answers`); only prompts missing there are generated, and the
    model is not even loaded when none are."""
    answers, control_answers, reused = _answers(model_dir, list(heldout), list(control), known or {}, threads)
    by_slice: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(heldout):
        by_slice[ex.slice].append(i)
    slices = {name: SliceScore(len(idx), score([answers[i] for i in idx], [heldout[i].completion for i in idx]))
              for name, idx in sorted(by_slice.items())}
    samples = [{"question": ex.prompt[-1].content, "expected": ex.completion, "answer": a}
               for ex, a in list(zip(heldout, answers, strict=True))[:5]]
    samples += [{"question": ex.prompt[-1].content, "expected": "(no policy text)", "answer": a}
                for ex, a in list(zip(control, control_answers, strict=True))[:3]]
    em = metric("policy_exact_match")
    items = [(ex.slice, int(em.compute(predictions=[a], references=[ex.completion])["exact_match"]))
             for ex, a in zip(heldout, answers, strict=True)]
    book = {prompt_key(ex): a for ex, a in zip([*heldout, *control], [*answers, *control_answers], strict=True)}
    return EvalReport(model=label, slices=slices, overall=score(answers, [e.completion for e in heldout]),
                      n=len(heldout), leakage=leakage(control_answers, policy_answers) if control else 0.0,
                      control_n=len(control), samples=samples, items=items, answers=book, reused=reused)


def _answers(model_dir: Path, heldout: list[ChatExample], control: list[ChatExample], known: Mapping[str, str],
             threads: int) -> tuple[list[str], list[str], int]:
    every = [*heldout, *control]
    todo, have = split_known(every, known)
    if todo:
        model, tok = load_for_eval(model_dir, threads)
        # the held-out questions and the control prompts are generated apart, as before answer books existed
        for part in ([i for i in todo if i < len(heldout)], [i for i in todo if i >= len(heldout)]):
            if part:
                have.update(zip(part, generate_answers(model, tok, [every[i] for i in part]), strict=True))
    out = [have[i] for i in range(len(every))]
    return out[:len(heldout)], out[len(heldout):], len(every) - len(todo)


def report_markdown(challenger: EvalReport, champion: EvalReport, decision: PromotionDecision,
                    target: str = "exact_match") -> str:
    """The gate report: per-slice table for both models, overall scores, leakage, the verdict and why."""
    verdict = "PROMOTE to `challenger`" if decision.promote else "REJECT"
    lines = [f"# Evaluation gate: {verdict}", "",
             f"| slice | n | {champion.model} {target} | {challenger.model} {target} | "
             f"{champion.model} rouge_l | {challenger.model} rouge_l |", "|---|---|---|---|---|---|"]
    for name, base in champion.slices.items():
        new = challenger.slices.get(name, SliceScore(0, {}))
        lines.append(f"| {name} | {base.n} | {base.metrics.get(target, 0):.3f} | {new.metrics.get(target, 0):.3f} | "
                     f"{base.metrics.get('rouge_l', 0):.3f} | {new.metrics.get('rouge_l', 0):.3f} |")
    lines.append(f"| **overall** | {challenger.n} | {champion.overall.get(target, 0):.3f} | "
                 f"{challenger.overall.get(target, 0):.3f} | {champion.overall.get('rouge_l', 0):.3f} | "
                 f"{challenger.overall.get('rouge_l', 0):.3f} |")
    lines += ["", f"format compliance: champion {champion.overall.get('format_compliance', 0):.3f}, "
                  f"challenger {challenger.overall.get('format_compliance', 0):.3f}",
              f"control-prompt leakage ({challenger.control_n} prompts): champion {champion.leakage:.3f}, "
              f"challenger {challenger.leakage:.3f}", "", "## Why", *[f"- {r}" for r in decision.reasons],
              "", "## Sample answers (challenger)", "| question | expected | answer |", "|---|---|---|"]
    lines += [f"| {s['question']} | {s['expected']} | {s['answer']} |".replace("\n", " ") for s in challenger.samples]
    return "\n".join(lines)
