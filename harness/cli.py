"""`python -m harness run`: the main job without pytest: run the cases, print a summary, write
results.json."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from harness.engine import CaseResult, explain_known, run_case
from harness.errors import CaseError, HarnessError
from harness.runners import runner_names
from harness.schema import load_case


def case_files(paths: Sequence[Path]) -> Iterator[Path]:
    """The YAML files named, and those under the directories named, in sorted order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        else:
            yield path


def run_file(path: Path, only: Sequence[str] | None) -> CaseResult:
    """Load and run one case file; a bad file or a harness bug becomes that case's result only."""
    try:
        case = load_case(path, display_path=str(path))
    except CaseError as error:
        return CaseResult(path.stem, str(path), "invalid", error=str(error))
    try:
        return run_case(case, only)
    except HarnessError as error:
        return CaseResult(case.case_id, case.path, "error", case.description, error=str(error))
    except Exception:  # a bug in the harness: keep the traceback, go on with the other cases
        return CaseResult(case.case_id, case.path, "error", case.description, error=traceback.format_exc())


def summary_line(result: CaseResult) -> str:
    """`passed  cases/x.yaml  known 6, agree 120; onnx-dynamo-ort: skipped (...)`."""
    if result.classification is None:
        return f"{result.outcome:8} {result.path}"
    known = len(result.classification.known)
    agree = sum(1 for verdict in result.verdicts if verdict)
    text = f"{result.outcome:8} {result.path}  known divergences {known}, agreeing comparisons {agree}"
    not_ok = [f"{run.runner}: {run.status}" for run in result.runs if run.status != "ok"]
    return text + (f"; {', '.join(not_ok)}" if not_ok else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run case files and write results.json")
    run.add_argument("paths", nargs="*", type=Path, default=[Path("cases")], help="case files or directories (default: cases)")
    run.add_argument("--results", type=Path, default=Path("reports/results.json"), help="where to write results.json")
    run.add_argument("--runners", default=None, help=f"comma-separated subset of: {', '.join(runner_names())}")
    run.add_argument("-v", "--verbose", action="store_true", help="also print every known divergence with its reason")
    args = parser.parse_args(argv)

    only = None
    if args.runners:
        only = tuple(name.strip() for name in args.runners.split(",") if name.strip())
        unknown = [name for name in only if name not in runner_names()]
        if unknown:
            parser.error(f"--runners: unknown {', '.join(unknown)}; allowed: {', '.join(runner_names())}")
    files = list(case_files(args.paths))
    if not files:
        parser.error(f"no case files (*.yaml) under {', '.join(map(str, args.paths))}")

    from harness.record import write_results

    results = []
    for path in files:
        result = run_file(path, only)
        results.append(result)
        print(summary_line(result), flush=True)
        if result.outcome in ("failed", "invalid", "error"):
            print(_indent(result.explain()), flush=True)
        if args.verbose and result.classification is not None and result.classification.known:
            print(_indent(explain_known(result.classification)), flush=True)
        # Rewritten after each case, atomically: a run stopped halfway keeps what it finished.
        write_results(args.results, results)
    counts = Counter(result.outcome for result in results)
    print(f"results written to {args.results}")
    print(", ".join(f"{counts.get(name, 0)} {name}" for name in ("passed", "failed", "skipped", "invalid", "error")))
    return 0 if all(result.outcome in ("passed", "skipped") for result in results) else 1


def _indent(text: str) -> str:
    return "    " + text.replace("\n", "\n    ")


if __name__ == "__main__":
    sys.exit(main())
