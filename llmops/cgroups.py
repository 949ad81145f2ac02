"""CPU limits for node processes: each node in its own CPU cgroup with a CFS quota, as a Kubernetes CPU limit.

On a host the nodes share (the local stack), a quota makes each node a fixed slice of the machine, so that adding a
node adds capacity instead of splitting the same cores (measured on 2 cores without it: four single-thread nodes
served worse than two). cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us`) are both handled; it needs a writable
cgroup filesystem (root, or a delegated subtree). Groups are flat: `<root>[/cpu]/<group>`.
"""

from __future__ import annotations

from pathlib import Path

from llmops.errors import ServiceError

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def group_dir(group: str, root: Path = ROOT) -> tuple[Path, bool]:
    """The group's directory and whether the hierarchy is cgroup v2."""
    v2 = (root / "cgroup.controllers").is_file()
    return (root / group if v2 else root / "cpu" / group), v2


def limit_cpu(pid: int, cores: float, group: str, root: Path = ROOT) -> Path:
    """Move `pid` (and so the children it starts later) into cgroup `group`, limited to `cores` CPUs."""
    if "/" in group or not group:
        raise ValueError(f"cgroup name {group!r} must be one path component")
    path, v2 = group_dir(group, root)
    quota = max(int(cores * PERIOD_US), 1000)
    try:
        path.mkdir(exist_ok=True)
        if v2:
            ctl = root / "cgroup.subtree_control"
            if "cpu" not in ctl.read_text().split():
                ctl.write_text("+cpu")
            (path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(quota))
        (path / "cgroup.procs").write_text(str(pid))
    except OSError as err:
        raise ServiceError(f"cannot limit node CPU to {cores:g} cores in {path}: {err}",
                           "run the stack as root (or with a delegated cgroup subtree), or set "
                           "serving.cpu_limit: 0") from None
    return path


def cpu_quota(group: str, root: Path = ROOT) -> float | None:
    """The group's limit in cores (None: no such group or no limit)."""
    path, v2 = group_dir(group, root)
    try:
        if v2:
            quota, period = (path / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        q = int((path / "cpu.cfs_quota_us").read_text())
        return None if q < 0 else q / int((path / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def remove_group(group: str, root: Path = ROOT) -> None:
    """Remove a stopped node's (empty) group; one still holding a process is left alone."""
    path, _ = group_dir(group, root)
    try:
        path.rmdir()
    except OSError:
        pass
