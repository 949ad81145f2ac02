"""Prefect server REST client for what the CLI and demo need (the core never imports prefect itself)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

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

    def request(self, method: str, path: str, **kw: object) -> httpx.Response:
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

    def json(self, method: str, path: str, **kw: object) -> Any:
        """`request`, raising on any status >= 300 (after the 503 retries), and the body as JSON."""
        r = self.request(method, path, **kw)
        if r.status_code >= 300:
            raise ServiceError(f"Prefect API {method} {path}: HTTP {r.status_code} {r.text[:300]}",
                               "see the Prefect server's log (`llmops stack logs prefect`)")
        return r.json() if r.content else None

    def deployment_id(self, flow_name: str, deployment: str) -> str:
        r = self.request("GET", f"/deployments/name/{flow_name}/{deployment}")
        if r.status_code == 404:
            raise ServiceError(f"deployment {flow_name}/{deployment} not found on {self.api_url}",
                               "`llmops stack up` registers the deployments of prefect.yaml")
        r.raise_for_status()
        return str(r.json()["id"])

    def set_paused(self, flow_name: str, deployment: str, paused: bool) -> int:
        """Pause or resume a deployment: its schedules (Prefect's pause) and its event triggers. Prefect's pause
        only stops schedules; the automations its triggers became keep creating runs, so they are disabled too
        (resuming enables them again; so does re-registering the deployments). Returns how many automations
        were switched."""
        dep = self.deployment_id(flow_name, deployment)
        self.json("POST", f"/deployments/{dep}/{'pause' if paused else 'resume'}_deployment")
        autos = self.json("GET", f"/automations/related-to/prefect.deployment.{dep}") or []
        for a in autos:
            self.json("PATCH", f"/automations/{a['id']}", json={"enabled": not paused})
        return len(autos)

    def triggers_enabled(self, flow_name: str, deployment: str) -> list[bool]:
        """Whether each automation of the deployment's triggers is enabled."""
        dep = self.deployment_id(flow_name, deployment)
        return [bool(a.get("enabled")) for a in self.json("GET", f"/automations/related-to/prefect.deployment.{dep}")
                or []]

    def flow_runs(self, body: dict[str, object]) -> list[dict[str, object]]:
        """`POST /flow_runs/filter` with `body` (Prefect's filter schema)."""
        return list(self.json("POST", "/flow_runs/filter", json=body))

    def events(self, body: dict[str, object]) -> list[dict[str, object]]:
        """`POST /events/filter` with `body`; the first page of events."""
        return list(self.json("POST", "/events/filter", json=body).get("events", []))

    def run_link(self, flow_run_id: str) -> str:
        return f"{self.ui_url}/runs/flow-run/{flow_run_id}"

    def run_deployment(self, flow_name: str, deployment: str, parameters: dict[str, object] | None = None) -> str:
        """Create a flow run of `flow_name/deployment`; returns its id."""
        dep_id = self.deployment_id(flow_name, deployment)
        r = self.request("POST", f"/deployments/{dep_id}/create_flow_run", json={"parameters": parameters or {}})
        r.raise_for_status()
        return str(r.json()["id"])

    def state(self, flow_run_id: str) -> FlowRunState:
        r = self.request("GET", f"/flow_runs/{flow_run_id}")
        r.raise_for_status()
        d = r.json()
        st = d.get("state") or {}
        return FlowRunState(d["id"], d["name"], st.get("type", "PENDING"), st.get("message") or "")

    def run_state(self, flow_run_id: str) -> tuple[str, str]:
        """(state type, message) of a flow run."""
        st = self.state(flow_run_id)
        return st.state, st.message

    def cancel(self, flow_run_id: str) -> None:
        """Ask the run's worker to stop it (state CANCELLING; the worker kills the run's process)."""
        r = self.request("POST", f"/flow_runs/{flow_run_id}/set_state",
                         json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True})
        r.raise_for_status()

    def variable(self, name: str) -> Any:
        """A Prefect variable's value, or None if there is no such variable."""
        r = self.request("GET", f"/variables/name/{name}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json().get("value")

    def delete_variable(self, name: str) -> None:
        r = self.request("DELETE", f"/variables/name/{name}")
        if r.status_code not in (204, 404):
            r.raise_for_status()

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
