"""Node CPU limits: the cgroup files written for v1 and v2 (on a fake tree), and on this machine a busy process
held to its quota; where the cgroup filesystem is not writable, the error names the fix."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from llmops.cgroups import cpu_quota, limit_cpu, remove_group
from llmops.errors import ServiceError


def test_v1_tree_gets_a_cfs_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    path = limit_cpu(4242, 0.45, "llmops-n1", root=tmp_path)
    assert path == tmp_path / "cpu" / "llmops-n1"
    assert (path / "cpu.cfs_quota_us").read_text() == "45000" and (path / "cgroup.procs").read_text() == "4242"
    assert cpu_quota("llmops-n1", root=tmp_path) == pytest.approx(0.45)


def test_v2_tree_enables_the_controller_and_writes_cpu_max(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io memory")
    (tmp_path / "cgroup.subtree_control").write_text("")
    path = limit_cpu(7, 1.5, "llmops-n2", root=tmp_path)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"
    assert (path / "cpu.max").read_text() == "150000 100000" and cpu_quota("llmops-n2", root=tmp_path) == 1.5
    with pytest.raises(ValueError):
        limit_cpu(7, 1, "a/b", root=tmp_path)


def test_a_busy_process_is_held_to_its_quota_here() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    group = f"llmops-test-{uuid.uuid4().hex[:8]}"
    try:
        try:
            limit_cpu(proc.pid, 0.2, group)
        except ServiceError as err:  # not root / read-only cgroups: the error says what to do
            assert "serving.cpu_limit: 0" in err.fix and str(proc.pid) not in err.problem
            return
        p = psutil.Process(proc.pid)
        t0, c0 = time.monotonic(), sum(p.cpu_times()[:2])
        time.sleep(1.5)
        used = (sum(p.cpu_times()[:2]) - c0) / (time.monotonic() - t0)
        assert used < 0.3, f"a process limited to 0.2 cores used {used:.2f}"
    finally:
        proc.kill()
        proc.wait()
        time.sleep(0.1)
        remove_group(group)
