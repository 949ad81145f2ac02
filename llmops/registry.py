"""Model registry adapter: MLflow model versions, aliases and hash-checked pulls."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llmops.errors import RegistryError
from llmops.hashing import dir_sha256
from llmops.model_cache import CachedModel, ModelCache

SHA_TAG = "llmops.sha256"


@dataclass(frozen=True)
class ModelVersionRef:
    """A registered model version and what a node needs to serve it."""

    name: str
    version: str
    source: str
    sha256: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


class ModelRegistry(Protocol):
    """What the pipeline needs from a registry (MLflow in production and tests; a fake in unit tests)."""

    def resolve(self, name: str, version_or_alias: str) -> ModelVersionRef: ...

    def register_directory(self, name: str, directory: Path, run_id: str | None,
                           tags: dict[str, str], artifact_path: str = "model") -> ModelVersionRef: ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def download(self, ref: ModelVersionRef, dest: Path) -> None: ...


class MlflowRegistry:
    """MLflow 3 model registry over its tracking server.

    Directories are registered with `create_model_version(source=...)`: the transformers flavor
    reloads PEFT weights wrongly (ARCHITECTURE.md), and a plain directory is what every engine reads.

    Args:
        tracking_uri: e.g. http://127.0.0.1:5000
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The MlflowClient, made on first use: importing mlflow takes 1-3 s, which a scale pass that only promotes
        a warm standby never needs (measured: flow start -> decision 2 s -> see bench/scale_reaction.py)."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def _ref(self, mv: object) -> ModelVersionRef:
        tags = dict(getattr(mv, "tags", {}) or {})
        sha = tags.get(SHA_TAG, "")
        return ModelVersionRef(name=mv.name, version=str(mv.version), source=mv.source,  # type: ignore[attr-defined]
                               sha256=sha, tags=tags, aliases=tuple(getattr(mv, "aliases", ()) or ()))

    def resolve(self, name: str, version_or_alias: str) -> ModelVersionRef:
        """Resolve a version number or an alias to a version; clear error when either is unknown."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            raise RegistryError(f"model {name!r} is not registered in MLflow at {self.tracking_uri}",
                                "register it first (`llmops model pull-base` registers the base model)") from None
        try:
            if version_or_alias.isdigit():
                mv = self.client.get_model_version(name, version_or_alias)
            else:
                mv = self.client.get_model_version_by_alias(name, version_or_alias)
        except MlflowException:
            known = sorted(self.client.get_registered_model(name).aliases or {})
            raise RegistryError(f"model {name!r} has no version or alias {version_or_alias!r}",
                                f"use a version number or one of the aliases {known}") from None
        ref = self._ref(mv)
        if not ref.sha256:
            raise RegistryError(f"{name} v{ref.version} has no {SHA_TAG} tag; nodes cannot verify it",
                                "re-register the directory with llmops so its content hash is recorded")
        return ref

    def register_directory(self, name: str, directory: Path, run_id: str | None,
                           tags: dict[str, str], artifact_path: str = "model") -> ModelVersionRef:
        """Upload `directory` as artifacts of `run_id` (a new run if None) under `artifact_path`; register it."""
        from mlflow.exceptions import MlflowException

        import mlflow

        sha = dir_sha256(directory)
        mlflow.set_tracking_uri(self.tracking_uri)
        if run_id is None:
            exp = mlflow.set_experiment(f"{name}-registry")
            run = self.client.create_run(exp.experiment_id, run_name=f"register-{name}")
            run_id = run.info.run_id
            self.client.log_artifacts(run_id, str(directory), artifact_path=artifact_path)
            self.client.set_terminated(run_id)
        else:
            self.client.log_artifacts(run_id, str(directory), artifact_path=artifact_path)
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description="Served by elastic-llmops")
        mv = self.client.create_model_version(name, source=source, run_id=run_id,
                                              tags={**tags, SHA_TAG: sha})
        return self._ref(self.client.get_model_version(name, mv.version))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def tag_version(self, name: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(name, version, key, value)

    def download(self, ref: ModelVersionRef, dest: Path) -> None:
        """Copy the version's files into `dest` (which must be empty)."""
        from mlflow.artifacts import download_artifacts

        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            got = Path(download_artifacts(artifact_uri=ref.source, dst_path=tmp,
                                          tracking_uri=self.tracking_uri))
            for item in got.iterdir():
                shutil.move(str(item), dest / item.name)


def pull_verified(registry: ModelRegistry, cache: ModelCache, name: str, version_or_alias: str
                  ) -> tuple[ModelVersionRef, CachedModel]:
    """Resolve a version and return its verified local copy (downloaded only on a cache miss)."""
    ref = registry.resolve(name, version_or_alias)
    cached = cache.get(ref.sha256, lambda tmp: registry.download(ref, tmp))
    return ref, cached
