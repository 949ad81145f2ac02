"""The pool in a database table (llmops/pool/state.py SqlPoolStore) on SQLite: optimistic concurrency means two
flows that read the same version cannot both write, so a node is never recorded (and so never started) twice."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from llmops.errors import ServiceError
from llmops.pool.state import NodeRecord, PoolConflict, PoolStore, SqlPoolStore, pool_store


def rec(name: str) -> NodeRecord:
    return NodeRecord(name=name, model="m", engine="transformers", version="1", sha256="s", host="10.0.0.2",
                      port=8100)


def errors_of_threads(fn: Callable[[], None], n: int) -> list[BaseException]:
    """Run `fn` in `n` threads at once; what each raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - the test reports it
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return errors


def test_updates_are_written_and_versioned(tmp_path: Path) -> None:
    store = SqlPoolStore(f"sqlite:///{tmp_path / 'pool.db'}")
    assert store.read_versioned()[0] == 0 and store.read().nodes == {}
    with store.update() as st:
        st.nodes["node1"] = rec("node1")
        st.next_id = 2
    version, state = SqlPoolStore(f"sqlite:///{tmp_path / 'pool.db'}").read_versioned()  # another process
    assert version == 1 and set(state.nodes) == {"node1"} and state.next_id == 2


def test_a_write_based_on_a_stale_read_fails_and_writes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    a, b = SqlPoolStore(url), SqlPoolStore(url)
    with pytest.raises(PoolConflict, match="read version 0"), a.update() as st:
        st.nodes["node1"] = rec("node1")
        with b.update() as other:  # another flow records its node in between
            other.nodes["node9"] = rec("node9")
    version, state = a.read_versioned()
    assert version == 1 and set(state.nodes) == {"node9"}


def test_two_flows_racing_to_record_the_next_node_record_it_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    SqlPoolStore(url)
    both_read = threading.Barrier(2)
    outcomes: list[str] = []

    def flow(who: str) -> None:
        store = SqlPoolStore(url)
        try:
            with store.update() as st:
                name = f"node{st.next_id}"
                st.nodes[name] = rec(name).model_copy(update={"host": who})
                st.next_id += 1
                both_read.wait(timeout=10)  # both decided on the same node before either writes
            outcomes.append(f"{who} recorded {name}")
        except PoolConflict:
            outcomes.append(f"{who} conflict")

    threads = [threading.Thread(target=flow, args=(w,)) for w in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    state = SqlPoolStore(url).read()
    assert sorted(o.split()[1] for o in outcomes) == ["conflict", "recorded"], outcomes
    assert list(state.nodes) == ["node1"] and state.next_id == 2


def test_the_pool_starts_no_node_when_its_record_keeps_conflicting(tmp_path: Path) -> None:
    from llmops.pool.manager import Pool
    from llmops.registry import ModelVersionRef

    class Registry:
        def resolve(self, name: str, version: str) -> ModelVersionRef:
            return ModelVersionRef(name=name, version="1", sha256="s", source="x")

    started: list[str] = []

    class Launcher:
        pulls_locally = False

        def start(self, n: NodeRecord, model_dir: Path | None) -> NodeRecord:
            started.append(n.name)
            return n

    url = f"sqlite:///{tmp_path / 'pool.db'}"
    store, other = SqlPoolStore(url), SqlPoolStore(url)
    stale = store.read_versioned()
    with other.update() as st:  # another flow wrote since this one read
        st.next_id = 5
    store.read_versioned = lambda: stale  # type: ignore[method-assign]
    none: object = None
    pool = Pool("m", "llm_m", Registry(), none, Launcher(), none, store, tmp_path / "t.json")  # type: ignore[arg-type]
    with pytest.raises(PoolConflict):
        pool.add_node("champion")
    assert started == []


def test_nodes_started_side_by_side_are_all_recorded_under_their_own_names(tmp_path: Path) -> None:
    """`stack up` starts a pool's missing nodes at once: their bookkeeping writes (record, ready, serving) meet in
    the SQL store; a conflicting one is applied again to the new state instead of failing the start."""
    from llmops.pool.manager import Pool
    from llmops.registry import ModelVersionRef

    class Registry:
        def resolve(self, name: str, version: str) -> ModelVersionRef:
            return ModelVersionRef(name=name, version="1", sha256="s", source="x")

    all_in = threading.Barrier(3)

    class Launcher:
        pulls_locally = False

        def start(self, n: NodeRecord, model_dir: Path | None) -> NodeRecord:
            all_in.wait(timeout=10)  # every start recorded its node before any goes on
            return n

        def wait_ready(self, n: NodeRecord, timeout_s: float) -> NodeRecord:
            return n

    class Lb:
        def add_server(self, *args: object, **kwargs: object) -> None:
            pass

    url = f"sqlite:///{tmp_path / 'pool.db'}"
    none: object = None

    def start() -> None:
        Pool("m", "llm_m", Registry(), none, Launcher(), Lb(), SqlPoolStore(url),  # type: ignore[arg-type]
             tmp_path / "t.json").add_node("champion")

    assert errors_of_threads(start, 3) == []
    nodes = SqlPoolStore(url).read().nodes
    assert sorted(nodes) == ["node1", "node2", "node3"]
    assert len({n.port for n in nodes.values()}) == 3 and {n.status.value for n in nodes.values()} == {"serving"}


def test_the_stack_picks_its_store_from_the_config(tmp_path: Path) -> None:
    assert isinstance(pool_store(tmp_path), PoolStore)
    assert isinstance(pool_store(tmp_path, f"sqlite:///{tmp_path / 'p.db'}"), SqlPoolStore)


def test_a_bad_database_url_names_the_key_and_the_fix() -> None:
    with pytest.raises(ServiceError, match="pool_database 'not a url' is not a usable SQLAlchemy URL") as e:
        SqlPoolStore("not a url")
    assert "postgresql://" in e.value.fix


def test_targets_written_from_many_threads_stay_whole(tmp_path: Path) -> None:
    """Nodes starting side by side each rewrite the Prometheus targets file: no thread fails on another's temporary
    file, the file is whole JSON with every serving node, and no temporary file is left behind."""
    import json

    from llmops.pool.manager import Pool
    from llmops.pool.state import NodeStatus

    store = PoolStore(tmp_path / "pool.json")
    with store.update() as st:
        for i in range(1, 5):
            st.nodes[f"node{i}"] = rec(f"node{i}").model_copy(update={"port": 8100 + i,
                                                                      "status": NodeStatus.SERVING})
    none: object = None
    pool = Pool("m", "llm_m", none, none, none, none, store, tmp_path / "targets" / "nodes-m.json")  # type: ignore[arg-type]

    def write() -> None:
        for _ in range(20):
            pool.write_targets()

    assert errors_of_threads(write, 6) == []
    assert sorted(t["labels"]["node"] for t in json.loads((tmp_path / "targets" / "nodes-m.json").read_text())) == \
        ["node1", "node2", "node3", "node4"]
    assert [p.name for p in (tmp_path / "targets").iterdir()] == ["nodes-m.json"]
