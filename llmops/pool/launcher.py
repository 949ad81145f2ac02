"""Node launchers: start an engine on a verified model directory and wait until it really serves."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Protocol

import httpx

from llmops import proc
from llmops.cgroups import limit_cpu, remove_group
from llmops.errors import ServiceError
from llmops.pool.gpus import GpuClaims
from llmops.pool.state import NodeRecord, NodeStatus
from llmops.stackconfig import Engine, ServingSettings

VERSION_HEADER = "X-Llmops-Model-Version"


class NodeLauncher(Protocol):
    """Starts and stops serving nodes (local processes here; Prefect work pools on other hosts)."""

    # False: the node's host pulls the model itself (remote hosts); True: `start` gets a local verified copy
    pulls_locally: bool

    def start(self, node: NodeRecord, model_dir: Path | None) -> NodeRecord: ...

    def wait_ready(self, node: NodeRecord, timeout_s: float) -> NodeRecord:
        """Block until the node serves; returns it with where it listens (a remote host reports its address)."""
        ...

    def stop(self, node: NodeRecord) -> None: ...

    def is_alive(self, node: NodeRecord) -> bool: ...


def engine_argv(engine: Engine, served_name: str, node: NodeRecord, settings: ServingSettings) -> list[str]:
    """Command line of one node. The model is the symlink `served_name` in the node's working dir."""
    if engine is Engine.TRANSFORMERS:
        return [sys.executable, "-m", "infra.nodes.transformers_node", "--served-name", served_name,
                "--version", node.version, "--sha256", node.sha256, "--",
                served_name, "--continuous-batching", "--cb-num-blocks", str(settings.cb_num_blocks),
                "--cb-block-size", str(settings.cb_block_size), "--host", node.host, "--port", str(node.port),
                "--device", "cpu", "--log-level", "warning"]
    if engine is Engine.LMDEPLOY:
        # the node wrapper (infra/nodes/lmdeploy_node.py) checks the hash, then runs LMDeploy's own CLI in-process
        argv = [settings.lmdeploy_python, "-m", "infra.nodes.lmdeploy_node", "--served-name", served_name,
                "--version", node.version, "--sha256", node.sha256, "--", "serve", "api_server", served_name,
                "--backend", settings.lmdeploy_backend, "--tp", str(settings.lmdeploy_tp),
                "--model-name", served_name, "--server-name", node.host, "--server-port", str(node.port),
                "--cache-max-entry-count", str(settings.lmdeploy_cache_max_entry_count),
                "--max-batch-size", str(settings.lmdeploy_max_batch_size),
                "--session-len", str(settings.lmdeploy_session_len)]
        return [*argv, "--eager-mode"] if settings.lmdeploy_eager_mode else argv
    raise ServiceError(f"engine {engine.value!r} is not supported", "use transformers or lmdeploy")


class LocalProcessLauncher:
    """Nodes as local processes, one torch thread each.

    Args:
        nodes_dir: parent of each node's working directory and log.
        settings: engine settings from the stack config.
        repo_root: put on PYTHONPATH so the node wrapper imports from this checkout.
    """

    def __init__(self, nodes_dir: Path, settings: ServingSettings, repo_root: Path,
                 serving_log_dir: Path | None = None, tenant: str = "default", die_with_parent: bool = False) -> None:
        self.nodes_dir = nodes_dir
        self.settings = settings
        self.repo_root = repo_root
        self.serving_log_dir = serving_log_dir
        self.tenant = tenant
        self.die_with_parent = die_with_parent  # the engine ends with the process that started it (serve-node)
        self.gpu_claims = GpuClaims(nodes_dir / ".gpus", settings.gpus)

    pulls_locally = True

    def start(self, node: NodeRecord, model_dir: Path | None) -> NodeRecord:
        if model_dir is None:
            raise ServiceError(f"node {node.name}: no local model copy to serve", "pull the version first")
        if Engine(node.engine) is Engine.LMDEPLOY:
            check_lmdeploy(self.settings.lmdeploy_python)
        workdir = self.nodes_dir / node.name
        workdir.mkdir(parents=True, exist_ok=True)
        link = workdir / node.model
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(model_dir, target_is_directory=True)
        threads = str(self.settings.torch_threads)
        path = os.pathsep.join(p for p in (str(self.repo_root), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": path, "LLMOPS_TENANT": self.tenant}
        if self.serving_log_dir is not None:
            env["LLMOPS_SERVING_LOG"] = str(self.serving_log_dir / f"{node.name}.jsonl")
        gpu = self.gpu_claims.claim(node.name) if self.settings.gpus else None
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)  # one node per GPU
        argv = engine_argv(Engine(node.engine), node.model, node, self.settings)
        # started at normal priority: a cold start is capacity being added, and on a host the nodes share it must not
        # queue behind the load it is meant to absorb (under a burst a start at nice 5 took 14-17 s, idle 5 s);
        # `wait_ready` lowers it to `serving.nice` once it serves
        try:
            rec = proc.spawn(argv, workdir / "node.log", env=env, cwd=workdir, die_with_parent=self.die_with_parent)
        except BaseException:
            self.gpu_claims.release(node.name)
            raise
        if gpu is not None:
            self.gpu_claims.bind(gpu, node.name, rec)
        if self.settings.cpu_limit > 0:
            try:
                limit_cpu(rec.pid, self.settings.cpu_limit, self.cgroup_name(node))
            except ServiceError:
                proc.stop(rec, timeout_s=10)  # never a node without the limit it was asked to have
                self.gpu_claims.release(node.name)
                raise
        return node.model_copy(update={"proc": rec.to_json(), "status": NodeStatus.STARTING, "gpu": gpu})

    def wait_ready(self, node: NodeRecord, timeout_s: float) -> NodeRecord:
        """Ready = `/health` answers, a one-token completion succeeds, and the node serves `node.sha256`."""
        rec = node.process()
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if rec is not None and not proc.is_alive(rec):
                raise ServiceError(f"node {node.name} exited while starting:\n{proc.tail(rec.log, 20)}",
                                   f"read {rec.log}")
            try:
                if httpx.get(f"{node.url}/health", timeout=2).status_code == 200:
                    check_serving(node)
                    if rec is not None and self.settings.nice:
                        proc.renice(rec, self.settings.nice)
                    return node
                last = "health not ok"
            except (httpx.HTTPError, ServiceError) as err:
                last = str(err)
            time.sleep(0.5)
        log = rec.log if rec else "?"
        raise ServiceError(f"node {node.name} not ready after {timeout_s:.0f}s ({last})", f"read {log}")

    def cgroup_name(self, node: NodeRecord) -> str:
        """One CPU cgroup per node and state dir (two stacks on one host never share one)."""
        return f"llmops-{hashlib.sha256(str(self.nodes_dir.resolve()).encode()).hexdigest()[:8]}-{node.name}"

    def stop(self, node: NodeRecord) -> None:
        rec = node.process()
        if rec is not None:
            proc.stop(rec, timeout_s=10)
        self.release(node)

    def release(self, node: NodeRecord) -> None:
        """Remove what a stopped node leaves on the host (its CPU cgroup, its GPU claim)."""
        if self.settings.cpu_limit > 0:
            remove_group(self.cgroup_name(node))
        if self.settings.gpus:
            self.gpu_claims.release(node.name)

    def is_alive(self, node: NodeRecord) -> bool:
        rec = node.process()
        return rec is not None and proc.is_alive(rec)


def check_lmdeploy(python: str) -> None:
    """LMDeploy runs from its own interpreter; fail before starting anything if it is not installed there. Only
    looked up, not imported: `import lmdeploy` took 6-7 s on the GPU machine, on every cold start (the node itself
    imports it and, if that fails, exits with the error in its log, which `wait_ready` reports)."""
    import subprocess

    probe = ("import importlib.util, sys; "
             "sys.exit(0 if importlib.util.find_spec('lmdeploy') else \"No module named 'lmdeploy'\")")
    try:
        r = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
        detail = ((r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]) if r.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as err:
        detail = str(err)
    if detail:
        raise ServiceError(f"LMDeploy is not importable by {python!r}: {detail}",
                           "build its environment with infra/lmdeploy/build-env.sh and set serving.lmdeploy_python")


def check_serving(node: NodeRecord) -> None:
    """One-token completion through the node, and its reported model hash must equal the expected one."""
    r = httpx.post(f"{node.url}/v1/chat/completions", timeout=30, json={
        "model": node.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
    if r.status_code != 200 or not r.json().get("choices"):
        raise ServiceError(f"node {node.name}: completion failed: HTTP {r.status_code} {r.text[:200]}",
                           "read the node log")
    if r.headers.get(VERSION_HEADER) != node.version:
        raise ServiceError(f"node {node.name} answers as version {r.headers.get(VERSION_HEADER)!r}, "
                           f"expected {node.version}", "stop the stray process on that port")
    if node.engine == Engine.LMDEPLOY.value:
        # LMDeploy's /metrics is its own; the wrapper reports the verified hash at /llmops/info, and the engine
        # must serve the registered name
        info = httpx.get(f"{node.url}/llmops/info", timeout=10).json()
        models = httpx.get(f"{node.url}/v1/models", timeout=10).json().get("data", [])
        if info.get("sha256") != node.sha256 or not any(m.get("id") == node.model for m in models):
            raise ServiceError(f"node {node.name} reports {info} serving {[m.get('id') for m in models]}, "
                               f"expected {node.model!r} with hash {node.sha256[:16]}...",
                               "another process answers on that port, or other weights: stop it and re-pull")
        return
    metrics = httpx.get(f"{node.url}/metrics", timeout=5).text
    if f'sha256="{node.sha256}"' not in metrics:
        raise ServiceError(f"node {node.name} does not report model hash {node.sha256[:16]}...",
                           "the node serves other weights than requested: stop it and re-pull the version")
