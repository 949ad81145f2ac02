"""`llmops stack up | status | down | logs`: start the real services on loopback, idempotently."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from infra.stack import services as svc
from llmops import proc
from llmops.basemodel import ensure_base_registered
from llmops.endpoints import Endpoints
from llmops.errors import ServiceError
from llmops.parallel import all_or_first_error
from llmops.pool.launcher import LocalProcessLauncher
from llmops.pool.manager import Pool, stack_pool
from llmops.pool.state import pool_store
from llmops.registry import MlflowRegistry, pull_verified
from llmops.stackconfig import StackConfig, TenantPool, save_effective_config

FIRST_WAVE = ("s3", "prefect", "prometheus", "alertmanager", "gateway")
ORDER = (*FIRST_WAVE, "mlflow", "worker", "receiver")
Say = Callable[[str], None]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    running: bool
    healthy: bool
    rss_mb: float
    pid: int | None


class Stack:
    """The local stack described by one StackConfig; its state lives in `cfg.state_dir`."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.ep: Endpoints = svc.endpoints_for(cfg)
        self.state_file = cfg.state_dir / "stack.json"

    # ---- state -------------------------------------------------------------------------------
    def _load(self) -> dict[str, object]:
        if self.state_file.is_file():
            return dict(json.loads(self.state_file.read_text()))
        return {"services": {}}

    def _records(self) -> dict[str, proc.ProcRecord]:
        services = self._load()["services"]
        assert isinstance(services, dict)
        return {k: proc.ProcRecord.from_json(v) for k, v in services.items()}

    def _save(self, records: dict[str, proc.ProcRecord], **extra: object) -> None:
        data = self._load()
        data["services"] = {k: r.to_json() for k, r in records.items()}
        data.update(extra)
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    def pool(self, model: str | None = None) -> Pool:
        """The pool of `model` (default: the stack's own model, tenant `default`)."""
        return stack_pool(self.cfg, self.ep.mlflow_url, self.ep.haproxy_socket, svc.REPO_ROOT, model=model,
                          prefect_api_url=self.ep.prefect_api_url)

    def pools(self) -> list[Pool]:
        """Every tenant's pool, the default tenant's first."""
        return [self.pool(p.model) for p in self.cfg.pools()]

    # ---- up ----------------------------------------------------------------------------------
    def up(self, say: Say = print) -> dict[str, float]:
        """Start what is not running, wait for every health check, provision the model and the nodes.

        Returns seconds spent per stage. On failure, everything this call started is stopped again.
        """
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        save_effective_config(self.cfg)  # the receiver and the flows read the running stack's config from it
        records = {k: r for k, r in self._records().items() if proc.is_alive(r)}
        specs = {s.name: s for s in svc.all_services(self.cfg, self.ep)}  # also checks binaries
        to_start = [n for n in ORDER if n not in records]
        for name in to_start:
            for port in specs[name].ports:
                proc.ensure_port_free(port, name)
        started: list[str] = []
        nodes_before = {n.name for p in self.pools() for n in p.nodes()}

        def start(name: str) -> None:
            spec = specs[name]
            log = self.cfg.state_dir / "logs" / f"{name}.log"
            records[name] = proc.spawn(spec.argv, log, env={**_base_env(), **spec.env}, cwd=spec.cwd)
            started.append(name)
            self._save(records)
            say(f"  started {name:<13} pid {records[name].pid}")

        try:
            for name in FIRST_WAVE:
                if name in to_start:
                    start(name)
            self._wait(specs["s3"], records)
            timings["s3_ready_s"] = time.monotonic() - t0
            self._ensure_buckets()
            if "mlflow" in to_start:
                start("mlflow")
            self._wait(specs["prefect"], records)
            timings["prefect_ready_s"] = time.monotonic() - t0
            if self._prefect_setup_needed("prefect" in started):
                self._prefect_setup(say)
                timings["prefect_deployed_s"] = time.monotonic() - t0
            if "worker" in to_start:
                start("worker")
            self.ep.save()
            if "receiver" in to_start:
                start("receiver")
            for name in ("prometheus", "alertmanager", "gateway", "mlflow", "worker", "receiver"):
                self._wait(specs[name], records)
                timings[f"{name}_ready_s"] = time.monotonic() - t0
            timings["services_s"] = time.monotonic() - t0
            t1 = time.monotonic()
            registry = MlflowRegistry(self.ep.mlflow_url)
            for tp in self.cfg.pools():  # each tenant's model starts as the base model, its own version 1
                ref = ensure_base_registered(registry, tp.model, self.cfg.model.alias,
                                             base_dir=self.cfg.model.base_dir)
                say(f"  model {ref.name} v{ref.version} (@{self.cfg.model.alias}, tenant {tp.tenant}) "
                    f"sha256 {ref.sha256[:12]}")
            timings["model_s"] = time.monotonic() - t1
            t2 = time.monotonic()
            self._ensure_nodes(say)
            timings["nodes_s"] = time.monotonic() - t2
        except BaseException as err:
            say(f"stack up failed: {err}")
            for name in started:
                say(f"--- last lines of {name} ({records[name].log}) ---\n{proc.tail(records[name].log, 25)}")
            self._stop_new_nodes(nodes_before)
            for name in reversed(started):
                proc.stop(records.pop(name))
            self._save(records)
            raise
        timings["total_s"] = time.monotonic() - t0
        return timings

    def _wait(self, spec: svc.ServiceSpec, records: dict[str, proc.ProcRecord]) -> None:
        """Wait for `spec`'s health check; fail at once if it or any other started service exits."""
        rec = records[spec.name]
        deadline = time.monotonic() + self.cfg.service_timeout_s
        while time.monotonic() < deadline:
            if spec.health():
                return
            for name, other in records.items():
                if not proc.is_alive(other):
                    raise ServiceError(f"{name} exited during start-up; see {other.log}",
                                       f"read the log above; `llmops stack logs {name}` shows more")
            time.sleep(0.2)
        raise ServiceError(f"{spec.name} did not become healthy within {self.cfg.service_timeout_s:.0f}s "
                           f"({spec.url})", f"read {rec.log}, or raise service_timeout_s")

    def _ensure_buckets(self) -> None:
        s3 = self.ep.s3_client()
        have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in self.cfg.buckets:
            if bucket not in have:
                s3.create_bucket(Bucket=bucket)

    def _prefect_setup_needed(self, server_restarted: bool) -> bool:
        digest = self._deploy_digest()
        return server_restarted or self._load().get("prefect_yaml_sha256") != digest

    def _deploy_digest(self) -> str:
        """What the registered deployments depend on: prefect.yaml, the tenant pools (scale-<tenant>) and the host
        classes (serve-node/<class>, fine-tune/<class>)."""
        pools = (",".join(f"{p.tenant}:{p.model}" for p in self.cfg.pools())
                 + f";{self.cfg.serving.host_class or ''};{self.cfg.training.host_class or ''}")
        return hashlib.sha256((svc.REPO_ROOT / "prefect.yaml").read_bytes() + pools.encode()).hexdigest()

    def _prefect_setup(self, say: Say) -> None:
        """Create the process work pool and register every deployment of prefect.yaml."""
        env = {**_base_env(), **svc.prefect_env(self.cfg, self.ep)}
        prefect = svc.which("prefect")
        host_pools = [[prefect, "work-pool", "create", c, "--type", "process", "--overwrite"]
                      for c in (self.cfg.serving.host_class, self.cfg.training.host_class) if c]
        for argv in ([prefect, "work-pool", "create", self.cfg.work_pool, "--type", "process", "--overwrite"],
                     *host_pools, [prefect, "--no-prompt", "deploy", "--all"]):
            r = subprocess.run(argv, cwd=svc.REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise ServiceError(f"`{' '.join(argv[1:])}` failed:\n{(r.stdout + r.stderr)[-2000:]}",
                                   "fix prefect.yaml (the error names the deployment) and run `llmops stack up`")
        # One fine-tune at a time across every flow (train_pipeline, repair), and one change at a time to
        # the pool (rollout, scale, reconcile): global concurrency limits.
        for limit in ("fine-tune", *(f"pool-{p.model}" for p in self.cfg.pools())):
            r = subprocess.run([prefect, "global-concurrency-limit", "create", limit, "--limit", "1"],
                               cwd=svc.REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
            if r.returncode != 0 and "already exists" not in (r.stdout + r.stderr):
                raise ServiceError(f"could not create the concurrency limit {limit}:\n{(r.stdout + r.stderr)[-800:]}",
                                   "check the Prefect server log: `llmops stack logs prefect`")
        tenants = tenant_deployments(self.cfg)
        if tenants is not None:
            r = subprocess.run([prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(tenants)],
                               cwd=svc.REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise ServiceError(f"registering the tenants' deployments ({tenants}) failed:\n"
                                   f"{(r.stdout + r.stderr)[-2000:]}", "check the `tenants` section of the config")
        digest = self._deploy_digest()
        self._save(self._records(), prefect_yaml_sha256=digest)
        say(f"  prefect: work pool {self.cfg.work_pool!r}, deployments from prefect.yaml registered")

    def _ensure_nodes(self, say: Say) -> None:
        """For each tenant's pool: reconcile it with HAProxy (keep live nodes, re-add them if HAProxy restarted,
        drop dead ones), then start the missing ones up to its own `min_replicas`."""
        missing: list[tuple[TenantPool, Pool]] = []
        for tp in self.cfg.pools():
            pool = self.pool(tp.model)
            found = pool.reconcile()
            if found.changed:
                say(f"  pool {tp.model} reconciled with HAProxy: {found.summary()}")
            missing += [(tp, pool)] * max(0, tp.scaling.min_replicas - sum(1 for n in pool.nodes() if not n.standby))

        def start(tp: TenantPool, pool: Pool) -> None:
            t = time.monotonic()
            node = pool.add_node(self.cfg.model.alias, engine=self.cfg.serving.engine.value)
            say(f"  node {node.name} ({tp.tenant}: {tp.model}) serving v{node.version} at {node.url} "
                f"(ready in {time.monotonic() - t:.1f}s)")

        for pool in {id(p): p for _, p in missing}.values():  # one hash-checked pull per version, then the starts
            if pool.launcher.pulls_locally:
                pull_verified(pool.registry, pool.cache, pool.model, self.cfg.model.alias)
        # every missing node at once: loads and health checks overlap
        all_or_first_error([functools.partial(start, tp, pool) for tp, pool in missing])

    def _stop_new_nodes(self, before: set[str]) -> None:
        for pool in self.pools():
            for node in pool.nodes():
                if node.name not in before:
                    rec = node.process()
                    if rec is not None:
                        proc.stop(rec)
                    elif node.remote_run:
                        pool.launcher.stop(node)
                    pool._forget(node.name)

    # ---- down / status / logs ----------------------------------------------------------------
    def down(self, say: Say = print, purge: bool = False) -> None:
        """Stop every node and service this stack started (by recorded pid), in reverse order."""
        pools = self.pools()
        for pool in pools:  # nodes on other hosts first, while the Prefect server that cancels their runs is up
            for node in pool.nodes():
                if node.remote_run:
                    try:
                        pool.launcher.stop(node)
                    except Exception as err:  # noqa: BLE001 - an unreachable server must not keep the rest up
                        say(f"  could not cancel {node.name}'s serve-node run {node.remote_run}: {err}")
        proc.stop_all([r for p in pools for r in (n.process() for n in p.nodes()) if r is not None])
        for pool in pools:
            for node in pool.nodes():
                if isinstance(pool.launcher, LocalProcessLauncher):
                    pool.launcher.release(node)  # its CPU cgroup, if serving.cpu_limit made one
                say(f"  stopped {node.name}")
                pool._forget(node.name)
            pool.write_targets()
        stray = pool_store(self.cfg.state_dir, self.cfg.pool_database)  # nodes of a tenant since removed from config
        with stray.update() as state:
            left = list(state.nodes.values())
            proc.stop_all([r for r in (n.process() for n in left) if r is not None])
            for node in left:
                say(f"  stopped {node.name} (model {node.model}: no tenant serves it any more)")
                state.nodes.pop(node.name)
        records = self._records()
        # The worker first, so it takes no new flow run; then every service at once.
        if "worker" in records:
            proc.stop(records.pop("worker"), timeout_s=10)
            say("  stopped worker")
        # flow runs the worker started run in sessions of their own: one it submitted while stopping would live on
        runs = proc.records_with_env({"PREFECT_HOME": str(self.cfg.state_dir / "prefect")}, "PREFECT__FLOW_RUN_ID")
        if runs:
            proc.stop_all(runs, timeout_s=6)
            say(f"  stopped {len(runs)} flow-run process(es) left by the worker")
        alive = [name for name, rec in records.items() if proc.is_alive(rec)]
        # SeaweedFS takes ~15 s to finish a graceful gRPC stop after it has stopped serving; its filer
        # store (leveldb) is crash-safe, so it gets 6 s like the others before SIGKILL.
        proc.stop_all(list(records.values()), timeout_s=6)
        for name in alive:
            say(f"  stopped {name}")
        self._save({})
        if self.ep.haproxy_socket.exists():
            self.ep.haproxy_socket.unlink()
        (self.cfg.state_dir / "endpoints.json").unlink(missing_ok=True)
        if purge:
            shutil.rmtree(self.cfg.state_dir, ignore_errors=True)

    def status(self) -> list[ServiceStatus]:
        records = self._records()
        specs = {s.name: s for s in svc.all_services(self.cfg, self.ep)}
        out = []
        for name in ORDER:
            rec = records.get(name)
            alive = rec is not None and proc.is_alive(rec)
            out.append(ServiceStatus(name, specs[name].url, alive, alive and specs[name].health(),
                                     proc.tree_rss(rec) / 2**20 if rec and alive else 0.0,
                                     rec.pid if rec else None))
        for node in (n for p in self.pools() for n in p.nodes()):
            rec = node.process()
            alive = rec is not None and proc.is_alive(rec)
            healthy = alive and svc.http_ok(f"{node.url}/health")
            label = f"v{node.version}" if node.model == self.cfg.model.name else f"{node.model} v{node.version}"
            out.append(ServiceStatus(f"{node.name} ({label})", node.url, alive, healthy,
                                     proc.tree_rss(rec) / 2**20 if rec and alive else 0.0,
                                     rec.pid if rec else None))
        return out

    def log_path(self, service: str) -> Path:
        if service in ORDER:
            return self.cfg.state_dir / "logs" / f"{service}.log"
        node = self.cfg.state_dir / "nodes" / service / "node.log"
        if node.is_file():
            return node
        raise ServiceError(f"no service or node named {service!r}", f"use one of {', '.join(ORDER)} or a node name")


def tenant_deployments(cfg: StackConfig) -> Path | None:
    """A prefect.yaml of the deployments the stack config adds to prefect.yaml's: one `scale-<tenant>` per tenant
    pool other than the default's (prefect.yaml's `scale` with the trigger narrowed to `llmops.pool.<tenant>.*`
    and its own one-at-a-time limit), and `serve-node/<host class>` on that class's work pool when
    `serving.host_class` places nodes on other hosts, and `fine-tune/<host class>` when `training.host_class`
    sends fine-tunes to training hosts. None if there is nothing to add."""
    others = [p.tenant for p in cfg.pools() if p.tenant != "default"]
    if not others and not cfg.serving.host_class and not cfg.training.host_class:
        return None
    project = yaml.safe_load((svc.REPO_ROOT / "prefect.yaml").read_text())
    scale = next(d for d in project["deployments"] if d["name"] == "scale")
    deployments = []
    for tenant in sorted(set(others)):
        d = copy.deepcopy(scale)
        d["name"] = f"scale-{tenant}"
        d["description"] = f"Tenant {tenant}: {scale['description']}"
        d["tags"] = [*scale.get("tags", []), f"tenant:{tenant}"]
        d["work_pool"] = {"name": cfg.work_pool}
        for trig in d.get("triggers", []):
            trig["match"]["prefect.resource.id"] = f"llmops.pool.{tenant}.*"
        deployments.append(d)
    host_classes = (
        (cfg.serving.host_class, "serving", "flows/serve_node.py:serve_node_flow",
         "One serving node on a {} host (started and cancelled by the scaling flows; llmops/pool/remote.py): pull + "
         "hash check on the host, engine on the host's address, alive as long as the node."),
        (cfg.training.host_class, "training", "flows/fine_tune_job.py:fine_tune_job_flow",
         "One fine-tune on a {} host (submitted by train-pipeline and repair; flows/fine_tune_job.py): base version "
         "pulled from MLflow and hash-checked, examples from S3, the model back to S3."))
    deployments += [{"name": name, "description": about.format(name), "entrypoint": entrypoint,
                     "work_pool": {"name": name}, "tags": [role, f"host-class:{name}"]}
                    for name, role, entrypoint, about in host_classes if name]
    path = cfg.state_dir / "prefect" / "tenant-deployments.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Rendered by `llmops stack up` from prefect.yaml and the stack config; do not edit.\n"
                    + yaml.safe_dump({**{k: v for k, v in project.items() if k != "deployments"},
                                      "deployments": deployments}, sort_keys=False))
    return path


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
