"""The LMDeploy node wrapper without a GPU: the launcher's command line, and the app LMDeploy builds, as uvicorn
would receive it, gets the version header, /llmops/info and the serving log while LMDeploy's /metrics stays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Response
from fastapi.testclient import TestClient

from infra.nodes import lmdeploy_node
from llmops.pool.launcher import engine_argv
from llmops.pool.state import NodeRecord
from llmops.stackconfig import Engine, ServingSettings


def test_launcher_runs_lmdeploy_through_the_wrapper_with_the_version_and_hash() -> None:
    node = NodeRecord(name="n1", model="sa", engine="lmdeploy", version="3", sha256="ab" * 32, host="127.0.0.1",
                      port=9001)
    argv = engine_argv(Engine.LMDEPLOY, "sa", node, ServingSettings(lmdeploy_python="/opt/lmd/bin/python",
                                                                    lmdeploy_eager_mode=True))
    assert argv[:9] == ["/opt/lmd/bin/python", "-m", "infra.nodes.lmdeploy_node", "--served-name", "sa",
                        "--version", "3", "--sha256", "ab" * 32]
    rest = argv[argv.index("--") + 1:]
    assert rest[:3] == ["serve", "api_server", "sa"] and "--eager-mode" in rest
    assert rest[rest.index("--server-port") + 1] == "9001" and rest[rest.index("--model-name") + 1] == "sa"


def lmdeploy_like_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"message": {"role": "assistant", "content": "Refunds within 30 days."}}],
                "usage": {"completion_tokens": 5}}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response("lmdeploy:num_requests_waiting 0\n", media_type="text/plain")

    return app


def test_the_app_uvicorn_receives_is_instrumented(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    log = tmp_path / "serving" / "n1.jsonl"
    monkeypatch.setenv("LLMOPS_SERVING_LOG", str(log))
    monkeypatch.setenv("LLMOPS_TENANT", "acme")
    received: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: received.append((app, kw)))
    lmdeploy_node.wrap_uvicorn("sa", "3", "ab" * 32)
    uvicorn.run(app=lmdeploy_like_app(), host="127.0.0.1", port=1)  # what LMDeploy's serve() does
    app, kw = received[0]
    assert kw == {"host": "127.0.0.1", "port": 1}
    client = TestClient(app)
    r = client.post("/v1/chat/completions", headers={"X-Request-Id": "req-1"},
                    json={"model": "sa", "messages": [{"role": "user", "content": "Refund window?"}]})
    assert r.status_code == 200 and r.headers["x-llmops-model-version"] == "3"
    probe = client.post("/v1/chat/completions", headers={"X-Request-Id": "req-2", "X-Llmops-Probe": "1"},
                        json={"model": "sa", "messages": [{"role": "user", "content": "probe"}]})
    assert probe.status_code == 200
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 1  # probe traffic is not user traffic: not logged
    assert lines[0]["request_id"] == "req-1" and lines[0]["tenant"] == "acme" and lines[0]["model_version"] == "3"
    assert lines[0]["response"] == "Refunds within 30 days."
    assert lines[0]["messages"] == [{"role": "user", "content": "Refund window?"}]
    assert client.get("/llmops/info").json() == {"served_name": "sa", "version": "3", "sha256": "ab" * 32}
    assert client.get("/metrics").text.startswith("lmdeploy:")  # LMDeploy's own metrics, not replaced


def test_wrong_weights_are_refused_before_lmdeploy_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "sa"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="refusing to serve"):
        lmdeploy_node.main(["--served-name", "sa", "--version", "3", "--sha256", "0" * 64, "--", "serve"])
