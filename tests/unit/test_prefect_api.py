"""PrefectApi: the Prefect server's 503 ("SQLite busy, retry me") is retried, other statuses are not."""

from __future__ import annotations

import httpx
import pytest

from llmops import prefect_api
from llmops.errors import ServiceError
from llmops.prefect_api import PrefectApi


def api_with(handler: httpx.MockTransport, monkeypatch: pytest.MonkeyPatch) -> PrefectApi:
    monkeypatch.setattr(prefect_api.time, "sleep", lambda _s: None)
    api = PrefectApi("http://prefect.test/api", "http://prefect.test")
    api.http = httpx.Client(transport=handler)
    return api


def test_a_busy_server_is_retried_until_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def handle(req: httpx.Request) -> httpx.Response:
        calls.append(req.url.path)
        if len(calls) < 3:
            return httpx.Response(503, json={"exception_message": "Service Unavailable"})
        if req.url.path.endswith("/name/reconcile/reconcile"):
            return httpx.Response(200, json={"id": "dep-1"})
        return httpx.Response(200, json=None)

    api = api_with(httpx.MockTransport(handle), monkeypatch)
    api.set_paused("reconcile", "reconcile", True)
    assert calls == ["/api/deployments/name/reconcile/reconcile"] * 3 + ["/api/deployments/dep-1/pause_deployment",
                                                                       "/api/automations/related-to/prefect.deployment.dep-1"]


def test_pausing_also_disables_the_deployments_trigger_automations(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, bytes]] = []

    def handle(req: httpx.Request) -> httpx.Response:
        calls.append((req.method, req.url.path, req.content))
        if req.url.path.endswith("/name/scale/scale"):
            return httpx.Response(200, json={"id": "dep-2"})
        if "/related-to/" in req.url.path:
            return httpx.Response(200, json=[{"id": "a1", "enabled": True}, {"id": "a2", "enabled": True}])
        return httpx.Response(200, json=None)

    api = api_with(httpx.MockTransport(handle), monkeypatch)
    assert api.set_paused("scale", "scale", True) == 2
    patches = [(m, p, body) for m, p, body in calls if m == "PATCH"]
    assert patches == [("PATCH", "/api/automations/a1", b'{"enabled":false}'),
                       ("PATCH", "/api/automations/a2", b'{"enabled":false}')]


def test_a_refusal_is_not_retried_and_names_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def handle(req: httpx.Request) -> httpx.Response:
        calls.append(req.url.path)
        return httpx.Response(422, json={"detail": "bad filter"})

    api = api_with(httpx.MockTransport(handle), monkeypatch)
    with pytest.raises(ServiceError, match="POST /flow_runs/filter: HTTP 422"):
        api.flow_runs({"limit": "x"})
    assert len(calls) == 1


def test_a_missing_deployment_says_how_to_register_it(monkeypatch: pytest.MonkeyPatch) -> None:
    api = api_with(httpx.MockTransport(lambda _r: httpx.Response(404, json={"detail": "nope"})), monkeypatch)
    with pytest.raises(ServiceError, match="registers the deployments"):
        api.set_paused("scale", "scale", False)


def test_an_unreachable_server_fails_after_the_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    def handle(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    api = api_with(httpx.MockTransport(handle), monkeypatch)
    with pytest.raises(ServiceError, match="unreachable"):
        api.events({"filter": {}})
