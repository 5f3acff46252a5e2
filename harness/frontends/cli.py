"""`bn-harness run` (or `python -m harness run`): the main job without pytest: run the cases, print
a summary, write results.json and the HTML report. `bn-harness baseline compare OLD NEW`: the
nightly regression check. `bn-harness merge SHARDS`: one run's results from its shards.
`bn-harness matrix FILES`: the version matrix side by side."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from harness.core.case import Case
from harness.core.errors import HarnessError
from harness.core.runner_table import graph_runner_names, parse_runner_names, runner_names
from harness.frontends.progress import Progress
from harness.frontends.session import Session, known_divergence_lines, parting_lines, split_case_id, summary_line, totals_line
from harness.judge.engine import explain_known
from harness.load.schema import load_cases
from harness.report.baseline import DEFAULT_MAGNITUDE_FACTOR, compare_results, load_results, write_baseline
from harness.report.matrix import load_documents, matrix_table
from harness.report.merge import merge_shards, update_baseline
from harness.report.record import (
    Journal,
    ResultsLock,
    ResultsLocked,
    case_record,
    check_output_path,
    read_journal,
    write_document,
    write_results,
)
from harness.report.render import report_path, write_report
from harness.report.repro import bundle_runners, write_bundle, write_graph_bundle
from harness.run import execution
from harness.run.execution import DEFAULT_TIMEOUT_S


def case_files(paths: Sequence[Path]) -> Iterator[Path]:
    """The YAML files named (or `file::case id`), and those under the directories named, in sorted order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        else:
            yield path


def journal_path(results: Path) -> Path:
    """`reports/results.json` -> `reports/results.jsonl`."""
    return results.with_suffix(".jsonl")


def _command(function: Callable[..., int]) -> Callable[..., int]:
    """A subcommand whose HarnessError (bad input: an unreadable file, a path that cannot be
    written) is one line on stderr and exit status 2, never a traceback."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> int:
        try:
            return function(*args, **kwargs)
        except HarnessError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return run


@_command
def recover_from_journal(journal: Path, results: Path, report: Path) -> int:
    """`python -m harness recover JOURNAL`: results.json and the report of the cases a run finished."""
    document, dropped = read_journal(journal)
    write_document(results, document)
    cut = f"; left out line {dropped[0]}, cut short by the end of the run" if dropped else ""
    print(f"{len(document.cases)} finished case(s) from {journal}{cut}; results written to {results}")
    return render_report_file(results, report)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds; got {text}")
    return value


def _shard(text: str) -> tuple[int, int]:
    """`2/4` -> (2, 4): the second of four shards."""
    index, _, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be I/N, e.g. 1/4; got {text}") from None
    if not 1 <= shard[0] <= shard[1]:
        raise argparse.ArgumentTypeError(f"must be I/N with 1 <= I <= N; got {text}")
    return shard


def _program_name() -> str:
    """`bn-harness` when run as the console script, else `python -m harness`."""
    return "bn-harness" if os.path.basename(sys.argv[0]) == "bn-harness" else "python -m harness"


def build_parser() -> argparse.ArgumentParser:
    """The command line: run, recover, merge, report, baseline compare|save|update, matrix, repro."""
    parser = argparse.ArgumentParser(prog=_program_name(), description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run case files and write results.json")
    run.add_argument(
        "paths",
        nargs="*",
        type=Path,
        default=[Path("cases")],
        help="case files, directories, or FILE::CASE_ID for one point of a grid (default: cases)",
    )
    run.add_argument("--results", type=Path, default=Path("reports/results.json"), help="where to write results.json")
    run.add_argument("--runners", default=None, help=f"comma-separated subset of: {', '.join((*runner_names(), *graph_runner_names()))}")
    run.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="also print each known divergence on a line with its reason; -vv: their whole verdicts",
    )
    run.add_argument(
        "--report",
        type=Path,
        default=None,
        help="where to write the HTML report at the end (default: beside --results, named after it; report.html for results.json)",
    )
    run.add_argument("-j", "--jobs", type=_positive_int, default=1, help="runners computing at once, one core each (default 1)")
    run.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        help=f"seconds a runner may take on one case, unless the case sets its own (default {DEFAULT_TIMEOUT_S:g})",
    )
    run.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a baseline results.json: the report's summary says what changed against it (compare it with: baseline compare)",
    )
    run.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="I/N",
        help="run the I-th of N shards of the case files (every N-th file, from the I-th); combine the shards' results with merge",
    )
    recover = commands.add_parser("recover", help="rebuild results.json and the report from a run's journal (a killed run)")
    recover.add_argument("journal", type=Path, help="the results.jsonl a run appends to as each case finishes")
    recover.add_argument("--results", type=Path, default=Path("reports/results.json"), help="default: reports/results.json")
    recover.add_argument("--report", type=Path, default=None, help="default: beside --results, named after it")
    merge = commands.add_parser("merge", help="one results.json (and its report) from the results of a run's shards")
    merge.add_argument("shards", type=Path, nargs="+", help="the results.json of each shard")
    merge.add_argument("-o", "--output", type=Path, required=True, help="the merged results.json; the report is written beside it")
    merge.add_argument("--baseline", type=Path, default=None, help="the report's summary says what changed against this baseline")
    report = commands.add_parser("report", help="render the HTML report of a results.json")
    report.add_argument("results", type=Path, help="a results.json")
    report.add_argument("-o", "--output", type=Path, default=None, help="default: beside the results, named after them")
    report.add_argument("--baseline", type=Path, default=None, help="the summary says what changed against this baseline")
    baseline = commands.add_parser("baseline", help="compare results with a stored baseline")
    baseline_commands = baseline.add_subparsers(dest="baseline_command", required=True)
    compare = baseline_commands.add_parser("compare", help="what changed from OLD to NEW; exit 1 when anything did")
    compare.add_argument("old", type=Path, help="the baseline results.json")
    compare.add_argument("new", type=Path, help="the new results.json")
    compare.add_argument(
        "--all",
        action="store_true",
        dest="everything",
        help="also the cases and runners of the baseline that NEW did not run (as gone, vanished); default: only what both ran",
    )
    compare.add_argument(
        "--factor",
        type=float,
        default=DEFAULT_MAGNITUDE_FACTOR,
        help=f"report a divergence whose greatest difference moved by more than this factor (default {DEFAULT_MAGNITUDE_FACTOR})",
    )
    save = baseline_commands.add_parser("save", help="keep what a baseline needs of a results.json")
    save.add_argument("results", type=Path, help="a results.json")
    save.add_argument("-o", "--output", type=Path, required=True, help="the baseline to write (the committed one is reports/baseline.json)")
    update = baseline_commands.add_parser(
        "update", help="merge a run of some cases or runners into a baseline: what the run ran replaces the baseline's"
    )
    update.add_argument("baseline", type=Path, help="the baseline to update in place")
    update.add_argument("results", type=Path, help="a results.json of the cases and runners to update")
    matrix = commands.add_parser("matrix", help="several results.json side by side (the version matrix)")
    matrix.add_argument("results", type=Path, nargs="+", help="results.json files, e.g. reports/matrix/*.json")
    matrix.add_argument("--all", action="store_true", help="also the rows that are the same everywhere")
    repro = commands.add_parser("repro", help="write repro bundles for a case's exporter and Keras divergences")
    repro.add_argument("case", type=Path, help="a case file")
    repro.add_argument("-o", "--output", type=Path, default=Path("reports/repro"), help="default: reports/repro")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "repro":
        return write_repro_bundles(args.case, args.output)
    if args.command == "matrix":
        return print_matrix(args.results, args.all)
    if args.command == "baseline" and args.baseline_command == "save":
        return save_baseline(args.results, args.output)
    if args.command == "baseline" and args.baseline_command == "update":
        return update_baseline_file(args.baseline, args.results)
    if args.command == "merge":
        return merge_results(args.shards, args.output, args.baseline)
    if args.command == "baseline":
        return compare_baseline(args.old, args.new, args.factor, args.everything)
    if args.command == "report":
        return render_report_file(args.results, args.output or report_path(args.results), args.baseline)
    if args.command == "recover":
        return recover_from_journal(args.journal, args.results, args.report or report_path(args.results))

    only = None
    if args.runners:
        try:
            only = parse_runner_names(args.runners)
        except HarnessError as error:
            parser.error(f"--runners: {error}")
    missing = [str(path) for path in args.paths if not split_case_id(path)[0].exists()]
    if missing:  # a typo: refused before it can replace the last run's results with one invalid case
        parser.error(f"no such file or directory: {', '.join(missing)}")
    if args.baseline is not None:  # read before the run: a bad baseline must not cost a whole run's report
        if not args.baseline.is_file():
            parser.error(f"--baseline: no such file: {args.baseline}")
        try:
            load_results(args.baseline)
        except HarnessError as error:
            parser.error(f"--baseline: {error}")
    files = list(case_files(args.paths))
    if not files:
        parser.error(f"no case files (*.yaml) under {', '.join(map(str, args.paths))}")
    if args.shard is not None:  # whole files: a grid's points stay together, in order, for merge
        index, count = args.shard
        files = files[index - 1 :: count]
        print(f"shard {index}/{count}: {len(files)} case file(s)", flush=True)
    for output in (args.results, journal_path(args.results), args.report or report_path(args.results)):
        try:
            check_output_path(output)
        except HarnessError as error:
            parser.error(str(error))
    try:
        with ResultsLock(args.results):
            return run_command(files, only, args)
    except ResultsLocked as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run_command(files: Sequence[Path], only: Sequence[str] | None, args: argparse.Namespace) -> int:
    """`python -m harness run`: every case through one session, each result journaled and printed
    as it comes, then results.json, the report and the totals."""
    execution.configure(jobs=args.jobs, timeout_s=args.timeout)
    session = Session(only)
    results = []
    journal = Journal(journal_path(args.results))
    in_main_thread = threading.current_thread() is threading.main_thread()  # where Python delivers signals
    previous = signal.signal(signal.SIGTERM, _stop_on_signal) if in_main_thread else None
    planned = [item for path in files for item in session.load(path)]
    progress = Progress(len(planned))
    progress.start()
    try:
        for result in session.run(planned):
            results.append(result)
            journal.append(result)  # a run killed halfway keeps every finished case
            progress.before_output()
            record = case_record(result)
            print(summary_line(record), flush=True)
            if result.outcome in ("failed", "invalid", "error"):
                print(_indent(result.explain()), flush=True)  # the first parting BatchNorms lead it
            else:
                for line in parting_lines(record):
                    print(_indent(line), flush=True)
            if args.verbose > 1 and result.classification is not None and result.classification.known:
                print(_indent(explain_known(result.classification)), flush=True)
            elif args.verbose == 1:
                for line in known_divergence_lines(case_record(result)):
                    print(_indent(line), flush=True)
            progress.advance()
    except (KeyboardInterrupt, Stopped) as stop:
        progress.finish()
        signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
        execution.shutdown()  # every worker, busy or not, before the line that says the run is over
        print(
            f"stopped by {signal.Signals(signum).name}: {len(results)} case(s) finished, kept in {journal.path}; "
            f"rebuild results.json and the report from it with: python -m harness recover {journal.path} --results {args.results}",
            file=sys.stderr,
        )
        return 128 + signum
    finally:
        progress.finish()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        journal.close()
    write_results(args.results, results)
    print(f"results written to {args.results} (journal: {journal.path})")
    render_report_file(args.results, args.report or report_path(args.results), args.baseline)
    print(totals_line([case_record(result) for result in results]))
    return 0 if all(result.outcome in ("passed", "skipped") for result in results) else 1


class Stopped(BaseException):
    """SIGTERM arrived: end the run as Ctrl-C does (workers stopped, the journal kept). A
    BaseException, as KeyboardInterrupt: the pipeline turns an Exception into its case's result."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on_signal(signum: int, frame: object) -> None:
    raise Stopped(signum)


@_command
def write_repro_bundles(path: Path, output: Path) -> int:
    """`python -m harness repro CASE`: run the case, write one bundle per exporter or Keras runner that diverged."""
    session = Session()
    path, wanted = split_case_id(path)
    for case in load_cases(path, display_path=str(path)):  # each point of a grid, or the one named
        if wanted is not None and case.case_id != wanted:
            continue
        result = session.run_case(case)
        if not isinstance(case, Case):
            print(f"repro bundle written to {write_graph_bundle(case, result, output)} (run: python repro.py)")
            continue
        runners = bundle_runners(result)
        if not runners:
            print(f"{case.case_id}: no exporter or Keras runner diverged: nothing to reproduce")
            continue
        for runner in runners:
            print(f"repro bundle written to {write_bundle(case, result, runner, output)} (run: python repro.py)")
    return 0


@_command
def print_matrix(paths: Sequence[Path], everything: bool) -> int:
    """`python -m harness matrix reports/matrix/*.json`: which divergence appears in which versions."""
    print(matrix_table(load_documents(paths), everything))
    return 0


@_command
def render_report_file(results: Path, output: Path, baseline: Path | None = None) -> int:
    """`bn-harness report results.json [--baseline reports/baseline.json]`."""
    write_report(load_results(results), output, None if baseline is None else load_results(baseline))
    print(f"report written to {output}")
    return 0


@_command
def save_baseline(results: Path, output: Path) -> int:
    """`python -m harness baseline save results.json -o reports/baseline.json`."""
    document = load_results(results)
    write_baseline(document, output)
    divergences = sum(len(case.divergences) for case in document.cases)
    print(f"baseline written to {output}: {len(document.cases)} cases, {divergences} divergences")
    return 0


@_command
def update_baseline_file(baseline: Path, results: Path) -> int:
    """`bn-harness baseline update reports/baseline.json results.json`: the cases and runners a
    run ran replace theirs in the baseline; the rest stays."""
    update = update_baseline(baseline, load_results(baseline), results, load_results(results))
    write_baseline(update.document, baseline)
    print(f"baseline {baseline} updated from {results}: {update.summary()}")
    return 0


@_command
def merge_results(shards: Sequence[Path], output: Path, baseline: Path | None = None) -> int:
    """`bn-harness merge shard-*/results.json -o reports/results.json`, then its report."""
    check_output_path(output)
    document = merge_shards([(path, load_results(path)) for path in shards])
    write_document(output, document)
    print(f"{len(document.cases)} case(s) from {len(shards)} shard(s); results written to {output}")
    return render_report_file(output, report_path(output), baseline)


@_command
def compare_baseline(old: Path, new: Path, factor: float, everything: bool = False) -> int:
    """`python -m harness baseline compare OLD NEW`: print the changes; 1 when there are any."""
    comparison = compare_results(load_results(old), load_results(new), factor, everything)
    print(comparison.report())
    return 1 if comparison.regressed else 0


def _indent(text: str) -> str:
    return "    " + text.replace("\n", "\n    ")


if __name__ == "__main__":
    sys.exit(main())
