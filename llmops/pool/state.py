"""Pool state persisted in the state directory, so a crashed flow can resume and `down` stops every node."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

from pydantic import BaseModel

from llmops.proc import ProcRecord


class NodeStatus(str, Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class NodeRecord(BaseModel):
    """One serving node: where it listens, what it serves, which process it is."""

    name: str
    model: str
    engine: str
    version: str
    sha256: str
    host: str
    port: int
    weight: int = 100
    status: NodeStatus = NodeStatus.STARTING
    proc: dict[str, object] | None = None
    standby: bool = False  # warm standby: started, health-checked, weight 0; promoted first on scale-out
    started_at: float | None = None  # wall-clock start (node-seconds and cost are counted from it)
    remote_run: str | None = None  # a node on another host: its `serve-node` flow run (llmops/pool/remote.py)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def process(self) -> ProcRecord | None:
        return ProcRecord.from_json(self.proc) if self.proc else None


class ScalingState(BaseModel):
    """What the scaling flows remember between runs (per model)."""

    last_scale_out_at: float | None = None
    low_since: float | None = None
    retired_node_seconds: float = 0.0  # node-seconds of nodes already stopped
    last_decision: dict[str, object] | None = None
    actions: list[dict[str, object]] = []  # the most recent scaling actions, newest last (bounded)


class PoolState(BaseModel):
    nodes: dict[str, NodeRecord] = {}
    next_id: int = 1
    scaling: dict[str, ScalingState] = {}  # by model name

    def scaling_of(self, model: str) -> ScalingState:
        return self.scaling.setdefault(model, ScalingState())

    def serving_and_standby(self, model: str) -> tuple[int, int]:
        """How many of a model's nodes serve and how many are warm standby."""
        mine = [n for n in self.nodes.values() if n.model == model]
        standby = sum(1 for n in mine if n.standby)
        return len(mine) - standby, standby

    def node_seconds(self, model: str, now: float) -> float:
        """Node-seconds spent by a model's pool so far: stopped nodes plus the running ones up to `now`."""
        live = sum(now - n.started_at for n in self.nodes.values() if n.model == model and n.started_at)
        return self.scaling_of(model).retired_node_seconds + max(live, 0.0)


class PoolStore:
    """JSON file of the pool, read-modify-written under an exclusive file lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> PoolState:
        if not self.path.is_file():
            return PoolState()
        return PoolState.model_validate(json.loads(self.path.read_text()))

    @contextmanager
    def update(self) -> Iterator[PoolState]:
        """Yield the state for modification; it is written back atomically when the block ends."""
        with (self.path.with_suffix(".lock")).open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read()
            yield state
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(state.model_dump_json(indent=2))
            tmp.replace(self.path)
