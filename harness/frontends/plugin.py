"""pytest hooks and options (entry point `pytest11`): YAML cases become test items."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from harness.core.runner_table import REFERENCE_RUNNER, runner_names
from harness.frontends.collect import CASE_RECORD_PROPERTY, RESULTS_KEY, RUNNERS_KEY, CaseFile
from harness.judge.engine import case_location
from harness.judge.expected import describe_unchecked
from harness.run.execution import DEFAULT_TIMEOUT_S

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
        f"{REFERENCE_RUNNER} always runs, as the reference (default: each case's own list, else all)",
    )
    group.addoption(
        "--harness-baseline",
        metavar="PATH",
        default=None,
        help="at the end of the session, compare its results with this baseline results.json and fail "
        "the session when anything changed (as `python -m harness baseline compare`)",
    )
    group.addoption(
        "--harness-jobs",
        metavar="N",
        type=int,
        default=1,
        help="runners computing at once, one core each, each in its framework's worker process (default 1); "
        "across cases, use pytest-xdist's -n",
    )
    group.addoption(
        "--harness-timeout",
        metavar="SECONDS",
        type=float,
        default=None,
        help=f"seconds a runner may take on one case, unless the case sets its own (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.addini(
        "harness_case_dirs",
        type="args",
        default=["cases"],
        help="names of directories whose *.yaml files are collected as cases (default: cases)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS_KEY] = []
    config.pluginmanager.register(CaseRecordCollector(config), "bn-harness-case-records")
    jobs, timeout = config.getoption("harness_jobs"), config.getoption("harness_timeout")
    if jobs < 1 or (timeout is not None and not timeout > 0):
        raise pytest.UsageError(f"--harness-jobs must be at least 1 and --harness-timeout positive; got {jobs} and {timeout}")
    from harness.run import execution

    execution.configure(jobs=jobs, timeout_s=timeout)
    raw = config.getoption("harness_runners")
    if raw is None:
        config.stash[RUNNERS_KEY] = None
        return
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    unknown = [name for name in names if name not in runner_names()]
    if unknown or not names:
        raise pytest.UsageError(
            f"--harness-runners: unknown runner(s) {', '.join(unknown) or '(none given)'}; allowed: {', '.join(runner_names())}"
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


class CaseRecordCollector:
    """Collects each case's record from its call report, made here or sent by a pytest-xdist worker."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        import json

        for name, value in report.user_properties:
            if name == CASE_RECORD_PROPERTY:
                self.config.stash[RESULTS_KEY].append(json.loads(value))


def _finished(config: pytest.Config) -> list[dict]:
    """Every finished case, in file order and a grid's points in the grid's order, whichever
    worker ran it."""
    return sorted(config.stash.get(RESULTS_KEY, []), key=lambda entry: (entry["record"]["file"] or "", entry["position"]))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: the controller writes
        return
    target = session.config.getoption("harness_results")
    records = [entry["record"] for entry in _finished(session.config)]
    if target and records:
        from harness.report.record import document_of, write_document

        write_document(Path(target), document_of(records))
    baseline = session.config.getoption("harness_baseline")
    if baseline and records:
        from harness.report.baseline import compare_results, load_results
        from harness.report.record import document_of, plain_json

        comparison = compare_results(load_results(Path(baseline)), plain_json(document_of(records)))
        session.config.stash[BASELINE_KEY] = comparison
        if comparison.regressed:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    finished = _finished(config)
    if not finished:
        return
    terminalreporter.section("BatchNorm harness")
    for entry in finished:
        record = entry["record"]
        if record["outcome"] in ("invalid", "error"):
            terminalreporter.write_line(f"{record['outcome']:8} {record['file']}: see its failure above")
            continue
        known = Counter(c["other"] for c in record.get("comparisons", []) if c.get("classification") == "known")
        known_text = ", ".join(f"{runner} {count}" for runner, count in sorted(known.items())) or "none"
        not_run = [f"{name} ({run['status']})" for name, run in record.get("runners", {}).items() if run["status"] != "ok"]
        line = f"{record['outcome']:8} {case_location(record['file'], record['id'])}: known divergences: {known_text}"
        unchecked = describe_unchecked([entry["why"] for entry in record.get("unverified", [])])
        if unchecked:
            line += f"; {unchecked}"
        if not_run:
            line += f"; not ok: {', '.join(not_run)}"
        terminalreporter.write_line(line)
        if config.get_verbosity() > 0 and entry["known"]:
            terminalreporter.write_line("    " + entry["known"].replace("\n", "\n    "))
    unchecked = sum(len(entry["record"].get("unverified", [])) for entry in finished)
    if unchecked:
        terminalreporter.write_line(f"{unchecked} expectation(s) not checked (their runners were not selected or skipped)")
    target = config.getoption("harness_results")
    if target:
        terminalreporter.write_line(f"results written to {target}")
    comparison = config.stash.get(BASELINE_KEY, None)
    if comparison is not None:
        terminalreporter.section("against the baseline")
        terminalreporter.write_line(comparison.report())
