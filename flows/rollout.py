"""rollout: canary a registered version (10% -> 50% -> 100%, judged at each step), promote or roll back.

    llmops rollout --version challenger
    python -m flows.rollout --version 3
    prefect deployment run rollout/rollout        (or the Prefect UI; parameters: version, policy)
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.concurrency.sync import concurrency

from llmops.config import load_config
from llmops.endpoints import Endpoints
from llmops.errors import LlmopsError
from llmops.pool.manager import POOL_LOCK_LEASE_S
from llmops.rollout import CanaryPolicy
from llmops.stackconfig import load_effective_config
from tasks.report import publish_rollout_report
from tasks.serve import roll_out_canary

ROOT = Path(__file__).resolve().parents[1]


@flow(name="rollout", log_prints=True)
def rollout_flow(version: str = "challenger", policy: str = "configs/rollout/canary.yaml",
                 tenant: str = "default") -> dict[str, Any]:
    """Canary `version` of `tenant`'s model on its pool (no other tenant's nodes are touched)."""
    pol = load_config(ROOT / policy if not Path(policy).is_absolute() else policy, CanaryPolicy)
    ep = Endpoints.load()
    model = load_effective_config(ep.state_dir).pool_of_tenant(tenant).model
    # One pool change at a time: the scale and reconcile flows take the same lock. Their passes are short, so
    # the rollout waits `lock_wait_s` for one to finish; a rollout still holding it then means: refused.
    with ExitStack() as held:
        try:
            held.enter_context(concurrency(f"pool-{model}", occupy=1, strict=True,
                                           timeout_seconds=pol.lock_wait_s, lease_duration=POOL_LOCK_LEASE_S))
        except TimeoutError:
            raise LlmopsError(f"another rollout or scaling action is changing pool {model}",
                              "wait for it to finish (Prefect UI, flow runs) and start the rollout again") from None
        report = roll_out_canary(version, pol, model)
    publish_rollout_report(report)
    verdict = "promoted" if report.promoted else "rolled back"
    print(f"v{report.candidate} {verdict} in {report.seconds:.0f}s: {report.reason}")
    return {"candidate": report.candidate, "promoted": report.promoted, "reason": report.reason,
            "seconds": report.seconds, "steps": [(s.share, s.verdict) for s in report.steps]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Canary a registered version on the running stack.")
    ap.add_argument("--version", default="challenger")
    ap.add_argument("--policy", default="configs/rollout/canary.yaml")
    ap.add_argument("--tenant", default="default")
    a = ap.parse_args()
    print(rollout_flow(version=a.version, policy=a.policy, tenant=a.tenant))
