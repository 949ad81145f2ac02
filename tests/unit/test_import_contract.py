"""Layering is enforced by import-linter: the core never imports prefect, flows or tasks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_contracts_hold() -> None:
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 2 kept, 0 broken" in r.stdout, r.stdout


def test_contract_catches_a_core_module_importing_prefect(tmp_path: Path) -> None:
    # A copy of the layout with one violating module: the same contract must fail on it.
    for pkg in ("llmops", "flows", "tasks", "infra"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "llmops" / "bad.py").write_text("import prefect\n")
    (tmp_path / "flows" / "f.py").write_text("import tasks\n")
    (tmp_path / "tasks" / "t.py").write_text("import llmops\n")
    (tmp_path / "infra" / "stack").mkdir()
    (tmp_path / "infra" / "stack" / "__init__.py").write_text("")
    (tmp_path / "infra" / "stack" / "launcher.py").write_text("")
    (tmp_path / "llmops" / "cli.py").write_text("import infra.stack.launcher\n")  # the one allowed edge
    pyproject = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(pyproject[pyproject.index("[tool.importlinter]"):])
    r = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode != 0, r.stdout
    assert "llmops.bad -> prefect" in r.stdout, r.stdout


def test_mlflow_config_dir_cannot_shadow_the_package() -> None:
    assert not (ROOT / "mlflow" / "__init__.py").exists()
    import mlflow

    assert "site-packages" in str(Path(mlflow.__file__))
