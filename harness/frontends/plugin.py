"""pytest hooks and options (entry point `pytest11`): YAML cases become test items."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.core.errors import HarnessError
from harness.core.records import CaseRecord, ResultsDocument
from harness.core.runner_table import REFERENCE_RUNNER, graph_runner_names, parse_runner_names, runner_names
from harness.frontends.collect import CASE_RECORD_PROPERTY, RECOGNISED_CASE_DIR, SESSION_KEY, CaseFile, display_path, looks_like_a_case
from harness.frontends.session import Session, known_divergence_lines, parting_lines, summary_line, totals_line
from harness.report.baseline import BaselineComparison, compare_results, load_results
from harness.report.record import check_output_path, document_of, write_document
from harness.report.render import report_path, write_report
from harness.run import execution
from harness.run.execution import DEFAULT_TIMEOUT_S

BASELINE_KEY = pytest.StashKey[BaselineComparison]()  # of --harness-baseline
BASELINE_DOCUMENT_KEY = pytest.StashKey[ResultsDocument]()


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
        help=f"comma-separated runners to run, of: {', '.join((*runner_names(), *graph_runner_names()))}; "
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
        default=None,
        help="the project's opt-in: names of directories whose every *.yaml file is a case (a malformed one fails "
        f"as a case). Unset: only YAML files under folders named {RECOGNISED_CASE_DIR} that look like cases, and "
        "any YAML file named on the command line",
    )


def pytest_configure(config: pytest.Config) -> None:
    jobs, timeout = config.getoption("harness_jobs"), config.getoption("harness_timeout")
    if jobs < 1 or (timeout is not None and not timeout > 0):
        raise pytest.UsageError(f"--harness-jobs must be at least 1 and --harness-timeout positive; got {jobs} and {timeout}")
    raw = config.getoption("harness_runners")
    try:
        only = None if raw is None else parse_runner_names(raw)
    except HarnessError as error:
        raise pytest.UsageError(f"--harness-runners: {error}") from None
    target = config.getoption("harness_results")
    if target and not hasattr(config, "workerinput"):  # the controller writes it
        try:
            check_output_path(Path(target))
        except HarnessError as error:
            raise pytest.UsageError(f"--harness-results: {error}") from None
    baseline = config.getoption("harness_baseline")
    if baseline and not hasattr(config, "workerinput"):  # read up front: a bad path is a usage error, not a crash at the end
        try:
            config.stash[BASELINE_DOCUMENT_KEY] = load_results(Path(baseline))
        except HarnessError as error:
            raise pytest.UsageError(f"--harness-baseline: {error}") from None
    execution.configure(jobs=jobs, timeout_s=timeout)
    config.stash[SESSION_KEY] = Session(only)
    config.stash[FINISHED_KEY] = []
    config.pluginmanager.register(CaseRecordCollector(config), "bn-harness-case-records")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> CaseFile | None:
    """A YAML file is a case when named on the command line, when it lies under a folder the project
    opted in (ini harness_case_dirs), or, in a project that did not opt in, when it lies under a
    folder named `cases` and looks like a case: other projects' `cases/` folders are not ours."""
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    if parent.session.isinitpath(file_path):
        return CaseFile.from_parent(parent, path=file_path)
    opted_in = parent.config.getini("harness_case_dirs")
    # The folders inside the project: a checkout that lies under some folder named `cases` is not a case folder.
    root = parent.config.rootpath
    folders = (file_path.relative_to(root) if file_path.is_relative_to(root) else file_path.relative_to(file_path.anchor)).parent.parts
    if opted_in is not None:
        return CaseFile.from_parent(parent, path=file_path) if any(part in opted_in for part in folders) else None
    if RECOGNISED_CASE_DIR not in folders:
        return None
    if looks_like_a_case(file_path):
        return CaseFile.from_parent(parent, path=file_path)
    parent.config.stash.setdefault(PASSED_OVER_KEY, []).append(file_path)
    return None


@dataclass(frozen=True, slots=True)
class FinishedCase:
    """A case's record as its call report carried it (made here or by a pytest-xdist worker)."""

    record: CaseRecord
    known: str  # the explanation of its known divergences, shown with -v
    position: int  # in its file: a grid's points keep the grid's order


class CaseRecordCollector:
    """Collects each case's record from its call report, made here or sent by a pytest-xdist worker."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == CASE_RECORD_PROPERTY:
                entry = json.loads(str(value))
                finished = FinishedCase(CaseRecord.from_json(entry["record"]), entry["known"], entry["position"])
                self.config.stash[FINISHED_KEY].append(finished)


def _finished(config: pytest.Config) -> list[FinishedCase]:
    """Every finished case, in file order and a grid's points in the grid's order, whichever
    worker ran it."""
    finished: list[FinishedCase] = config.stash.get(FINISHED_KEY, [])
    return sorted(finished, key=lambda entry: (entry.record.file or "", entry.position))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: the controller writes
        return
    records = [entry.record for entry in _finished(session.config)]
    if not records:
        return
    document = document_of(records)
    baseline = session.config.stash.get(BASELINE_DOCUMENT_KEY, None)
    target = session.config.getoption("harness_results")
    if target:  # results.json, and the report beside it as the CLI writes them
        try:
            write_document(Path(target), document)
            write_report(document, report_path(Path(target)), baseline)
        except HarnessError as error:  # the path changed since configure checked it
            session.config.stash[HINT_KEY] = f"--harness-results: not written: {error}"
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
    if baseline is not None:
        comparison = compare_results(baseline, document)
        session.config.stash[BASELINE_KEY] = comparison
        if comparison.regressed:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_finish(session: pytest.Session) -> None:
    """Nothing collected from a folder of YAML files: say where cases are looked for (pytest
    itself only exits with 5)."""
    opted_in = session.config.getini("harness_case_dirs")
    rule = (
        f"case files are collected under folders named {', '.join(opted_in)} (ini option harness_case_dirs), "
        "and when named on the command line"
        if opted_in is not None
        else "this project has not opted in (ini option harness_case_dirs), so only the YAML files under folders named "
        f"{RECOGNISED_CASE_DIR} that look like cases (a top-level description with model and bn, or with onnx_graph or "
        "onnx_backend_test) are collected, and any YAML file named on the command line"
    )
    passed_over = session.config.stash.get(PASSED_OVER_KEY, [])
    if any(isinstance(item.parent, CaseFile) for item in session.items):
        if passed_over:  # the harness is used without the opt-in: a malformed case may be among these
            names = ", ".join(display_path(path, session.config.rootpath) for path in passed_over[:3])
            more = f" and {len(passed_over) - 3} more" if len(passed_over) > 3 else ""
            session.config.stash[HINT_KEY] = f"{len(passed_over)} YAML file(s) not collected ({names}{more}): {rule}"
        return
    if session.items:
        return
    folders = [arg for arg in session.config.args if Path(arg).is_dir() and next(Path(arg).rglob("*.yaml"), None) is not None]
    if folders:
        session.config.stash[HINT_KEY] = f"no bn-harness case collected from {', '.join(folders)}: {rule}"


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    hint = config.stash.get(HINT_KEY, None)
    if hint:
        terminalreporter.write_line(hint)
    finished = _finished(config)
    if not finished:
        return
    terminalreporter.section("BatchNorm harness")
    for entry in finished:
        line = summary_line(entry.record)
        if entry.record.outcome in ("invalid", "error"):
            line += ": see its failure above"
        terminalreporter.write_line(line)
        for parting in parting_lines(entry.record):
            terminalreporter.write_line("    " + parting)
        if config.get_verbosity() > 1 and entry.known:  # -vv: the whole verdicts
            terminalreporter.write_line("    " + entry.known.replace("\n", "\n    "))
        elif config.get_verbosity() == 1:
            for known in known_divergence_lines(entry.record):
                terminalreporter.write_line("    " + known)
    terminalreporter.write_line(totals_line([entry.record for entry in finished]))
    target = config.getoption("harness_results")
    if target:
        terminalreporter.write_line(f"results written to {target}, the report to {report_path(Path(target))}")
    comparison = config.stash.get(BASELINE_KEY, None)
    if comparison is not None:
        terminalreporter.section("against the baseline")
        terminalreporter.write_line(comparison.report())
        if comparison.regressed:  # the cases may all pass: say why the session fails
            terminalreporter.write_line(
                f"the session fails: {len(comparison.changes)} change(s) against the baseline {config.getoption('harness_baseline')}",
                red=True,
            )


FINISHED_KEY = pytest.StashKey[list[FinishedCase]]()
HINT_KEY = pytest.StashKey[str]()
PASSED_OVER_KEY = pytest.StashKey[list[Path]]()  # YAML files under a `cases` folder that do not look like cases
