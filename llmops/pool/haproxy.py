"""HAProxy runtime API client (stats socket, `level admin`): add, weigh, drain and remove servers live."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

from llmops.errors import ServiceError


@dataclass(frozen=True)
class ServerState:
    """One server of a backend as HAProxy sees it now."""

    backend: str
    name: str
    address: str
    port: int
    admin_state: int  # bit flags: 0 = ready, 0x1/0x2 = maintenance, 0x8 = drain
    operational: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    weight: int
    check_status: int

    @property
    def in_rotation(self) -> bool:
        return self.admin_state == 0 and self.operational == 2 and self.weight > 0


class HAProxyRuntime:
    """Talks to HAProxy over its admin stats socket.

    Args:
        socket_path: the `stats socket` path from haproxy.cfg.
        timeout_s: per-command socket timeout.
    """

    def __init__(self, socket_path: Path, timeout_s: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def command(self, cmd: str) -> str:
        """Send one runtime command; raise ServiceError on a connection failure or an error reply."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout_s)
                s.connect(str(self.socket_path))
                s.sendall(cmd.encode() + b"\n")
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
        except OSError as err:
            raise ServiceError(f"HAProxy runtime API at {self.socket_path} unreachable: {err}",
                               "is the gateway running? `llmops stack status`") from None
        reply = b"".join(chunks).decode(errors="replace").strip()
        lowered = reply.lower()
        if lowered.startswith(("unknown command", "no such", "permission denied")) or "error" in lowered[:80]:
            raise ServiceError(f"HAProxy refused `{cmd}`: {reply}", "check the backend and server names")
        return reply

    def servers(self, backend: str) -> list[ServerState]:
        """Current servers of `backend` (parsed from `show servers state`)."""
        out = self.command(f"show servers state {backend}")
        lines = [ln for ln in out.splitlines() if ln and not ln.startswith("#") and not ln.startswith("1")]
        header = next((ln for ln in out.splitlines() if ln.startswith("# be_id")), "")
        cols = header.lstrip("# ").split()
        result = []
        for ln in lines:
            f = dict(zip(cols, ln.split(), strict=False))
            if "srv_name" not in f:
                continue
            result.append(ServerState(
                backend=f["be_name"], name=f["srv_name"], address=f["srv_addr"], port=int(f["srv_port"]),
                admin_state=int(f["srv_admin_state"]), operational=int(f["srv_op_state"]),
                weight=int(f["srv_uweight"]), check_status=int(f["srv_check_status"]),
            ))
        return result

    def add_server(self, backend: str, name: str, address: str, port: int, weight: int = 100,
                   check_inter_ms: int = 1000, maxconn: int = 0) -> None:
        """Add a dynamic server with HTTP health checks, then enable its checks and traffic. `maxconn` > 0 caps
        the requests it serves at once; HAProxy queues the rest in the backend (the `Backlog` signal)."""
        limit = f" maxconn {maxconn}" if maxconn > 0 else ""
        self.command(f"add server {backend}/{name} {address}:{port} weight {weight}{limit} "
                     f"check inter {check_inter_ms} fall 2 rise 1")
        self.command(f"enable health {backend}/{name}")
        self.command(f"enable server {backend}/{name}")

    def set_weight(self, backend: str, name: str, weight: int) -> None:
        self.command(f"set server {backend}/{name} weight {weight}")

    def set_state(self, backend: str, name: str, state: str) -> None:
        """state: ready | drain | maint."""
        if state not in ("ready", "drain", "maint"):
            raise ValueError(f"state must be ready, drain or maint, not {state!r}")
        self.command(f"set server {backend}/{name} state {state}")

    def current_sessions(self, backend: str, name: str) -> int:
        """Streams in flight on one server (from `show stat`)."""
        out = self.command("show stat")
        header = out.splitlines()[0].lstrip("# ").split(",")
        for ln in out.splitlines()[1:]:
            row = dict(zip(header, ln.split(","), strict=False))
            if row.get("pxname") == backend and row.get("svname") == name:
                return int(row.get("scur") or 0)
        raise ServiceError(f"server {backend}/{name} not found in HAProxy", "list them with `llmops stack status`")

    def remove_server(self, backend: str, name: str, drain_timeout_s: float = 60.0) -> None:
        """Drain, wait for zero streams in flight (bounded), put in maintenance and delete."""
        self.set_state(backend, name, "drain")
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline and self.current_sessions(backend, name) > 0:
            time.sleep(0.2)
        self.set_state(backend, name, "maint")
        self.command(f"shutdown sessions server {backend}/{name}")
        self.command(f"del server {backend}/{name}")
