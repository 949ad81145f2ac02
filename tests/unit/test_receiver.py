"""The webhook receiver against a stand-in Prefect API: auth, validation, forwarding, spend metrics."""

from __future__ import annotations

import json
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
