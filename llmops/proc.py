"""Processes started by llmops: launched in their own session, recorded, stopped exactly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from llmops.errors import ServiceError


@dataclass(frozen=True)
class ProcRecord:
    """What identifies a started process: pid plus its start time, so a reused pid is never killed."""

    pid: int
    create_time: float
    argv: tuple[str, ...]
    log: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> ProcRecord:
        argv = d["argv"]
        assert isinstance(argv, (list, tuple))
        return cls(int(str(d["pid"])), float(str(d["create_time"])), tuple(str(a) for a in argv), str(d["log"]))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None, nice: int = 0, die_with_parent: bool = False) -> ProcRecord:
    """Start `argv` in a new session (its own process group), output appended to `log`, at CPU priority `nice`
    (set right after the start, before it spawns anything; threads and children inherit it). `die_with_parent`:
    it gets SIGTERM when the starting process dies, even by SIGKILL (a node owned by a flow run outlives no run)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} start: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
                                preexec_fn=_die_with_parent if die_with_parent else None)
    if nice:
        os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
    return ProcRecord(proc.pid, psutil.Process(proc.pid).create_time(), tuple(argv), str(log))


def _process(rec: ProcRecord) -> psutil.Process | None:
    try:
        p = psutil.Process(rec.pid)
        if abs(p.create_time() - rec.create_time) > 0.5 or p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.Error:
        return None


def renice(rec: ProcRecord, nice: int) -> bool:
    """Set the CPU priority of every thread of the recorded process's group (it was started in its own session,
    so the group is its own); False if it is gone. PRIO_PROCESS would change one thread only: Linux keeps a nice
    value per thread, and an engine runs several."""
    if _process(rec) is None:
        return False
    try:
        os.setpriority(os.PRIO_PGRP, rec.pid, nice)
    except ProcessLookupError:
        return False
    return True


def is_alive(rec: ProcRecord) -> bool:
    """True while the recorded process (same pid and start time) runs."""
    return _process(rec) is not None


def tree_rss(rec: ProcRecord) -> int:
    """Resident memory in bytes of the process and its children."""
    p = _process(rec)
    if p is None:
        return 0
    total = 0
    for q in [p, *p.children(recursive=True)]:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def stop(rec: ProcRecord, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Stop the process and everything in its session (see `stop_all`)."""
    stop_all([rec], timeout_s, sig)


def stop_all(recs: list[ProcRecord], timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Stop several processes and their sessions at once: `sig` to each group, `sig` again half-way
    (a Prefect worker ignores the first SIGTERM), SIGKILL to whatever is left after `timeout_s`."""
    members: list[psutil.Process] = []
    for rec in recs:
        p = _process(rec)
        if p is None:
            continue
        members += [p, *p.children(recursive=True)]
        try:
            os.killpg(rec.pid, sig)
        except ProcessLookupError:
            pass
    alive = _wait_gone(members, timeout_s / 2)
    for q in alive:
        _signal(q, sig)
    alive = _wait_gone(alive, timeout_s / 2)
    for q in alive:
        _signal(q, signal.SIGKILL)
    _wait_gone(alive, 5)


def records_with_env(env: Mapping[str, str], having: str = "") -> list[ProcRecord]:
    """This user's processes whose environment holds every item of `env` (and the variable `having`): how the
    flow-run processes a Prefect worker started, each in a session of its own, are found after the worker is gone
    (one it started after `stop_all` took its snapshot of the worker's children would otherwise live on)."""
    found: list[ProcRecord] = []
    for p in psutil.process_iter(["uids", "create_time", "cmdline"]):
        try:
            if p.info["uids"] is None or p.info["uids"].real != os.getuid() or p.pid == os.getpid():
                continue
            e = p.environ()
        except psutil.Error:
            continue
        if all(e.get(k) == v for k, v in env.items()) and (not having or having in e):
            found.append(ProcRecord(p.pid, p.info["create_time"], tuple(p.info["cmdline"] or ()), ""))
    return found


def _gone(p: psutil.Process) -> bool:
    try:
        if p.status() == psutil.STATUS_ZOMBIE:
            # Not our child: its parent (or init) reaps it; try, in case it is ours.
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(p.pid, os.WNOHANG)
            return True
        return not p.is_running()
    except psutil.Error:
        return True


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Poll every 50 ms until all of `procs` have exited (zombies count as exited); returns the rest."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if not _gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not _gone(p)]
    return alive


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass


def port_owner(port: int) -> str:
    """Describe who listens on `port` (pid and command), or '' when it is free."""
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN:
                if c.pid:
                    try:
                        return f"pid {c.pid} ({' '.join(psutil.Process(c.pid).cmdline()[:3])})"
                    except psutil.Error:
                        return f"pid {c.pid}"
                return "another process"
    except psutil.Error:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Servers bind with SO_REUSEADDR, so connections in TIME_WAIT do not make a port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return "another process"
    return ""


def ensure_port_free(port: int, service: str) -> None:
    """Raise a ServiceError naming the port, the service and the owner if `port` is taken."""
    owner = port_owner(port)
    if owner:
        raise ServiceError(f"port {port} needed by {service} is in use by {owner}",
                           f"stop that process or give {service} another port in the stack config (ports:)")


def free_port(start: int, taken: set[int] | None = None, limit: int = 500) -> int:
    """First port >= `start` nobody listens on and not in `taken`."""
    taken = taken or set()
    for port in range(start, start + limit):
        if port not in taken and not port_owner(port):
            return port
    raise ServiceError(f"no free port in {start}-{start + limit}", "free some ports or change ports.node_base")


def tail(path: str | Path, lines: int = 30) -> str:
    """Last `lines` lines of a log file ('' if it does not exist)."""
    p = Path(path)
    if not p.is_file():
        return ""
    data = p.read_bytes()[-65536:].decode(errors="replace").splitlines()
    return "\n".join(data[-lines:])
