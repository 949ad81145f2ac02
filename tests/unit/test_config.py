"""Config validation: bad input names the field and the allowed values, good input loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.config import load_config
from llmops.errors import ConfigError
from llmops.stackconfig import DEFAULT_STACK_CONFIG, Engine, StackConfig, load_stack_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "stack.yaml"
    p.write_text(text)
    return p


def test_shipped_config_loads_with_documented_defaults() -> None:
    cfg = load_stack_config(DEFAULT_STACK_CONFIG)
    assert cfg.ports.gateway == 8080
    assert cfg.serving.engine is Engine.TRANSFORMERS
    assert cfg.state_dir.is_absolute()
    # the shipped file states the defaults: it must equal an empty config, except the scaling thresholds, which
    # are the CPU ones there (the code's defaults are for GPU nodes; README documents both), and the second tenant
    # the demo runs beside the default one
    skip = {"state_dir", "scaling", "tenants"}
    assert set(cfg.tenants) == {"default", "globex"} and cfg.tenants["default"] == StackConfig().tenants["default"]
    assert [p.model for p in cfg.pools()] == ["support-assistant", "globex-assistant"]
    assert cfg.model_dump(exclude=skip) == StackConfig().model_dump(exclude=skip)
    differs = {k for k, v in cfg.scaling.model_dump().items() if v != getattr(StackConfig().scaling, k)}
    assert differs == {"high_latency_s", "backlog", "budget_per_hour"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("portz: {}\n", ["portz: unknown key", "allowed keys here:", "ports"]),
        ("ports: {gatewai: 1}\n", ["ports.gatewai: unknown key", "gateway", "haproxy_stats"]),
        ("serving: {engine: vllm}\n", ["serving.engine", "'transformers' or 'lmdeploy'", "'vllm'"]),
        ("ports: {mlflow: abc}\n", ["ports.mlflow", "valid integer", "'abc'"]),
        ("ports: {mlflow: 80}\n", ["ports.mlflow", "greater than or equal to 1024"]),
        ("host: 0.0.0.0\n", ["host", "not an address of this machine", "use 127.0.0.1"]),
        ("host: 203.0.113.9\n", ["host", "not an address of this machine"]),
        ("serving: {host_class: GPU_H100}\n", ["serving.host_class", "pattern"]),
        ("ports: {mlflow: 8334}\n", ["clash on [8334]"]),
        ("model: {name: Bad_Name}\n", ["model.name", "pattern"]),
        ("- a\n- b\n", ["expected a mapping"]),
        ("ports: [\n", ["not valid YAML"]),
    ],
)
def test_bad_config_names_field_and_fix(tmp_path: Path, text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        load_stack_config(write(tmp_path, text))
    message = str(exc.value)
    for fragment in expected:
        assert fragment in message, message
    assert "fix:" in message


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_stack_config(write(tmp_path, "ports: {mlflow: abc}\nscaling: {min_replicas: 0}\n"))
    assert "ports.mlflow" in str(exc.value) and "scaling.min_replicas" in str(exc.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", StackConfig)


def test_state_dir_override_wins(tmp_path: Path) -> None:
    cfg = load_stack_config(write(tmp_path, "state_dir: /somewhere\n"), state_dir=tmp_path / "s")
    assert cfg.state_dir == (tmp_path / "s").resolve()


def test_the_stack_may_bind_to_an_address_of_this_machine(tmp_path: Path) -> None:
    """Test hosts in network namespaces reach the control plane on a bridge address, not on loopback."""
    import psutil

    ours = sorted(a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                  if a.family.name == "AF_INET" and not a.address.startswith("127."))
    assert ours, "this machine has no IPv4 address besides loopback"
    assert load_stack_config(write(tmp_path, f"host: {ours[0]}\n")).host == ours[0]
