"""Pool state persisted in the state directory, so a crashed flow can resume and `down` stops every node."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

from pydantic import BaseModel

from llmops.errors import ServiceError
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
    gpu: int | None = None  # the GPU it holds (serving.gpus; llmops/pool/gpus.py)

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


class PoolConflict(ServiceError):
    """Another flow changed the pool between this one's read and its write; nothing of this change was written."""


class SqlPoolStore:
    """The pool in a database table every host and flow reaches (PostgreSQL in production; SQLite on one machine),
    with optimistic concurrency: a write carries the version it read and succeeds only if that is still the
    current one (`UPDATE ... WHERE version = :read`). Two flows that both read version 7 and both decide to start a
    node cannot both record it: the second write fails with `PoolConflict` and its node is never started (the
    pool records a node before starting it). Same interface as the file store."""

    TABLE = "llmops_pool_state"

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.url = url
        try:
            self.engine = sa.create_engine(url, future=True)
        except (sa.exc.ArgumentError, ImportError) as err:
            raise ServiceError(f"pool_database {url!r} is not a usable SQLAlchemy URL: {err}",
                               "use e.g. postgresql://user:pass@host/db or sqlite:////abs/path/pool.db, or remove "
                               "pool_database to keep the pool in the state dir") from None
        self.table = sa.Table(self.TABLE, sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                              sa.Column("version", sa.Integer, nullable=False),
                              sa.Column("body", sa.Text, nullable=False))
        try:
            self.table.metadata.create_all(self.engine)
        except sa.exc.DBAPIError:  # another process created it after the check (PostgreSQL: a unique violation)
            if not sa.inspect(self.engine).has_table(self.TABLE):
                raise
        with self.engine.begin() as c:
            if c.execute(sa.select(self.table.c.id).where(self.table.c.id == 1)).first() is None:
                try:
                    c.execute(self.table.insert().values(id=1, version=0, body=PoolState().model_dump_json()))
                except sa.exc.IntegrityError:
                    pass  # another process created it first

    def read_versioned(self) -> tuple[int, PoolState]:
        import sqlalchemy as sa

        with self.engine.connect() as c:
            row = c.execute(sa.select(self.table.c.version, self.table.c.body).where(self.table.c.id == 1)).one()
        return int(row.version), PoolState.model_validate_json(row.body)

    def read(self) -> PoolState:
        return self.read_versioned()[1]

    @contextmanager
    def update(self) -> Iterator[PoolState]:
        """Yield the state for modification; written when the block ends, if no other write came in between."""
        import sqlalchemy as sa

        version, state = self.read_versioned()
        yield state
        with self.engine.begin() as c:
            done = c.execute(self.table.update().where(sa.and_(self.table.c.id == 1, self.table.c.version == version))
                             .values(version=version + 1, body=state.model_dump_json())).rowcount
        if done != 1:
            raise PoolConflict(f"the pool changed while this flow changed it (it read version {version}); "
                               "this change was not written", "run the action again: it reads the new state")


def pool_store(state_dir: Path, database_url: str | None = None) -> PoolStore | SqlPoolStore:
    """The stack's pool store: the database named by `pool_database` when set, else the state dir's file."""
    return SqlPoolStore(database_url) if database_url else PoolStore(state_dir / "pool" / "pool.json")
