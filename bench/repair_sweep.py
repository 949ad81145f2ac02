"""How much a repair forgets, offline: train a champion the way `train_pipeline` does, change one policy (the demo's
refund window), and run the repair's fine-tune + gate from that trained champion under several settings.

No stack: the same pure code the `repair` flow runs (split_corrections, repair_dataset, train_adapter, merge_adapter,
evaluate_model, repair_gate), without Prefect, MLflow or S3. Prints, per setting, the must-fix exact match, the
standing suite against the champion's (same questions), the slices that moved and the gate's verdict.

    python bench/repair_sweep.py                       # the shipped settings, then the variants in VARIANTS
    python bench/repair_sweep.py --only "shipped;replay 32"   # some settings
    python bench/repair_sweep.py --work /tmp/sweep     # reuse a trained champion (the slow part, ~4 min)
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# name -> (repair.yaml overrides, repair train-config hyper/lora overrides)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "shipped": ({}, {}),
    "replay 32": ({"replay_per_correction": 32}, {}),
    "lr 0.001": ({}, {"hyper": {"learning_rate": 0.001}}),
    "replay 32, lr 0.001": ({"replay_per_correction": 32}, {"hyper": {"learning_rate": 0.001}}),
    "40 steps": ({}, {"hyper": {"max_steps": 40}}),
    "replay 32, seed 1": ({"replay_per_correction": 32, "seed": 1}, {}),
    "replay 32, seed 2": ({"replay_per_correction": 32, "seed": 2}, {}),
    "replay 48": ({"replay_per_correction": 48}, {}),
    "replay 32, 80 steps": ({"replay_per_correction": 32}, {"hyper": {"max_steps": 80}}),
    "replay 32, repeats 5": ({"replay_per_correction": 32, "correction_repeats": 5}, {}),
}


def _setting(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for key, value in over.items():
        if isinstance(value, dict):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


def main() -> None:
    import yaml

    from llmops.basemodel import convert_base_model
    from llmops.data.curated import DEFAULT_DIR, load_curated
    from llmops.data.dataset import build_dataset
    from llmops.data.schema import FeedbackRecord
    from llmops.evaluate.generate import generate_answers, load_for_eval
    from llmops.evaluate.run import evaluate_model
    from llmops.repair import (
        RepairSettings,
        repair_dataset,
        repair_gate,
        replaced_answers,
        split_corrections,
        without_replaced,
    )
    from llmops.smoke import REPAIR_NEW_ANSWER, REPAIR_POLICY
    from llmops.train.adapters import merge_adapter, train_adapter
    from llmops.train.config import TrainConfig, load_train_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/llmops-repair-sweep")
    ap.add_argument("--only", default="", help="variant names separated by ;")
    ap.add_argument("--asked", type=int, default=16, help="corrected questions (the demo sends 16)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()

    base = convert_base_model().path  # the machine-wide conversion (make install)
    curated = load_curated(DEFAULT_DIR)
    champ_cfg = load_train_config(ROOT / "configs" / "train" / "smollm2_lora.yaml")
    ds = build_dataset(curated, None, "", None, eval_fraction=champ_cfg.data.eval_fraction,
                       general_mix=champ_cfg.data.general_mix, seed=0)
    champ = work / "champion"
    if not (champ / "config.json").is_file():
        t = time.monotonic()
        adapter, res = train_adapter(champ_cfg, base, ds.prepared.train, ds.prepared.eval, work / "champion-run")
        merge_adapter(base, adapter, champ)
        print(f"champion: {res.steps} steps in {time.monotonic() - t:.0f} s, loss {res.final_loss:.3f}", flush=True)

    # the policy changes: the champion's answers to the first `asked` phrasings are marked bad with the new answer
    policy = next(p for p in curated.policies if p.id == REPAIR_POLICY)
    questions = policy.train_questions[:args.asked]
    from llmops.data.curated import chat
    from llmops.data.schema import ChatExample

    model, tok = load_for_eval(champ, 2)
    olds = generate_answers(model, tok, [ChatExample(prompt=chat(q), completion="x") for q in questions])
    del model
    now = datetime.now(UTC)
    records = [FeedbackRecord(request_id=f"r{i}", tenant="default", messages=chat(q), model_version="2",
                              response=old, verdict="bad", correction=REPAIR_NEW_ANSWER, timestamp=now)
               for i, (q, old) in enumerate(zip(questions, olds, strict=True))]
    replaced = replaced_answers(records)
    # phrasings no correction used (what tests/integration/test_repair.py asks after the promotion)
    unseen = [ChatExample(prompt=chat(q), completion=REPAIR_NEW_ANSWER, slice="repair")
              for q in [*policy.heldout_questions, *policy.train_questions[args.asked:args.asked + 8]]]
    suite = without_replaced(curated.heldout, replaced)
    answers = [*(p.answer for p in curated.policies), REPAIR_NEW_ANSWER]
    t = time.monotonic()
    suite_champ = evaluate_model(champ, "champion", suite, list(curated.control), answers)
    print(f"champion suite exact match {suite_champ.overall['exact_match']:.3f} on {len(suite)} questions "
          f"({time.monotonic() - t:.0f} s)", flush=True)

    repair_yaml = yaml.safe_load((ROOT / "configs" / "repair.yaml").read_text())
    train_yaml = yaml.safe_load((ROOT / "configs" / "train" / "smollm2_repair.yaml").read_text())
    names = [n for n in VARIANTS if not args.only or n in args.only.split(";")]
    rows = []
    for name in names:
        rep_over, train_over = VARIANTS[name]
        s = RepairSettings.model_validate({k: v for k, v in _setting(repair_yaml, rep_over).items()
                                           if k != "train_config"})
        cfg = TrainConfig.model_validate(_setting(train_yaml, train_over)).resolved()
        train_c, held_c = split_corrections(records, s.heldout_fraction, s.seed)
        data = repair_dataset(train_c, ds.prepared.train, replaced, s)
        t = time.monotonic()
        run = work / f"repair-{name}"
        adapter, res = train_adapter(cfg, champ, data, held_c, run)
        merged = merge_adapter(champ, adapter, run / "merged")
        train_s = time.monotonic() - t
        fix = evaluate_model(merged, name, held_c, [], [])
        unseen_em = evaluate_model(merged, name, unseen, [], []).overall["exact_match"]
        suite_new = evaluate_model(merged, name, suite, list(curated.control), answers)
        decision = repair_gate(fix, suite_new, suite_champ, s)
        moved = {k: [round(v.metrics["exact_match"], 3), round(suite_new.slices[k].metrics["exact_match"], 3)]
                 for k, v in suite_champ.slices.items()
                 if abs(v.metrics["exact_match"] - suite_new.slices[k].metrics["exact_match"]) > 1e-9}
        row = {"variant": name, "repair": rep_over, "train": train_over, "examples": len(data),
               "steps": res.steps, "train_s": round(train_s, 1), "final_loss": round(res.final_loss, 4),
               "fix": fix.overall["exact_match"], "unseen": unseen_em, "suite": suite_new.overall["exact_match"],
               "suite_champion": suite_champ.overall["exact_match"], "leakage": suite_new.leakage,
               "promote": decision.promote, "reasons": list(decision.reasons), "slices_moved": moved,
               "fix_answers": [x["answer"] for x in fix.samples]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n| variant | fix | unseen | suite (champion {suite_champ.overall['exact_match']:.3f}) | leakage | gate | "
          "train s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['fix']:.3f} | {r['unseen']:.3f} | {r['suite']:.3f} | {r['leakage']:.3f} | "
              f"{'pass' if r['promote'] else 'FAIL'} | {r['train_s']:.0f} |")
    print(f"total {time.monotonic() - t_all:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": "2-core CPU", "asked": args.asked,
                                              "suite_n": len(suite), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
