"""Registration tasks: pull a base version, register the challenger with its lineage."""

from __future__ import annotations

from prefect import task

from llmops.endpoints import Endpoints
from llmops.model_cache import ModelCache
from llmops.registry import MlflowRegistry, ModelVersionRef, pull_verified
from tasks.retry import transient_only


@task(retries=2, retry_delay_seconds=3, retry_condition_fn=transient_only)
def pull_base(model_name: str, version_or_alias: str) -> tuple[ModelVersionRef, str]:
    """Resolve the base version (clear error if unknown) and return its hash-verified local copy."""
    ep = Endpoints.load()
    ref, cached = pull_verified(MlflowRegistry(ep.mlflow_url), ModelCache(ep.state_dir / "models"), model_name,
                                version_or_alias)
    return ref, str(cached.path)


@task(retries=1, retry_condition_fn=transient_only)
def register_challenger(model_name: str, merged_dir: str, adapter_dir: str | None, run_id: str,
                        tags: dict[str, str], promote: bool) -> ModelVersionRef:
    """Register the merged model (and the adapter under `<name>-adapter`, for lineage); alias `challenger`
    when the gate passed. Never moves `champion`: the rollout does."""
    from pathlib import Path

    reg = MlflowRegistry(Endpoints.load().mlflow_url)
    ref = reg.register_directory(model_name, Path(merged_dir), run_id, {**tags, "llmops.artifact": "merged"})
    if adapter_dir is not None:
        ad = reg.register_directory(f"{model_name}-adapter", Path(adapter_dir), run_id,
                                    {**tags, "llmops.artifact": "adapter", "llmops.merged_version": ref.version},
                                    artifact_path="adapter")
        reg.client.set_model_version_tag(model_name, ref.version, "llmops.adapter_version", ad.version)
    if promote:
        reg.set_alias(model_name, "challenger", ref.version)
    return reg.resolve(model_name, ref.version)
