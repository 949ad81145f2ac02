"""The real local stack on free loopback ports in a temp dir. It fails loudly if a service cannot start."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from llmops import proc
from llmops.stackconfig import StackConfig, load_stack_config


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The repair test runs after the training pipeline (it repairs the champion that pipeline promoted, and its
    corrections must not reach that pipeline's training data); tests marked `stack_teardown` (they stop the
    shared stack) run after every other test."""
    items.sort(key=lambda item: (item.get_closest_marker("stack_teardown") is not None,
                                 item.nodeid.startswith("tests/integration/test_repair.py")))


def free_ports_config(state_dir: Path, **extra: object) -> dict[str, object]:
    """A stack config whose every port (SeaweedFS's internal block included) is free now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000, 100)
        ports = {"s3": base, "mlflow": base + 10, "prefect": base + 11, "prometheus": base + 12,
                 "alertmanager": base + 13, "gateway": base + 14, "haproxy_stats": base + 15,
                 "receiver": base + 16, "node_base": base + 20}
        needed = [base + i for i in range(8)] + [base + i for i in range(10, 17)] + [base + i for i in range(20, 26)]
        if not any(proc.port_owner(p) for p in needed):
            return {"state_dir": str(state_dir), "ports": ports, **extra}
    raise RuntimeError("no free block of ports found")


def write_config(tmp: Path, data: dict[str, object]) -> StackConfig:
    path = tmp / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_stack_config(path)


def processes_under(state_dir: Path) -> list[str]:
    """Live processes whose command line mentions the state dir (every service and node does)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if str(state_dir) in cmd or str(state_dir) in (p.info["cwd"] or ""):
                found.append(f"{p.pid}: {cmd[:120]}")
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from infra.stack.launcher import Stack

    tmp = tmp_path_factory.mktemp("stack")
    # The training and rollout tests run on one node with scaling quiet (thresholds out of reach, no standby),
    # so no scaling action changes the pool under them; tests/integration/test_scaling.py has its own stack.
    quiet = {"min_replicas": 1, "max_replicas": 2, "warm_standby": 0, "high_latency_s": 600, "backlog": 10000,
             "target_in_flight_per_node": 1000, "budget_per_hour": 10}
    cfg = write_config(tmp, free_ports_config(tmp / "state", scaling=quiet))
    s = Stack(cfg)
    try:
        s.up()  # raises (the test errors) if any service cannot start: never a skip
        yield s
    finally:
        s.down()
