"""Serving tasks: the pool of the stack's model, and the canary rollout over it."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from llmops.canary import CanaryRollout, RolloutReport
from llmops.data.curated import load_curated
from llmops.endpoints import Endpoints
from llmops.metrics import PrometheusMetrics
from llmops.model_cache import ModelCache
from llmops.pool.haproxy import HAProxyRuntime
from llmops.pool.launcher import LocalProcessLauncher
from llmops.pool.manager import Pool
from llmops.pool.state import NodeRecord, PoolStore
from llmops.probe import probe_set, run_probe
from llmops.registry import MlflowRegistry
from llmops.rollout import CanaryPolicy
from llmops.stackconfig import load_stack_config

ROOT = Path(__file__).resolve().parents[1]


def stack_pool(ep: Endpoints) -> Pool:
    """The pool of the running stack's model, built from its endpoints and stack config."""
    cfg = load_stack_config(state_dir=ep.state_dir)
    sd = ep.state_dir
    return Pool(model=ep.model_name, backend=f"llm_{ep.model_name.replace('-', '_')}",
                registry=MlflowRegistry(ep.mlflow_url), cache=ModelCache(sd / "models"),
                launcher=LocalProcessLauncher(sd / "nodes", cfg.serving, ROOT), lb=HAProxyRuntime(ep.haproxy_socket),
                store=PoolStore(sd / "pool" / "pool.json"), targets_file=sd / "prometheus" / "targets" / "nodes.json",
                host=cfg.host, node_base_port=cfg.ports.node_base, ready_timeout_s=cfg.serving.start_timeout_s)


@task(timeout_seconds=1800)
def roll_out_canary(version: str, policy: CanaryPolicy) -> RolloutReport:
    """Run the whole canary (start, steps, promote or roll back); progress goes to the flow run's log."""
    log = get_run_logger()
    ep = Endpoints.load()
    curated = load_curated()
    prompts = probe_set(curated.heldout, curated.control)

    def probe(node: NodeRecord):  # type: ignore[no-untyped-def]
        result = run_probe(node.url, node.model, prompts)
        log.info("quality probe on %s: %.3f (format %.3f, rouge-l %.3f, %d failed)", node.name, result.score,
                 result.format_compliance, result.rouge_l, result.failed_requests)
        return result

    rollout = CanaryRollout(stack_pool(ep), MlflowRegistry(ep.mlflow_url), PrometheusMetrics(ep.prometheus_url),
                            probe, policy, say=log.info)
    return rollout.run(version)
