"""Loading YAML configs into pydantic models, with errors that name the field and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from llmops.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk `loc` through nested models to list the keys allowed where an unknown key was found."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if current is None:
            return []
    return sorted(getattr(current, "model_fields", {}))


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> ConfigError:
    """Turn a pydantic error into one ConfigError listing every bad field with its fix."""
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, e["loc"])
            lines.append(f"{field}: unknown key; allowed keys here: {', '.join(allowed)}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{field}: {e['msg']}{shown}")
    return ConfigError(
        f"{source}: invalid configuration:\n    " + "\n    ".join(lines),
        "correct the field(s) above; the defaults and meaning of each key are in README.md#configuration",
    )


def parse_config(data: Any, model: type[M], source: str = "<config>") -> M:
    """Validate already-loaded data against `model`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}",
                          "write the config as `key: value` pairs")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(err, model, source) from None


def load_config(path: str | Path, model: type[M]) -> M:
    """Read a YAML file and validate it against `model`.

    Args:
        path: the YAML file.
        model: the pydantic model the file must satisfy.

    Returns:
        The validated, frozen config.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist", "pass an existing file, e.g. one under configs/")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}", "fix the YAML syntax at the position shown") from None
    return parse_config(data, model, str(p))
