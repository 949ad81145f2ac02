"""Tenant pools: each tenant with a `model` gets its own pool, HAProxy backend (routed by the request's model),
rules labelled with it, policy and budget (inheriting the stack's `scaling`), and its own scale deployment."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from infra.stack import services
from infra.stack.launcher import tenant_deployments
from llmops.errors import ConfigError
from llmops.stackconfig import StackConfig

TWO = {"scaling": {"min_replicas": 2, "max_replicas": 4, "high_latency_s": 4.0, "budget_per_hour": 6.0},
       "tenants": {"default": {}, "globex": {"model": "globex-assistant",
                                             "scaling": {"min_replicas": 1, "max_replicas": 2, "warm_standby": 0,
                                                         "budget_per_hour": 2.0}},
                   "hooks-only": {"hooks": ["feedback"]}}}


def two(tmp_path: Path) -> StackConfig:
    return StackConfig.model_validate({**TWO, "state_dir": tmp_path})


def test_each_tenant_with_a_model_has_a_pool_whose_policy_inherits_the_stacks(tmp_path: Path) -> None:
    cfg = two(tmp_path)
    pools = {p.tenant: p for p in cfg.pools()}
    assert set(pools) == {"default", "globex"}  # a tenant without a model has webhooks but no pool
    assert pools["default"].model == "support-assistant" and pools["default"].scaling.budget_per_hour == 6.0
    g = pools["globex"]
    assert (g.model, g.backend) == ("globex-assistant", "llm_globex_assistant")
    assert (g.scaling.min_replicas, g.scaling.max_replicas, g.scaling.budget_per_hour) == (1, 2, 2.0)
    assert g.scaling.high_latency_s == 4.0  # not overridden: the stack's, not the class default
    assert cfg.pool_for("globex-assistant") is not None and cfg.pool_of_tenant("globex").model == g.model
    with pytest.raises(ConfigError, match="no tenant serves model 'nope'"):
        cfg.pool_for("nope")
    with pytest.raises(ConfigError, match="tenant 'hooks-only' has no pool"):
        cfg.pool_of_tenant("hooks-only")


def test_two_tenants_cannot_share_a_model_and_default_is_the_stacks_model() -> None:
    with pytest.raises(ValidationError, match="claimed by tenants 'default' and 'acme'"):
        StackConfig.model_validate({"tenants": {"acme": {"model": "support-assistant"}}})
    with pytest.raises(ValidationError, match="claimed by tenants 'a' and 'b'"):
        StackConfig.model_validate({"tenants": {"a": {"model": "x-model"}, "b": {"model": "x-model"}}})
    with pytest.raises(ValidationError, match="default tenant's pool is the stack's model"):
        StackConfig.model_validate({"tenants": {"default": {"model": "other-model"}}})
    with pytest.raises(ValidationError, match="max_replicas"):  # a tenant's policy is validated like the stack's
        StackConfig.model_validate({"tenants": {"a": {"model": "a-model", "scaling": {"min_replicas": 5,
                                                                                       "max_replicas": 2}}}})


def test_the_gateway_routes_by_model_to_one_backend_per_tenant(tmp_path: Path) -> None:
    cfg = two(tmp_path)
    services.haproxy(cfg, services.endpoints_for(cfg))
    conf = (tmp_path / "haproxy" / "haproxy.cfg").read_text()
    assert "backend llm_support_assistant" in conf and "backend llm_globex_assistant" in conf and "${" not in conf
    assert "default_backend llm_support_assistant" in conf and "json_query('$.model')" in conf
    routes = (tmp_path / "haproxy" / "models.map").read_text().split("\n")
    assert "support-assistant llm_support_assistant" in routes and "globex-assistant llm_globex_assistant" in routes
    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy is a required Debian package (`make install`)"
    r = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy" / "haproxy.cfg")], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_each_pool_gets_rules_labelled_with_its_tenant_and_its_own_thresholds(tmp_path: Path) -> None:
    cfg = two(tmp_path)
    (tmp_path / "prometheus" / "rules").mkdir(parents=True)
    stale = tmp_path / "prometheus" / "rules" / "scaling-gone-model.yml"
    stale.write_text("groups: []\n")
    paths = services.write_scaling_rules(cfg)
    assert {p.name for p in paths} == {"scaling-support-assistant.yml", "scaling-globex-assistant.yml"}
    assert not stale.exists()  # a pool no longer configured loses its alerts
    g = yaml.safe_load((tmp_path / "prometheus" / "rules" / "scaling-globex-assistant.yml").read_text())
    alerts = [r for grp in g["groups"] for r in grp["rules"] if "alert" in r]
    assert alerts and all(r["labels"]["tenant"] == "globex" and r["labels"]["pool"] == "globex-assistant"
                          for r in alerts)
    assert all('model="support-assistant"' not in r["expr"] for r in alerts)
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with the Debian prometheus package (`make install`)"
    for p in paths:
        r = subprocess.run([promtool, "check", "rules", str(p)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr


def test_each_other_tenant_gets_its_own_scale_deployment(tmp_path: Path) -> None:
    assert tenant_deployments(StackConfig(state_dir=tmp_path)) is None  # one tenant: prefect.yaml's own `scale`
    path = tenant_deployments(two(tmp_path))
    assert path is not None
    doc = yaml.safe_load(path.read_text())
    (d,) = doc["deployments"]
    assert d["name"] == "scale-globex" and d["entrypoint"] == "flows/scale.py:scale_flow"
    assert d["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert [t["match"]["prefect.resource.id"] for t in d["triggers"]] == ["llmops.pool.globex.*"]
    assert doc["pull"] and doc["name"] == "elastic-llmops"
    project = yaml.safe_load((Path(services.REPO_ROOT) / "prefect.yaml").read_text())
    scale = next(x for x in project["deployments"] if x["name"] == "scale")
    assert [t["match"]["prefect.resource.id"] for t in scale["triggers"]] == ["llmops.pool.default.*"]
