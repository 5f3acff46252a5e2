"""pytest hooks and options (entry point `pytest11`): YAML cases become test items."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from harness.collect import RESULTS_KEY, RUNNERS_KEY, CaseFile
from harness.engine import explain_known
from harness.runners import runner_names

BASELINE_KEY = pytest.StashKey["object"]()  # the BaselineComparison of --harness-baseline


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "BatchNorm differential harness")
    group.addoption(
        "--harness-results",
        metavar="PATH",
        default=None,
        help="write the results of the cases run (results.json) to PATH at the end of the session",
    )
    group.addoption(
        "--harness-runners",
        metavar="NAMES",
        default=None,
        help=f"comma-separated runners to run, of: {', '.join(runner_names())}; "
        "torch-eager always runs, as the reference (default: each case's own list, else all)",
    )
    group.addoption(
        "--harness-baseline",
        metavar="PATH",
        default=None,
        help="at the end of the session, compare its results with this baseline results.json and fail "
        "the session when anything changed (as `python -m harness baseline compare`)",
    )
    parser.addini(
        "harness_case_dirs",
        type="args",
        default=["cases"],
        help="names of directories whose *.yaml files are collected as cases (default: cases)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS_KEY] = []
    raw = config.getoption("harness_runners")
    if raw is None:
        config.stash[RUNNERS_KEY] = None
        return
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    unknown = [name for name in names if name not in runner_names()]
    if unknown or not names:
        raise pytest.UsageError(
            f"--harness-runners: unknown runner(s) {', '.join(unknown) or '(none given)'}; "
            f"allowed: {', '.join(runner_names())}"
        )
    config.stash[RUNNERS_KEY] = names


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> CaseFile | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    case_dirs = parent.config.getini("harness_case_dirs")
    in_case_dir = any(part in case_dirs for part in file_path.relative_to(file_path.anchor).parent.parts)
    if in_case_dir or parent.session.isinitpath(file_path):
        return CaseFile.from_parent(parent, path=file_path)
    return None


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = session.config.getoption("harness_results")
    results = session.config.stash.get(RESULTS_KEY, [])
    if target and results:
        from harness.record import write_results

        write_results(Path(target), results)
    baseline = session.config.getoption("harness_baseline")
    if baseline and results:
        from harness.baseline import compare_results, load_results
        from harness.record import results_record

        comparison = compare_results(load_results(Path(baseline)), results_record(results))
        session.config.stash[BASELINE_KEY] = comparison
        if comparison.regressed:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    results = config.stash.get(RESULTS_KEY, [])
    if not results:
        return
    terminalreporter.section("BatchNorm harness")
    for result in results:
        if result.outcome in ("invalid", "error"):
            terminalreporter.write_line(f"{result.outcome:8} {result.path}: see its failure above")
            continue
        known = Counter(verdict.other for verdict, _ in result.classification.known) if result.classification else Counter()
        known_text = ", ".join(f"{runner} {count}" for runner, count in sorted(known.items())) or "none"
        not_run = [f"{run.runner} ({run.status})" for run in result.runs if run.status != "ok"]
        line = f"{result.outcome:8} {result.path}: known divergences: {known_text}"
        if not_run:
            line += f"; not ok: {', '.join(not_run)}"
        terminalreporter.write_line(line)
        if config.get_verbosity() > 0 and result.classification is not None and result.classification.known:
            terminalreporter.write_line("    " + explain_known(result.classification).replace("\n", "\n    "))
    target = config.getoption("harness_results")
    if target:
        terminalreporter.write_line(f"results written to {target}")
    comparison = config.stash.get(BASELINE_KEY, None)
    if comparison is not None:
        terminalreporter.section("against the baseline")
        terminalreporter.write_line(comparison.report())
