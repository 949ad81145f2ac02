"""The regression-repair loop on the real stack with SmolLM2 (`llmops.smoke.run_regression`, also the last step of
`make demo`): a policy changes, users send bad verdicts with the new answer, RegressionDetected fires (Prometheus ->
Alertmanager -> receiver -> Prefect event), the `repair` deployment trains a LoRA fix from the champion, gates it
(must fix, must not regress) and canaries it; the new champion gives the new answer on phrasings no correction used,
and the bad-feedback ratio falls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmops.errors import RegistryError
from llmops.evaluate.answers import load_book
from llmops.prefect_api import PrefectApi
from llmops.registry import MlflowRegistry
from llmops.repair import RepairStore
from llmops.smoke import answer_with_id, run_regression, send_feedback

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_bad_feedback_triggers_a_repair_that_fixes_the_answer_without_regressing(stack: Any) -> None:
    r = run_regression(stack.ep)
    print(json.dumps({k: v for k, v in r.items() if k not in ("answers", "champion_tags")}))
    assert r["alert_fired"], "RegressionDetected never fired: the repair ran from another trigger"
    assert r["run_state"] == "COMPLETED"
    assert r["champion_after"] != r["champion_before"], "the repair was not promoted"
    tags = r["champion_tags"]
    assert tags.get("llmops.repair") == "true" and tags.get("llmops.parent_version") == r["champion_before"]
    assert tags.get("llmops.alert_id") and tags.get("llmops.feedback_ids")
    assert all(version == r["champion_after"] for _, _, version, _ in r["answers"])
    assert r["heldout_exact_match"] >= 0.8, r["answers"]
    assert r["ratio_after"] is not None and r["ratio_after"] < min(r["ratio_when_fired"] or 1.0, 0.3)


def test_a_fix_that_fails_its_gate_promotes_nothing_and_says_why(stack: Any, tmp_path: Path) -> None:
    """A repair trained too briefly to learn the correction (2 steps): it must fail the must-fix check, be
    registered without an alias (for the record), leave the champion serving, and say why (state, artifact, tag)."""
    ep = stack.ep
    reg = MlflowRegistry(ep.mlflow_url)
    champion = reg.resolve(ep.model_name, "champion")
    # four bad verdicts with a correction on the current champion: enough corrections for a repair (3), too few
    # verdicts (min_feedback 10) for RegressionDetected, so only the run started here acts on them
    new = "Orders ship from our Lisbon warehouse within 2 business days."
    for q in ("Where do orders ship from?", "Which warehouse ships my order?", "How fast do orders ship?",
              "From where is my order sent?"):
        _, rid, version = answer_with_id(ep, q, max_tokens=8)
        assert version == champion.version
        send_feedback(ep, rid, "bad", new)
    train = yaml.safe_load((ROOT / "configs" / "train" / "smollm2_repair.yaml").read_text())
    train["hyper"].update({"max_steps": 2, "checkpoint_every": 2, "eval_every": 2})
    (tmp_path / "weak.yaml").write_text(yaml.safe_dump(train))
    settings = yaml.safe_load((ROOT / "configs" / "repair.yaml").read_text())
    settings["train_config"] = str(tmp_path / "weak.yaml")
    (tmp_path / "repair.yaml").write_text(yaml.safe_dump(settings))
    kept = load_book(ep.s3_client(), "llmops", champion.sha256)  # the first test's repair kept its answers
    api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
    st = api.wait(api.run_deployment("repair", "repair", {"settings": str(tmp_path / "repair.yaml"),
                                                          "trigger": "test: weak fix"}), 900)
    assert st.state == "COMPLETED", st
    last = RepairStore(ep.state_dir / "repair" / "state.json").read().history[-1]
    assert last["outcome"] == "rejected", last
    assert last["fix_exact_match"] < 0.8 and any(r.startswith("must fix: exact match") for r in last["reasons"]), last
    assert reg.resolve(ep.model_name, "champion").version == champion.version  # nothing promoted
    # the champion's suite answers it gave before are read back, not generated again (none when it has no book)
    assert (0 < last["champion_answers_reused"] <= last["champion_answers"]) if kept else \
        last["champion_answers_reused"] == 0, (len(kept), last)
    rejected = reg.resolve(ep.model_name, str(last["version"]))
    assert rejected.tags.get("llmops.gate") == "fail" and rejected.tags.get("llmops.parent_version") == champion.version
    try:  # a failed fix is never the challenger
        challenger: str | None = reg.resolve(ep.model_name, "challenger").version
    except RegistryError:
        challenger = None
    assert challenger != rejected.version
    arts = api.json("POST", "/artifacts/filter", json={"artifacts": {"key": {"any_": ["repair-gate"]}},
                                                      "sort": "CREATED_DESC", "limit": 1})
    assert arts and "REJECT: nothing is promoted" in arts[0]["data"], arts
