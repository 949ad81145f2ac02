"""The webhook receiver against a stand-in Prefect API: auth, validation, forwarding, spend metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from infra.receiver import app as receiver_app
from infra.stack.services import endpoints_for
from llmops.pool.state import NodeRecord, NodeStatus, PoolStore
from llmops.stackconfig import StackConfig
from tests.unit.test_alerts import PAYLOAD


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[TestClient, list[Any]]:
    posted: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append((str(request.url), json.loads(request.content)))
        return httpx.Response(204)

    real_client = httpx.Client
    monkeypatch.setattr(receiver_app.httpx, "Client",
                        lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw))
    cfg = StackConfig(state_dir=tmp_path)
    store = PoolStore(tmp_path / "pool" / "pool.json")
    with store.update() as st:
        st.nodes["node1"] = NodeRecord(name="node1", model=cfg.model.name, engine="transformers", version="1",
                                       sha256="s", host="127.0.0.1", port=1, status=NodeStatus.SERVING,
                                       started_at=1.0)
        st.nodes["node2"] = NodeRecord(name="node2", model=cfg.model.name, engine="transformers", version="1",
                                       sha256="s", host="127.0.0.1", port=2, status=NodeStatus.SERVING,
                                       standby=True, weight=0, started_at=1.0)
    app = receiver_app.create_app(cfg, endpoints_for(cfg), token="t0ken")
    return TestClient(app), posted


def test_alerts_are_forwarded_as_prefect_events(client: tuple[TestClient, list[Any]]) -> None:
    c, posted = client
    r = c.post("/alertmanager", json=PAYLOAD, headers={"Authorization": "Bearer t0ken"})
    assert r.status_code == 202, r.text
    assert [e["event"] for e in r.json()["events"]] == ["llmops.alert.firing", "llmops.alert.resolved"]
    url, body = posted[0]
    assert url.endswith("/api/events") and body[0]["resource"]["prefect.resource.id"] == "llmops.pool.acme.sa"


@pytest.mark.parametrize(("headers", "body", "status"), [
    ({}, PAYLOAD, 401),
    ({"Authorization": "Bearer wrong"}, PAYLOAD, 401),
    ({"Authorization": "Bearer t0ken"}, {"alerts": [{"status": "firing", "labels": {"alertname": "X"}}]}, 422),
    ({"Authorization": "Bearer t0ken"}, {"nothing": 1}, 422),
])
def test_bad_calls_get_a_clear_4xx_and_emit_nothing(client: tuple[TestClient, list[Any]], headers: dict[str, str],
                                                     body: dict[str, Any], status: int) -> None:
    c, posted = client
    r = c.post("/alertmanager", json=body, headers=headers)
    assert r.status_code == status and r.json()["detail"]
    assert posted == []


def test_metrics_publish_pool_size_spend_and_budget(client: tuple[TestClient, list[Any]]) -> None:
    c, _ = client
    text = c.get("/metrics").text
    assert 'llmops_pool_nodes{model="support-assistant",role="serving"} 1.0' in text
    assert 'llmops_pool_nodes{model="support-assistant",role="standby"} 1.0' in text
    assert 'llmops_pool_budget_per_hour{model="support-assistant"}' in text
    spent = next(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("llmops_pool_node_seconds{"))
    assert spent > 1e9  # two nodes since t=1 s (epoch): counted up to now


def scale_out_alert(pool: str, tenant: str = "default", name: str = "Saturated") -> dict[str, Any]:
    return {"version": "4", "status": "firing", "alerts": [{
        "status": "firing", "labels": {"alertname": name, "pool": pool, "tenant": tenant, "action": "scale_out"},
        "annotations": {}}]}


def test_a_scale_out_alert_that_could_only_hold_starts_no_run(client: tuple[TestClient, list[Any]],
                                                              tmp_path: Path) -> None:
    """At the cap with no standby, or inside the cool-down, the alert is posted as `llmops.alert.held` with the
    reason (prefect.yaml's scale trigger matches `llmops.alert.firing` only); with a standby to promote it fires."""
    c, posted = client
    auth = {"Authorization": "Bearer t0ken"}
    model = StackConfig(state_dir=tmp_path).model.name
    r = c.post("/alertmanager", json=scale_out_alert(model), headers=auth)
    assert [e["event"] for e in r.json()["events"]] == ["llmops.alert.firing"]  # 1 serving + 1 standby: act
    store = PoolStore(tmp_path / "pool" / "pool.json")
    with store.update() as st:
        st.nodes["node2"] = st.nodes["node2"].model_copy(update={"standby": False, "weight": 100})
        for i in (3, 4):
            st.nodes[f"node{i}"] = st.nodes["node1"].model_copy(update={"name": f"node{i}", "port": i})
    r = c.post("/alertmanager", json=scale_out_alert(model), headers=auth)  # 4 serving = max_replicas 4
    assert [e["event"] for e in r.json()["events"]] == ["llmops.alert.held"]
    assert "at the cap: 4 serving" in posted[-1][1][0]["payload"]["held"]
    with store.update() as st:
        del st.nodes["node4"]
        st.scaling_of(model).last_scale_out_at = time.time() - 5  # default up_cooldown_s 20
    r = c.post("/alertmanager", json=scale_out_alert(model), headers=auth)
    assert [e["event"] for e in r.json()["events"]] == ["llmops.alert.held"]
    assert "cool-down" in posted[-1][1][0]["payload"]["held"]
    # a NodeDown (action replace) and an alert naming another tenant's pool are never held
    down = scale_out_alert(model)
    down["alerts"][0]["labels"]["action"] = "replace"
    assert [e["event"] for e in c.post("/alertmanager", json=down, headers=auth).json()["events"]] == \
        ["llmops.alert.firing"]
    other = c.post("/alertmanager", json=scale_out_alert(model, tenant="globex"), headers=auth)
    assert [e["event"] for e in other.json()["events"]] == ["llmops.alert.firing"]


def test_a_regression_re_sent_during_a_repair_is_recorded_against_it_and_starts_no_run(
        client: tuple[TestClient, list[Any]], tmp_path: Path) -> None:
    """RegressionDetected with no repair running goes out as `llmops.regression.detected` (the repair trigger);
    re-sent while one runs, it is recorded against that repair and posted as `llmops.regression.held`."""
    from llmops.repair import RepairStore

    c, posted = client
    auth = {"Authorization": "Bearer t0ken"}
    model = StackConfig(state_dir=tmp_path).model.name
    alert = scale_out_alert(model, name="RegressionDetected")
    alert["alerts"][0]["labels"]["action"] = "repair"
    assert [e["event"] for e in c.post("/alertmanager", json=alert, headers=auth).json()["events"]] == \
        ["llmops.regression.detected"]
    store = RepairStore(tmp_path / "repair" / "state.json")
    assert store.claim("repair-run-1", "llmops.regression.detected", {}, time.time()) is None
    r = c.post("/alertmanager", json=alert, headers=auth)
    assert [e["event"] for e in r.json()["events"]] == ["llmops.regression.held"]
    assert "repair repair-run-1 is running" in posted[-1][1][0]["payload"]["held"]
    done = store.release("repair-run-1", {"outcome": "promoted"})
    assert done is not None and [a["event_id"] for a in done.alerts] == [r.json()["events"][0]["id"]]
    assert [e["event"] for e in c.post("/alertmanager", json=alert, headers=auth).json()["events"]] == \
        ["llmops.regression.detected"]  # released: the next one triggers a repair again


def test_low_utilisation_triggers_reconcile_only_above_min(client: tuple[TestClient, list[Any]],
                                                            tmp_path: Path) -> None:
    """LowUtilisation (action scale_in) starts the reconcile deployment at once (prefect.yaml); at min replicas it
    could do nothing, so the receiver posts it held (idle hours would otherwise start a run every repeat)."""
    c, posted = client
    auth = {"Authorization": "Bearer t0ken"}
    model = StackConfig(state_dir=tmp_path).model.name
    low = scale_out_alert(model, name="LowUtilisation")
    low["alerts"][0]["labels"]["action"] = "scale_in"
    r = c.post("/alertmanager", json=low, headers=auth)  # 1 serving (+1 standby), min 2
    assert [e["event"] for e in r.json()["events"]] == ["llmops.alert.held"]
    assert "at min replicas" in posted[-1][1][0]["payload"]["held"]
    store = PoolStore(tmp_path / "pool" / "pool.json")
    with store.update() as st:
        for i in (3, 4):
            st.nodes[f"node{i}"] = st.nodes["node1"].model_copy(update={"name": f"node{i}", "port": i})
    r = c.post("/alertmanager", json=low, headers=auth)  # 3 serving > min 2: reconcile may drain one
    assert [e["event"] for e in r.json()["events"]] == ["llmops.alert.firing"]
    assert r.json()["events"][0]["resource"] == f"llmops.pool.default.{model}"


def test_reconcile_deployment_is_triggered_by_scale_in_alerts() -> None:
    import yaml

    deps = {d["name"]: d for d in yaml.safe_load((Path(__file__).parents[2] / "prefect.yaml").read_text())
            ["deployments"]}
    (trigger,) = deps["reconcile"]["triggers"]
    assert trigger["match"]["llmops.action"] == "scale_in" and trigger["expect"] == ["llmops.alert.firing"]
    assert deps["reconcile"]["schedules"] == [{"interval": 60}]
