"""Prefect server REST client for what the CLI and demo need (the core never imports prefect itself)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from llmops.errors import ServiceError

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class FlowRunState:
    id: str
    name: str
    state: str
    message: str


class PrefectApi:
    """Args: api_url (e.g. http://127.0.0.1:4200/api), ui_url (for links)."""

    def __init__(self, api_url: str, ui_url: str) -> None:
        self.api_url, self.ui_url = api_url.rstrip("/"), ui_url.rstrip("/")
        self.http = httpx.Client(timeout=15)

    def _request(self, method: str, path: str, **kw: object) -> httpx.Response:
        """One API call; 503 is the server's "retry me" (e.g. SQLite busy), so it is retried with backoff."""
        delay = 0.5
        for attempt in range(6):
            try:
                r = self.http.request(method, f"{self.api_url}{path}", **kw)  # type: ignore[arg-type]
            except httpx.TransportError:
                if attempt == 5:
                    raise ServiceError(f"Prefect API at {self.api_url} unreachable",
                                       "is the stack up? `llmops stack status`") from None
            else:
                if r.status_code != 503:
                    return r
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        return r

    def run_link(self, flow_run_id: str) -> str:
        return f"{self.ui_url}/runs/flow-run/{flow_run_id}"

    def run_deployment(self, flow_name: str, deployment: str, parameters: dict[str, object] | None = None) -> str:
        """Create a flow run of `flow_name/deployment`; returns its id."""
        r = self._request("GET", f"/deployments/name/{flow_name}/{deployment}")
        if r.status_code == 404:
            raise ServiceError(f"deployment {flow_name}/{deployment} not found on {self.api_url}",
                               "`llmops stack up` registers the deployments of prefect.yaml")
        r.raise_for_status()
        dep_id = r.json()["id"]
        r = self._request("POST", f"/deployments/{dep_id}/create_flow_run", json={"parameters": parameters or {}})
        r.raise_for_status()
        return str(r.json()["id"])

    def state(self, flow_run_id: str) -> FlowRunState:
        r = self._request("GET", f"/flow_runs/{flow_run_id}")
        r.raise_for_status()
        d = r.json()
        st = d.get("state") or {}
        return FlowRunState(d["id"], d["name"], st.get("type", "PENDING"), st.get("message") or "")

    def wait(self, flow_run_id: str, timeout_s: float = 300) -> FlowRunState:
        """Poll until the run is terminal; raise ServiceError on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = self.state(flow_run_id)
            if st.state in TERMINAL:
                return st
            time.sleep(0.5)
        raise ServiceError(f"flow run {flow_run_id} not finished after {timeout_s:.0f}s",
                           f"is the worker running? see {self.run_link(flow_run_id)}")
