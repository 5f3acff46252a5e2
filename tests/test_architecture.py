"""The stages' direction (core -> load -> run -> judge -> report -> frontends), kept by
import-linter's layers contract in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("importlinter")


def lint_imports(project: Path) -> subprocess.CompletedProcess:
    """lint-imports on the `harness` package under `project`, with `project`'s pyproject.toml."""
    command = [
        sys.executable,
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
        "--config",
        str(project / "pyproject.toml"),
        "--no-cache",
    ]
    return subprocess.run(command, cwd=project, env={"PYTHONPATH": str(project), "PATH": ""}, capture_output=True, text=True, timeout=120)


def test_no_stage_imports_a_later_one():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_backward_import_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "harness", tmp_path / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    planted = tmp_path / "harness" / "core" / "errors.py"
    planted.write_text(planted.read_text() + "\nfrom harness.report import record  # noqa: E402,F401  planted\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "harness.core.errors -> harness.report.record" in result.stdout


def test_ruff_formats_and_lints_clean():
    pytest.importorskip("ruff")
    from ruff.__main__ import find_ruff_bin

    ruff = find_ruff_bin()
    for command in ([ruff, "format", "--check", "harness", "tests", "benchmarks"], [ruff, "check", "harness", "tests", "benchmarks"]):
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow  # about 20 s: mypy reads every stage
def test_the_whole_package_type_checks():
    """The later stages under pyproject.toml's own settings (run is not checked yet): a wrong type
    passed between modules fails here, not in a user's run."""
    api = pytest.importorskip("mypy.api")
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), str(ROOT / "harness")])
    assert status == 0, stdout + stderr


def test_the_core_type_checks_strictly():
    api = pytest.importorskip("mypy.api")
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), str(ROOT / "harness" / "core")])
    assert status == 0, stdout + stderr
