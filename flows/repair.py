"""repair: bad feedback with corrections -> a LoRA fix from the champion -> must fix, must not regress -> canary.

Triggered by the event `llmops.regression.detected` (the RegressionDetected alert through Alertmanager and the
receiver, or a signed `repair` webhook); also from the UI or `prefect deployment run repair/repair`.

    python -m flows.repair --tenant default

One repair at a time: a run that finds another repair running records its trigger against that one (the history in
`<state>/repair/state.json` and the event `llmops.repair.deferred`) and ends. A fix its gate rejected is not trained
again from the same corrections on the same champion (Alertmanager re-sends a still-firing alert): the run says so
and ends; new corrections, a new champion or `force=true` start a new one.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.events import emit_event
from prefect.runtime import flow_run

from flows.rollout import rollout_flow
from llmops.config import load_config
from llmops.endpoints import Endpoints
from llmops.evaluate.answers import book_key
from llmops.repair import (
    RepairSettings,
    RepairStore,
    corrections_digest,
    corrections_from,
    repair_dataset,
    repair_gate,
    replaced_answers,
    split_corrections,
    tried_before,
    without_replaced,
)
from llmops.stackconfig import load_effective_config
from llmops.train.config import load_train_config
from tasks.evaluate import keep_answers, score_model
from tasks.register import pull_base, register_challenger
from tasks.repair import publish_repair_report, read_feedback_records, standing_data
from tasks.train import fine_tune

ROOT = Path(__file__).resolve().parents[1]


def _path(p: str) -> Path:
    return ROOT / p if not Path(p).is_absolute() else Path(p)


@flow(name="repair", log_prints=True)
def repair_flow(tenant: str = "default", trigger: str = "manual", event_id: str = "", reason: str = "",
                settings: str = "configs/repair.yaml", rollout_policy: str = "configs/rollout/canary.yaml",
                force: bool = False) -> dict[str, Any]:
    log = get_run_logger()
    ep = Endpoints.load()
    run_id = str(flow_run.get_id() or f"local-{time.time():.0f}")
    store = RepairStore(ep.state_dir / "repair" / "state.json")
    resource = {"prefect.resource.id": f"llmops.tenant.{tenant}", "llmops.tenant": tenant}
    held = store.claim(run_id, trigger, {"event_id": event_id, "trigger": trigger, "reason": reason}, time.time())
    if held is not None:
        log.info("repair %s is running: this trigger (%s %s) is recorded against it", held.run_id, trigger, event_id)
        emit_event("llmops.repair.deferred", resource=resource,
                   payload={"running": held.run_id, "event_id": event_id, "trigger": trigger})
        return {"outcome": "recorded against the running repair", "running": held.run_id}
    t0 = time.monotonic()
    outcome: dict[str, Any] = {"outcome": "failed"}
    try:
        outcome = _repair(ep, store, tenant, trigger, event_id, reason,
                          load_config(_path(settings), RepairSettings), rollout_policy, force)
    except Exception as err:
        outcome = {"outcome": "failed", "error": f"{type(err).__name__}: {err}"[:500]}
        raise
    finally:
        outcome["seconds"] = round(time.monotonic() - t0, 1)
        done = store.release(run_id, {**outcome, "trigger": trigger, "event_id": event_id})
        during = len(done.alerts) if done else 0
        emit_event(f"llmops.repair.{outcome['outcome'].split()[0]}", resource=resource,
                   payload={**{k: v for k, v in outcome.items() if k != "reasons"}, "event_id": event_id,
                            "triggers_during": during})
    return outcome


def _repair(ep: Endpoints, store: RepairStore, tenant: str, trigger: str, event_id: str, reason: str, s: RepairSettings,
            rollout_policy: str, force: bool = False) -> dict[str, Any]:
    import json

    import mlflow

    log = get_run_logger()
    stack = load_effective_config(ep.state_dir)
    if tenant not in stack.tenants:
        return {"outcome": "skipped", "why": f"tenant {tenant!r} is not configured (tenants: {sorted(stack.tenants)})"}
    if tenant not in {p.tenant for p in stack.pools()}:
        return {"outcome": "skipped", "why": f"tenant {tenant!r} has no pool (no `model` in its tenants entry)"}
    # the tenant's own model: its champion is the parent, its pool gets the canary
    train_cfg = load_train_config(_path(s.train_config)).model_copy(
        update={"model_name": stack.pool_of_tenant(tenant).model})
    bucket, prefix = train_cfg.data.feedback_bucket, train_cfg.data.feedback_prefix or "feedback/"
    champ, champ_dir = pull_base(train_cfg.model_name, "champion")
    records = read_feedback_records(bucket, prefix)
    corrections, skipped = corrections_from(records, tenant, version=champ.version)
    if len(corrections) < s.min_corrections:
        why = (f"{len(corrections)} correction(s) of tenant {tenant!r} on champion v{champ.version} "
               f"(need {s.min_corrections}); {len(skipped)} other bad verdict(s) left out")
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(f"# Repair: nothing trained\n\n{why}.\n\nSend bad verdicts with a `correction` "
                                 "(POST /v1/feedback) to give the repair something to learn.",
                                 key="repair-gate", description="repair skipped: no corrections")
        log.warning("no repair: %s", why)
        return {"outcome": "skipped", "why": why}

    fb_digest = corrections_digest(corrections)
    before = None if force else tried_before(store.read().history, champ.version, fb_digest)
    if before is not None:
        why = (f"the same {len(corrections)} correction(s) on champion v{champ.version} were tried by repair run "
               f"{before.get('run_id')} (v{before.get('version')}) and rejected: "
               f"{'; '.join(before.get('reasons') or []) or 'see that run'}")
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(f"# Repair: nothing trained\n\n{why}.\n\nA repair runs again once new corrections "
                                 "arrive or the champion changes. To retry these very corrections (say after "
                                 "changing `configs/repair.yaml`), run the deployment with `force`: "
                                 "`prefect deployment run repair/repair -p force=true`.", key="repair-gate",
                                 description="repair skipped: already tried")
        log.warning("no repair: %s", why)
        return {"outcome": "skipped", "why": why, "parent_version": champ.version, "corrections_digest": fb_digest}

    train_c, held_c = split_corrections(corrections, s.heldout_fraction, s.seed)
    standing = standing_data(champ, bucket)
    replaced = replaced_answers(corrections)
    data = repair_dataset(train_c, standing.replay, replaced, s)
    suite = without_replaced(standing.suite, replaced)  # the corrected facts are judged by the must-fix check
    blob = "\n".join(e.model_dump_json() for e in data).encode()
    digest = hashlib.sha256(blob).hexdigest()
    feedback_ids = [r.request_id for r in corrections]
    mlflow.set_tracking_uri(ep.mlflow_url)
    mlflow.set_experiment(f"{train_cfg.model_name}-repair")
    with mlflow.start_run(run_name=f"repair-{flow_run.get_name() or 'local'}") as run:
        rid = run.info.run_id
        mlflow.log_params({"parent_version": champ.version, "corrections": len(corrections),
                           "train_corrections": len(train_c), "heldout_corrections": len(held_c),
                           "replay": len(data) - len(train_c) * s.correction_repeats, "examples": len(data),
                           **{f"hyper.{k}": v for k, v in train_cfg.hyper.model_dump().items()}})
        mlflow.set_tags({"llmops.repair.trigger": trigger, "llmops.repair.event_id": event_id,
                         "llmops.parent_version": champ.version, "llmops.dataset_digest": digest,
                         "prefect.flow_run_id": str(flow_run.get_id())})
        mlflow.log_text(blob.decode(), "repair/dataset.jsonl")
        mlflow.log_text(json.dumps({"feedback_ids": feedback_ids, "skipped": skipped, "replay": standing.source,
                                    "reason": reason}, indent=1), "repair/lineage.json")
        out = fine_tune(train_cfg, champ_dir, data, held_c, str(ep.state_dir / "runs" / rid), rid, base=champ)
        fix = score_model(out.merged_dir, "repair", held_c, [], [])
        answers = [*standing.policy_answers, *{e.completion for e in train_c}]
        suite_new = score_model(out.merged_dir, "repair", suite, standing.control, answers)
        suite_champ = score_model(champ_dir, f"champion v{champ.version}", suite, standing.control, answers,
                                  model_sha256=champ.sha256, bucket=bucket)
        decision = repair_gate(fix, suite_new, suite_champ, s)
        facts = {"trigger": f"{trigger} {event_id}".strip(), "parent (champion)": f"v{champ.version}",
                 "corrections": f"{len(corrections)} ({len(train_c)} trained, {len(held_c)} held out)",
                 "repair set": f"{len(data)} examples, sha256 {digest[:12]}", "replay from": standing.source,
                 "training": f"{out.steps} steps, {out.seconds:.0f} s, final loss {out.final_loss:.3f}",
                 "champion's answers": (f"{suite_champ.reused} of {len(suite_champ.answers)} read from its answer "
                                        f"book (s3://{bucket}/{book_key(champ.sha256)}), the rest generated")}
        publish_repair_report(decision, fix, suite_new, suite_champ, facts, rid)
        tags = {"llmops.repair": "true", "llmops.parent_version": champ.version, "llmops.alert_id": event_id,
                "llmops.repair.trigger": trigger, "llmops.dataset_digest": digest,
                "llmops.feedback_ids": ",".join(feedback_ids)[:4000], "llmops.method": train_cfg.method.value,
                "llmops.gate": "pass" if decision.promote else "fail",
                "llmops.gate_reason": "; ".join(decision.reasons)[:4000],
                "llmops.eval.fix_exact_match": f"{fix.overall.get('exact_match', 0):.4f}",
                "llmops.eval.exact_match": f"{suite_new.overall.get('exact_match', 0):.4f}"}
        ref = register_challenger(train_cfg.model_name, out.merged_dir, out.adapter_dir, rid, tags, decision.promote)
        keep_answers(suite_champ, champ.sha256, bucket, rid)
        keep_answers(suite_new, ref.sha256, bucket, rid)
    result: dict[str, Any] = {"version": ref.version, "parent_version": champ.version, "corrections_digest": fb_digest,
                              "fix_exact_match": fix.overall.get("exact_match", 0.0),
                              "suite_exact_match": suite_new.overall.get("exact_match", 0.0),
                              "champion_suite_exact_match": suite_champ.overall.get("exact_match", 0.0),
                              "champion_answers": len(suite_champ.answers),
                              "champion_answers_reused": suite_champ.reused,
                              "reasons": list(decision.reasons), "mlflow_run_id": rid}
    if not decision.promote:
        log.warning("repair v%s failed its gate: %s", ref.version, "; ".join(decision.reasons))
        return {"outcome": "rejected", **result}
    log.info("repair v%s passed its gate; canary", ref.version)
    rolled = rollout_flow(version=ref.version, policy=rollout_policy, tenant=tenant)
    return {"outcome": "promoted" if rolled["promoted"] else "rolled_back", "rollout": rolled["reason"], **result}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Run the repair flow against the running stack.")
    ap.add_argument("--tenant", default="default")
    print(repair_flow(tenant=ap.parse_args().tenant))
