"""The one pipeline every front end drives: load -> warm -> submit -> seal -> judge -> record.

`python -m harness run` loads every file, starts all of it at once and takes the results in file
order; a pytest item runs its one case through the same session; `python -m harness repro` too.
A bad file or a harness bug becomes that case's result, never the end of the run. The summary
line of a case is written here once, for the command line and pytest's terminal summary alike.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.case import Case, GraphCase
from harness.core.errors import CaseError, HarnessError
from harness.core.records import CaseRecord, parting_summary
from harness.judge.engine import CaseResult, NothingSelected, case_location, judge, select_runners
from harness.judge.expected import describe_unchecked
from harness.load.schema import load_cases
from harness.run.execution import Executor, default_executor


@dataclass(frozen=True, slots=True)
class PlannedCase:
    """A loaded case and the runners it runs, the reference first."""

    case: Case | GraphCase
    runners: tuple[str, ...]


Loaded = PlannedCase | CaseResult  # a case to run, or the result of one that cannot run (invalid, unknown id)


def split_case_id(path: Path) -> tuple[Path, str | None]:
    """`cases/x.yaml::x[eps_0.1]` (one point of a grid, as pytest and the summary name it) ->
    (the file, the case id); a plain path -> (the path, None)."""
    file, separator, case_id = str(path).partition("::")
    return (Path(file), case_id) if separator else (path, None)


class Session:
    """One run of cases on the process's executor, narrowed to the runners `only` names."""

    def __init__(self, only: Sequence[str] | None = None) -> None:
        self.only = None if only is None else tuple(only)

    @property
    def executor(self) -> Executor:
        """The process's executor at the time of use: `execution.configure` replaces it (the
        command line's --jobs, a test's settings), and a session outlives that."""
        return default_executor()

    def load(self, path: Path) -> list[Loaded]:
        """The cases of one file (or of `file::case id`, one of them), each with its runners."""
        path, wanted = split_case_id(path)
        try:
            cases = load_cases(path, display_path=str(path))
        except CaseError as error:
            return [CaseResult(path.stem, str(path), "invalid", error=str(error))]
        if wanted is not None:
            chosen = tuple(case for case in cases if case.case_id == wanted)
            if not chosen:
                listed = ", ".join(case.case_id for case in cases)
                return [CaseResult(wanted, str(path), "error", error=f"{path}: no case {wanted!r}; its cases: {listed}")]
            cases = chosen
        return [self.plan(case) for case in cases]

    def plan(self, case: Case | GraphCase) -> Loaded:
        """`case` with the runners it runs, or its error result when the selection is invalid."""
        try:
            return PlannedCase(case, select_runners(case, self.only))
        except NothingSelected as reason:
            return CaseResult(case.case_id, case.path, "skipped", case.description, error=str(reason))
        except HarnessError as error:
            return CaseResult(case.case_id, case.path, "error", case.description, error=str(error))

    def run(self, loaded: Sequence[Loaded]) -> Iterator[CaseResult]:
        """Start the workers of every runner needed (their imports overlap), schedule all runners
        at once (the executor runs `jobs` at a time), say no more is coming (each family's workers
        stop when the family has nothing left), then yield each case's judged result in order, as
        soon as it is complete."""
        executor = self.executor
        planned = [item for item in loaded if isinstance(item, PlannedCase)]
        executor.warm(list(dict.fromkeys(name for item in planned for name in item.runners)))
        scheduled = [item if isinstance(item, CaseResult) else (item.case, executor.submit(item.case, item.runners)) for item in loaded]
        executor.seal()
        for item in scheduled:
            if isinstance(item, CaseResult):
                yield item
                continue
            case, futures = item
            try:
                yield judge(case, tuple(future.result() for future in futures))
            except HarnessError as error:
                yield CaseResult(case.case_id, case.path, "error", case.description, error=str(error))
            except Exception:  # a bug in the harness: keep the traceback, go on with the other cases
                yield CaseResult(case.case_id, case.path, "error", case.description, error=traceback.format_exc())
            finally:
                executor.forget(case)

    def run_case(self, case: Case | GraphCase) -> CaseResult:
        """One case through the pipeline (a pytest item, a repro bundle)."""
        loaded = self.plan(case)
        if isinstance(loaded, CaseResult):
            return loaded
        planned = loaded
        executor = self.executor
        futures = executor.submit(planned.case, planned.runners)
        try:
            return judge(case, tuple(future.result() for future in futures))
        finally:
            executor.forget(case)


def summary_line(record: CaseRecord) -> str:
    """`passed   cases/x.yaml  known divergences 6 (onnx-torchscript-ort 6), agreeing comparisons
    120; not ok: onnx-dynamo-ort (skipped)`; a grid point is named by its id after the file:
    `cases/x.yaml::x[eps_0.001]`."""
    where = case_location(record.file or "", record.case_id)
    if not record.judged:
        reason = f"  {record.error}" if record.outcome == "skipped" and record.error else ""
        return f"{record.outcome:8} {where}{reason}"
    known = Counter(comparison.verdict.other for comparison in record.comparisons if comparison.classification == "known")
    per_runner = ", ".join(f"{runner} {count}" for runner, count in sorted(known.items()))
    agree = sum(1 for comparison in record.comparisons if not comparison.divergent)
    text = f"{record.outcome:8} {where}  known divergences {sum(known.values())}"
    text += f" ({per_runner})" if per_runner else ""
    if record.comparisons:
        text += f", agreeing comparisons {agree}"
    else:
        reference_name, reference_run = next(iter(record.runners.items()), ("", None))
        if len(record.runners) <= 1:
            why = "only the reference ran"
        elif reference_run is not None and reference_run.status != "ok":
            why = f"the reference {reference_name} ended {reference_run.status}"
        else:
            why = "no other runner ran to completion"
        text += f", nothing compared ({why})"
    unchecked = describe_unchecked([entry.why for entry in record.unverified])
    not_ok = [f"{name} ({run.status})" for name, run in record.runners.items() if run.status != "ok"]
    return text + (f"; {unchecked}" if unchecked else "") + (f"; not ok: {', '.join(not_ok)}" if not_ok else "")


def parting_lines(record: CaseRecord) -> list[str]:
    """`first parting BatchNorm: layer1.bn1 in keras-tensorflow, after step 3 (forward): ...`, per runner."""
    return [f"first parting BatchNorm: {line}" for line in parting_summary(record.first_parting)]


def known_divergence_lines(record: CaseRecord) -> list[str]:
    """One line per known divergence (`-v`): runner, field, step, attribution class and the reason
    the case gives; the whole verdicts are for `-vv`."""
    lines = []
    for comparison in record.comparisons:
        if comparison.classification != "known":
            continue
        verdict, reason = comparison.verdict, comparison.expectation.reason if comparison.expectation else None
        line = f"known: {verdict.other} {verdict.field} after {verdict.step_label}: {verdict.attribution or 'unattributed'}"
        if reason:
            line += f" ({' '.join(reason.split()[:16])}{' ...' if len(reason.split()) > 16 else ''})"
        lines.append(line)
    return lines


OUTCOMES = ("passed", "failed", "skipped", "invalid", "error")


MAX_NAMED = 10  # failing cases the totals name, the rest counted


def totals_line(records: Sequence[CaseRecord]) -> str:
    """`120 passed, 1 failed, 0 skipped, 0 invalid, 0 error; 2 expectation(s) not checked (...)`,
    and a second line naming the cases that did not pass, to rerun them."""
    counts = Counter(record.outcome for record in records)
    unchecked = sum(len(record.unverified) for record in records)
    totals = ", ".join(f"{counts.get(name, 0)} {name}" for name in OUTCOMES)
    text = totals + (f"; {unchecked} expectation(s) not checked (their runners were not selected or skipped)" if unchecked else "")
    failing = [case_location(record.file or "", record.case_id) for record in records if record.outcome in ("failed", "invalid", "error")]
    if failing:
        more = f" and {len(failing) - MAX_NAMED} more" if len(failing) > MAX_NAMED else ""
        text += "\nnot passed: " + " ".join(failing[:MAX_NAMED]) + more
    return text


def run_case(case: Case | GraphCase, only: Sequence[str] | None = None) -> CaseResult:
    """Run `case` on its runners (narrowed by `only`) and judge it: a one-case session."""
    return Session(only).run_case(case)
