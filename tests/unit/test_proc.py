"""Process control: a stopped service leaves no process behind; busy ports are named."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from llmops import proc
from llmops.errors import ServiceError

CHILD = "import subprocess,time; subprocess.Popen(['sleep','60']); time.sleep(60)"
STUBBORN = ("import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
            "time.sleep(60)")


def test_stop_kills_the_process_and_its_children(tmp_path: Path) -> None:
    rec = proc.spawn([sys.executable, "-c", CHILD], tmp_path / "a.log")
    time.sleep(0.5)
    children = psutil.Process(rec.pid).children(recursive=True)
    assert children, "the child was not started"
    proc.stop(rec, timeout_s=4)
    assert not proc.is_alive(rec)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    rec = proc.spawn([sys.executable, "-c", STUBBORN], tmp_path / "b.log")
    deadline = time.monotonic() + 10
    while "up" not in proc.tail(rec.log) and time.monotonic() < deadline:
        time.sleep(0.05)
    t = time.monotonic()
    proc.stop(rec, timeout_s=2)
    assert not proc.is_alive(rec)
    assert time.monotonic() - t < 8


def test_a_reused_pid_is_not_ours(tmp_path: Path) -> None:
    rec = proc.spawn([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "c.log")
    fake = proc.ProcRecord(rec.pid, rec.create_time - 100, rec.argv, rec.log)
    assert proc.is_alive(rec) and not proc.is_alive(fake)
    proc.stop(fake)  # must not touch the real process
    assert proc.is_alive(rec)
    proc.stop(rec)


def test_busy_port_error_names_port_service_and_owner() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServiceError) as exc:
            proc.ensure_port_free(port, "mlflow")
        msg = str(exc.value)
        assert f"port {port}" in msg and "mlflow" in msg and "pid" in msg and "fix:" in msg
        assert proc.free_port(port) != port
    proc.ensure_port_free(port, "mlflow")


def test_log_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("\n".join(str(i) for i in range(100)))
    assert proc.tail(log, 3) == "97\n98\n99"
    assert proc.tail(tmp_path / "missing.log") == ""


THREADS = ("import subprocess,threading,time; subprocess.Popen(['sleep','60']); "
           "[threading.Thread(target=time.sleep, args=(60,), daemon=True).start() for _ in range(3)]; "
           "print('up', flush=True); time.sleep(60)")


def _nice_of(pid: int) -> set[int]:
    """The nice value of every thread of `pid` (field 19 of /proc/<pid>/task/<tid>/stat)."""
    out = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        out.add(int(stat.read_text().rsplit(")", 1)[1].split()[16]))
    return out


def test_renice_lowers_every_thread_and_child_of_a_running_node(tmp_path: Path) -> None:
    """A node starts at normal priority and is reniced once it serves: every thread (Linux keeps nice per thread)
    and its children, not only the main thread."""
    rec = proc.spawn([sys.executable, "-c", THREADS], tmp_path / "t.log")
    try:
        deadline = time.monotonic() + 10
        while "up" not in Path(rec.log).read_text().splitlines() and time.monotonic() < deadline:  # not the header
            time.sleep(0.1)
        assert _nice_of(rec.pid) == {0}
        assert len(list(Path(f"/proc/{rec.pid}/task").iterdir())) >= 4
        assert proc.renice(rec, 7)
        assert _nice_of(rec.pid) == {7}
        (child,) = psutil.Process(rec.pid).children()
        assert child.nice() == 7
    finally:
        proc.stop(rec, timeout_s=4)
    assert not proc.renice(rec, 3)  # gone: nothing to renice


def test_flow_run_processes_are_found_by_their_environment(tmp_path: Path) -> None:
    """What `stack down` sweeps after stopping the worker: processes with this stack's PREFECT_HOME and a flow-run
    id; not the server (same PREFECT_HOME, no flow run) and not another stack's flow run."""
    import os

    home = str(tmp_path / "prefect")
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT")}
    run = proc.spawn(["sleep", "60"], tmp_path / "r.log", env={**base, "PREFECT_HOME": home,
                                                                 "PREFECT__FLOW_RUN_ID": "r1"})
    server = proc.spawn(["sleep", "60"], tmp_path / "s.log", env={**base, "PREFECT_HOME": home})
    other = proc.spawn(["sleep", "60"], tmp_path / "o.log", env={**base, "PREFECT_HOME": home + "-other",
                                                                   "PREFECT__FLOW_RUN_ID": "r2"})
    try:
        found = proc.records_with_env({"PREFECT_HOME": home}, "PREFECT__FLOW_RUN_ID")
        assert [r.pid for r in found] == [run.pid]
        proc.stop_all(found, timeout_s=2)
        assert not proc.is_alive(run) and proc.is_alive(server) and proc.is_alive(other)
    finally:
        proc.stop_all([run, server, other], timeout_s=2)
