"""A CPU serving node: the real `transformers serve` with Prometheus metrics and a version header.

`transformers serve` has no `/metrics` and no way to say which model version answered. This wrapper
runs the same CLI command in-process and wraps the FastAPI app it builds, adding:

- `GET /metrics`: requests in flight, requests and latency by route and status, the served version;
- header `X-Llmops-Model-Version` on every response, so the gateway, tests and metrics can attribute it;
- the serving log: one JSON line per answered user chat completion (request id from the gateway's `X-Request-Id`,
  tenant, version, messages, answer) appended to `$LLMOPS_SERVING_LOG`, where the feedback API finds what a
  verdict refers to (llmops/data/serving_log.py).

Run by the node launcher as:
    python -m infra.nodes.transformers_node --served-name NAME --version V --sha256 H -- <transformers serve args>
The working directory holds a symlink NAME -> the verified model directory, so the OpenAI `model` field
of requests is the registered model name while `transformers serve` pins the local path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

VERSION_HEADER = "X-Llmops-Model-Version"
PROBE_HEADER = "X-Llmops-Probe"

IN_FLIGHT = Gauge("llmops_node_requests_in_flight", "Requests being served by this node")
REQUESTS = Counter("llmops_node_requests_total", "Requests served", ["route", "status"])
LATENCY = Histogram(
    "llmops_node_request_duration_seconds", "Time to full response (streams: to last byte)", ["route"],
    buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 60),
)
INFO = Gauge("llmops_node_model_info", "The model version this node serves", ["model", "version", "sha256"])

_TRACKED = ("/v1/chat/completions", "/v1/completions", "/v1/responses")


def answer_text(body: bytes) -> str | None:
    """The assistant's text of a chat completion response: plain JSON, or an SSE stream of deltas."""
    text = body.decode("utf-8", errors="replace").strip()
    if text.startswith("{"):
        try:
            return str(json.loads(text)["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            return None
    parts = []
    for line in text.splitlines():
        if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
            try:
                delta = json.loads(line[5:])["choices"][0].get("delta", {})
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                continue
            parts.append(delta.get("content") or "")
    return "".join(parts) if parts else None


def log_served(path: Path, request_id: str, tenant: str, version: str, request_body: bytes, answer: str | None
               ) -> None:
    """Append one served request to the serving log; a request it cannot parse is not logged (never fatal)."""
    try:
        messages = json.loads(request_body)["messages"]
    except (ValueError, KeyError, TypeError):
        return
    if answer is None or not request_id:
        return
    line = json.dumps({"request_id": request_id, "tenant": tenant, "model_version": version,
                       "messages": [{"role": m["role"], "content": m["content"]} for m in messages
                                    if isinstance(m, dict) and isinstance(m.get("content"), str)],
                       "response": answer, "timestamp": datetime.now(UTC).isoformat()})
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


def instrument(app: Any, served_name: str, version: str, sha256: str, own_metrics: bool = True) -> Any:
    """Add the version header, `/llmops/info`, the serving log and (`own_metrics`) /metrics with request metrics
    to the app the engine built. LMDeploy has its own /metrics (`lmdeploy:*`), so its wrapper passes False."""
    from fastapi import Request, Response

    if own_metrics:
        INFO.labels(served_name, version, sha256).set(1)

    @app.get("/llmops/info")
    def info() -> dict[str, str]:
        return {"served_name": served_name, "version": version, "sha256": sha256}

    log_path = Path(os.environ["LLMOPS_SERVING_LOG"]) if os.environ.get("LLMOPS_SERVING_LOG") else None
    tenant = os.environ.get("LLMOPS_TENANT", "default")
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)

    if own_metrics:
        @app.get("/metrics")
        def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.middleware("http")
    async def track(request: Request, call_next: Any) -> Any:
        route = request.url.path
        tracked = route in _TRACKED and own_metrics
        if tracked and request.headers.get(PROBE_HEADER):
            route = "probe"  # quality-probe traffic: kept out of the user traffic a canary is judged on
        start = time.perf_counter()
        logged = log_path is not None and request.url.path == "/v1/chat/completions" and request.method == "POST" \
            and not request.headers.get(PROBE_HEADER)
        request_body = await request.body() if logged else b""  # Starlette replays it to the app
        if tracked:
            IN_FLIGHT.inc()
        try:
            response = await call_next(request)
        except Exception:
            if tracked:
                IN_FLIGHT.dec()
                REQUESTS.labels(route, "500").inc()
            raise
        response.headers[VERSION_HEADER] = version
        status = str(response.status_code)

        def done(sent: list[bytes] | None) -> None:
            if tracked:
                IN_FLIGHT.dec()
                REQUESTS.labels(route, status).inc()
                LATENCY.labels(route).observe(time.perf_counter() - start)
            if logged and sent is not None and status == "200" and log_path is not None:
                log_served(log_path, request.headers.get("x-request-id", ""), tenant, version, request_body,
                           answer_text(b"".join(sent)))

        if tracked or logged:
            # Streaming bodies finish after this returns: count and log them when the body iterator ends.
            body = getattr(response, "body_iterator", None)
            if body is None:
                done([response.body] if hasattr(response, "body") else None)
            else:
                async def finishing() -> Any:
                    sent: list[bytes] = []
                    try:
                        async for chunk in body:
                            if logged:
                                sent.append(chunk if isinstance(chunk, bytes) else str(chunk).encode())
                            yield chunk
                    finally:
                        done(sent)

                response.body_iterator = finishing()
        return response

    return app


def verify_model(model_dir: Path, expected: str) -> None:
    """Refuse to serve weights whose content hash differs from the version the node was asked for."""
    from llmops.hashing import dir_sha256

    actual = dir_sha256(model_dir.resolve())
    if actual != expected:
        sys.exit(f"llmops node: model {model_dir} hashes to {actual}, expected {expected}; refusing to serve")


def verified_node_args(argv: list[str] | None, description: str | None) -> tuple[argparse.Namespace, list[str]]:
    """A node wrapper's own arguments (served name, version, hash) and the engine's (after `--`); exits before the
    engine loads if the weights do not hash to the version."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--served-name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--sha256", required=True)
    args, engine_args = parser.parse_known_args(argv)
    if engine_args and engine_args[0] == "--":
        engine_args = engine_args[1:]
    verify_model(Path(args.served_name), args.sha256)
    return args, engine_args


def main(argv: list[str] | None = None) -> None:
    args, serve_args = verified_node_args(argv, __doc__)

    import transformers.cli.serving.server as server_mod
    from transformers.cli.transformers import app as transformers_cli

    build_server = server_mod.build_server

    def build_instrumented(*a: Any, **kw: Any) -> Any:
        return instrument(build_server(*a, **kw), args.served_name, args.version, args.sha256)

    server_mod.build_server = build_instrumented
    sys.argv = ["transformers", "serve", *serve_args]
    transformers_cli()


if __name__ == "__main__":
    main()
