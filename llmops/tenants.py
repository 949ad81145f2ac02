"""Tenants: isolated namespaces of one stack (the `tenants` section of the stack config).

A tenant owns its webhook secret and the hooks it accepts; events it causes carry `llmops.tenant.<name>` as their
resource id, so a deployment trigger matching one tenant never fires for another. A tenant with a `model` also owns a
pool: that registered model name (the OpenAI `model` field the gateway routes on), its own HAProxy backend and nodes,
its own scaling policy and budget (`scaling`, else the stack's), its own alerts (labelled with the tenant) and its
own pool lock. The stack's `model` is always the pool of the tenant `default`. Secrets never live in the repo:
each tenant's comes from an environment variable, else a Prefect Secret block, else (local stack only) a file
generated into the state dir at `stack up`.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

from pydantic import Field, field_validator

from llmops.config import StrictModel
from llmops.scaling import ScalePolicy
from llmops.webhooks import HOOKS

NAME = r"^[a-z][a-z0-9-]{0,39}$"


def default_secret_env(tenant: str) -> str:
    return "LLMOPS_WEBHOOK_SECRET_" + re.sub(r"[^A-Z0-9]", "_", tenant.upper())


class TenantSettings(StrictModel):
    """One tenant's webhook settings."""

    hooks: tuple[str, ...] = tuple(sorted(HOOKS))  # the hooks this tenant accepts
    secret_env: str = ""  # environment variable holding the secret (default LLMOPS_WEBHOOK_SECRET_<NAME>)
    secret_block: str = Field("", max_length=200)  # name of a Prefect Secret block holding it
    # the tenant's own pool: its registered model name ("" = none; `default`'s is the stack's `model.name`)
    model: str = Field("", pattern=r"^([a-z0-9][a-z0-9-]{1,62})?$")
    scaling: ScalePolicy | None = None  # its pool's policy and budget; None: the stack's `scaling`

    @field_validator("hooks")
    @classmethod
    def _known_hooks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(v) - set(HOOKS)
        if unknown:
            raise ValueError(f"unknown hook(s) {sorted(unknown)}: the hooks are {sorted(HOOKS)}")
        return v


def secret_file(state_dir: Path, tenant: str) -> Path:
    return state_dir / "receiver" / "secrets" / tenant


def ensure_local_secret(state_dir: Path, tenant: str) -> Path:
    """A random secret for a local stack's tenant, made once (0600), used when neither env nor block has one."""
    path = secret_file(state_dir, tenant)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path


def rotate_local_secret(state_dir: Path, tenant: str) -> str:
    """Replace the tenant's state-dir secret with a new random one (0600, atomic); returns the new secret. The
    receiver reads the secret per request, so the next call must be signed with the new one."""
    path = secret_file(state_dir, tenant)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{tenant}.new")
    tmp.unlink(missing_ok=True)
    tmp.touch(mode=0o600)
    tmp.write_text(new)
    tmp.replace(path)
    return new


def resolve_secret(tenant: str, settings: TenantSettings, state_dir: Path,
                   load_block: Callable[[str], str | None] | None = None) -> str | None:
    """The tenant's current secret: env var, else Prefect Secret block, else the state-dir file; None if none."""
    value = os.environ.get(settings.secret_env or default_secret_env(tenant), "")
    if value:
        return value
    if settings.secret_block and load_block is not None:
        block = load_block(settings.secret_block)
        if block:
            return block
    path = secret_file(state_dir, tenant)
    return path.read_text().strip() if path.exists() else None


def validate_tenant_names(names: list[str]) -> None:
    bad = [n for n in names if not re.match(NAME, n)]
    if bad:
        raise ValueError(f"tenant name(s) {bad} must match {NAME} (they become resource ids and URL paths)")
