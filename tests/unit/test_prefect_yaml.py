"""prefect.yaml: every deployment points at a real flow, its triggers are valid Prefect triggers, and the events
our receiver emits are the ones those triggers match (and only those)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.events.schemas.events import Resource

from llmops.alerts import alert_events
from llmops.webhooks import RepairHook, Verified, hook_event

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


def fires(deployment: str, event: dict[str, Any], deployments: dict[str, Any] | None = None) -> bool:
    for t in (deployments or DEPLOYMENTS)[deployment].get("triggers", []):
        trig = DeploymentEventTrigger.model_validate(t)
        if event["event"] in trig.expect and trig.match.matches(Resource.model_validate(event["resource"])):
            return True
    return False


def alert(name: str, action: str, status: str = "firing", tenant: str = "default") -> dict[str, Any]:
    (e,) = alert_events({"alerts": [{"status": status, "labels": {"alertname": name, "pool": "sa", "tenant": tenant,
                                                                  "action": action}}]})
    return e


def test_every_entrypoint_is_a_flow() -> None:
    for name, d in DEPLOYMENTS.items():
        path, func = d["entrypoint"].split(":")
        mod = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert hasattr(getattr(mod, func), "fn"), f"{name}: {func} is not a Prefect flow"


def test_scale_fires_on_capacity_alerts_only() -> None:
    assert fires("scale", alert("HighLatency", "scale_out")) and fires("scale", alert("NodeDown", "replace"))
    assert not fires("scale", alert("LowUtilisation", "scale_in"))
    assert not fires("scale", alert("HighLatency", "scale_out", "resolved"))
    assert not fires("scale", alert("RegressionDetected", "repair"))


def test_each_tenant_pools_alerts_start_only_its_own_scale_deployment(tmp_path: Path) -> None:
    from infra.stack.launcher import tenant_deployments
    from llmops.stackconfig import StackConfig

    path = tenant_deployments(StackConfig.model_validate({"state_dir": tmp_path, "tenants": {
        "default": {}, "acme": {"model": "acme-model"}, "globex": {"model": "globex-model"}}}))
    assert path is not None
    mine = {d["name"]: d for d in yaml.safe_load(path.read_text())["deployments"]}
    assert set(mine) == {"scale-acme", "scale-globex"}
    acme = alert("HighLatency", "scale_out", tenant="acme")
    assert fires("scale-acme", acme, mine) and not fires("scale-globex", acme, mine) and not fires("scale", acme)
    assert not fires("scale-acme", alert("HighLatency", "scale_out"), mine)  # the default tenant's: `scale` only
    assert not fires("scale-acme", alert("LowUtilisation", "scale_in", tenant="acme"), mine)


def test_repair_fires_on_the_alert_and_on_the_signed_webhook() -> None:
    assert fires("repair", alert("RegressionDetected", "repair"))
    assert not fires("repair", alert("RegressionDetected", "repair", "resolved"))
    assert not fires("repair", alert("HighLatency", "scale_out"))
    hook = hook_event(Verified("acme", "repair", "d1", "llmops.regression.detected", RepairHook(reason="r")),
                      "2026-11-28T00:00:00+00:00", "e1")
    assert fires("repair", hook)


def test_train_and_rollout_hooks_start_their_deployments() -> None:
    from llmops.webhooks import RolloutHook, TrainHook

    train = hook_event(Verified("acme", "train", "d2", "llmops.hook.train", TrainHook()), "2026-11-28T00:00:00Z", "e")
    roll = hook_event(Verified("acme", "rollout", "d3", "llmops.hook.rollout", RolloutHook(version="7")),
                      "2026-11-28T00:00:00Z", "e")
    assert fires("train-pipeline", train) and not fires("rollout", train)
    assert fires("rollout", roll) and not fires("train-pipeline", roll) and not fires("repair", roll)


def test_a_host_class_gets_its_serve_node_deployment_on_its_own_work_pool(tmp_path: Path) -> None:
    from infra.stack.launcher import tenant_deployments
    from llmops.stackconfig import StackConfig

    path = tenant_deployments(StackConfig.model_validate({"state_dir": tmp_path, "serving": {"host_class": "cpu"}}))
    assert path is not None
    (d,) = yaml.safe_load(path.read_text())["deployments"]
    assert d["name"] == "cpu" and d["work_pool"] == {"name": "cpu"}
    assert d["entrypoint"] == "flows/serve_node.py:serve_node_flow" and "triggers" not in d
    module, func = d["entrypoint"].split(":")
    import importlib

    flow_obj = getattr(importlib.import_module(module.replace("/", ".").removesuffix(".py")), func)
    assert flow_obj.name == "serve-node"  # the launcher runs `serve-node/<host class>`


def test_a_training_host_class_gets_its_fine_tune_deployment_on_its_own_work_pool(tmp_path: Path) -> None:
    import importlib

    import pytest
    from pydantic import ValidationError

    from infra.stack.launcher import tenant_deployments
    from llmops.stackconfig import StackConfig

    path = tenant_deployments(StackConfig.model_validate({"state_dir": tmp_path, "training": {"host_class": "train"}}))
    assert path is not None
    (d,) = yaml.safe_load(path.read_text())["deployments"]
    assert d["name"] == "train" and d["work_pool"] == {"name": "train"} and "triggers" not in d
    module, func = d["entrypoint"].split(":")
    flow_obj = getattr(importlib.import_module(module.replace("/", ".").removesuffix(".py")), func)
    assert flow_obj.name == "fine-tune"  # tasks/train.py runs `fine-tune/<host class>`
    with pytest.raises(ValidationError, match="a work pool of their own"):
        StackConfig.model_validate({"training": {"host_class": "local"}})  # the control plane's own pool
