"""Day-2 operations through the CLI on the real stack: rotate a webhook secret, pause and resume scaling, drain a
node under load, and the rollback that has nothing to go back to."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from llmops import proc
from llmops.cli import app
from llmops.loadgen import schedule
from llmops.loadgen.runner import run_load
from llmops.prefect_api import PrefectApi
from llmops.tenants import secret_file
from llmops.webhooks import signed_headers

pytestmark = pytest.mark.integration
runner = CliRunner()


def cli(stack: Any, *args: str) -> Any:
    return runner.invoke(app, [*args, "--state-dir", str(stack.cfg.state_dir)])


def test_rotated_secret_refuses_the_old_one_at_once(stack: Any) -> None:
    old = secret_file(stack.cfg.state_dir, "default").read_text().strip()
    r = cli(stack, "rotate-secret", "default")
    assert r.exit_code == 0, r.output
    new = r.output.strip().splitlines()[-1]
    assert new != old and new == secret_file(stack.cfg.state_dir, "default").read_text().strip()
    assert oct(secret_file(stack.cfg.state_dir, "default").stat().st_mode & 0o777) == "0o600"
    body = json.dumps({"reason": f"rotation {uuid.uuid4().hex[:6]}"}).encode()
    url = f"{stack.ep.receiver_url}/hooks/default/repair"
    stale = httpx.post(url, content=body, timeout=10, headers=signed_headers(old, body, uuid.uuid4().hex))
    assert stale.status_code == 401
    fresh = httpx.post(url, content=body, timeout=10, headers=signed_headers(new, body, uuid.uuid4().hex))
    assert fresh.status_code == 202, fresh.text
    unknown = cli(stack, "rotate-secret", "nobody")
    assert unknown.exit_code == 2 and "not in the stack config" in unknown.output


def test_pause_and_resume_scaling_toggle_the_deployments(stack: Any) -> None:
    api = PrefectApi(stack.ep.prefect_api_url, stack.ep.prefect_ui_url)

    def paused(flow: str, dep: str) -> bool:
        return bool(api.json("GET", f"/deployments/{api.deployment_id(flow, dep)}")["paused"])

    try:
        r = cli(stack, "scaling", "pause", "--reconcile")
        assert r.exit_code == 0, r.output
        assert paused("scale", "scale") and paused("reconcile", "reconcile")
        # Prefect's pause stops schedules only: the alert trigger's automation must be off too
        assert api.triggers_enabled("scale", "scale") == [False]
    finally:
        r = cli(stack, "scaling", "resume")
    assert r.exit_code == 0, r.output
    assert not paused("scale", "scale") and not paused("reconcile", "reconcile")
    assert api.triggers_enabled("scale", "scale") == [True]
    r = cli(stack, "scaling", "pause", "--tenant", "nobody")
    assert r.exit_code == 2 and "nobody" in r.output


def test_drain_takes_a_node_out_under_load_without_a_failed_request(stack: Any) -> None:
    pool = stack.pool()
    before = {n.name for n in pool.nodes()}
    extra = pool.add_node("champion", weight=100)
    load: dict[str, Any] = {}
    stop = threading.Event()
    worker = threading.Thread(target=lambda: load.update(run_load(
        f"{stack.ep.gateway_url}/v1", stack.ep.model_name, schedule.steady(2.0, 60, max_tokens=8), stop=stop)))
    worker.start()
    try:
        time.sleep(5)  # requests are flowing to both nodes when the drain starts
        r = cli(stack, "node", "drain", extra.name, "--timeout-s", "30")
        time.sleep(3)  # and keep flowing to the remaining node after it
    finally:
        stop.set()
        worker.join()
    assert r.exit_code == 0, r.output
    assert {n.name for n in pool.nodes()} == before
    assert extra.name not in {s.name for s in pool.lb.servers(pool.backend)}
    rec = extra.process()
    assert rec is not None and not proc.is_alive(rec)
    assert load["failed"] == 0 and load["ok"] > 0, load
    listed = cli(stack, "node", "list")
    assert listed.exit_code == 0 and extra.name not in listed.output and all(n in listed.output for n in before)
    missing = cli(stack, "node", "drain", "node999")
    assert missing.exit_code == 2 and "llmops node list" in missing.output


def test_rollback_without_a_previous_champion_says_what_to_do(stack: Any) -> None:
    r = cli(stack, "rollback")
    assert r.exit_code == 2 and "records no previous champion" in r.output and "--to" in r.output
