"""Serving tasks: the canary rollout over the stack's pool."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from llmops.canary import CanaryRollout, RolloutReport
from llmops.data.curated import load_curated
from llmops.endpoints import Endpoints
from llmops.metrics import PrometheusMetrics
from llmops.pool.manager import stack_pool
from llmops.pool.state import NodeRecord
from llmops.probe import probe_set, run_probe
from llmops.registry import MlflowRegistry
from llmops.rollout import CanaryPolicy
from llmops.stackconfig import load_effective_config

ROOT = Path(__file__).resolve().parents[1]


@task(timeout_seconds=1800)
def roll_out_canary(version: str, policy: CanaryPolicy, model: str | None = None) -> RolloutReport:
    """Run the whole canary of `model`'s pool (default: the stack's) (start, steps, promote or roll back);
    progress goes to the flow run's log."""
    log = get_run_logger()
    ep = Endpoints.load()
    curated = load_curated()
    prompts = probe_set(curated.heldout, curated.control)

    def probe(node: NodeRecord):  # type: ignore[no-untyped-def]
        result = run_probe(node.url, node.model, prompts)
        log.info("quality probe on %s: %.3f (format %.3f, rouge-l %.3f, %d failed)", node.name, result.score,
                 result.format_compliance, result.rouge_l, result.failed_requests)
        return result

    cfg = load_effective_config(ep.state_dir)
    pool = stack_pool(cfg, ep.mlflow_url, ep.haproxy_socket, ROOT, model=model, prefect_api_url=ep.prefect_api_url)
    rollout = CanaryRollout(pool, MlflowRegistry(ep.mlflow_url), PrometheusMetrics(ep.prometheus_url),
                            probe, policy, say=log.info, max_nodes=cfg.pool_for(pool.model).scaling.node_cap)
    return rollout.run(version)
