"""The CI workflows call the harness as a user would: each command they run must be one the CLI accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from harness.frontends import cli

NIGHTLY = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "nightly.yml"


def _harness_commands(workflow: dict, values: dict[str, str]) -> list[list[str]]:
    """The arguments of every `bn-harness` call in the workflow's run steps, with `${{ matrix.x }}` set."""
    calls = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in str(step.get("run", "")).splitlines():
                line = re.sub(r"\$\{\{\s*matrix\.(\w+)\s*\}\}", lambda match: values[match.group(1)], line)
                words = shlex.split(line)
                if words and words[0].endswith("bn-harness"):
                    calls.append(words[1:])
    return calls


def test_the_nightly_runs_every_shard_then_merges_all_of_them():
    workflow = yaml.safe_load(NIGHTLY.read_text())
    shards = workflow["jobs"]["case-library"]["strategy"]["matrix"]["shard"]
    parser = cli.build_parser()
    runs, merges = [], []
    for shard in shards:
        for args in _harness_commands(workflow, {"shard": str(shard), "versions": "pinned"}):
            parsed = parser.parse_args(args)  # exits on a command the CLI does not accept
            (runs if parsed.command == "run" else merges if parsed.command == "merge" else []).append(parsed)
    assert sorted(parsed.shard for parsed in runs) == [(shard, len(shards)) for shard in shards]
    merged = {str(path) for path in merges[0].shards}
    assert merged == {f"shards/{parsed.results.name}" for parsed in runs}, "the merge takes every shard's results"
    uploaded = workflow["jobs"]["merge"]["steps"]
    assert any("reports/report.html" in str(step.get("with", {}).get("path", "")) for step in uploaded), "the report is uploaded"


@pytest.mark.parametrize("versions", ["pinned", "latest"])
def test_the_nightly_compares_both_version_sets_with_the_baseline(versions):
    workflow = yaml.safe_load(NIGHTLY.read_text())
    assert versions in workflow["jobs"]["merge"]["strategy"]["matrix"]["versions"]
    compares = [args for args in _harness_commands(workflow, {"shard": "1", "versions": versions}) if args[:2] == ["baseline", "compare"]]
    assert [cli.build_parser().parse_args(args).everything for args in compares] == [True], "a full run compares everything"
