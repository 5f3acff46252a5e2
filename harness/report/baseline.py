"""Compare a run's results.json with a stored baseline: what the nightly regression reports.

A divergence is identified by (case, runner, field, step). Reported: divergences that are new or
vanished, attribution classes that changed, magnitudes that moved by more than a factor, NaN or
infinity counts that changed, runner statuses and case outcomes that changed. A baseline from another environment is compared all the
same, with the version differences listed first. A runner the baseline ran that the new run
skipped in every case (its framework not installed, say) is one line, with the skip reason,
instead of one per status and divergence it had: "not compared" by default, a change with --all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError
from harness.core.records import CaseRecord, ComparisonRecord, Environment, RecordError, ResultsDocument
from harness.report.record import plain_json, write_atomically

DEFAULT_MAGNITUDE_FACTOR = 2.0
DivergenceKey = tuple[str, str, str, int]  # (case id, runner, field, step)


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between the baseline and the new run."""

    # new | vanished | class changed | magnitude moved | non-finite count changed | status changed | outcome changed | runner not run
    kind: str
    what: str
    before: Any = None
    after: Any = None

    def describe(self) -> str:
        """`new: keras-torch running_var after step 0 in keras_backends_moment_stress (...)`."""
        if self.before is None and self.after is None:
            return f"{self.kind}: {self.what}"
        return f"{self.kind}: {self.what}: {self.before} -> {self.after}"


@dataclass(frozen=True, slots=True)
class BaselineComparison:
    """Everything that differs; `regressed` when anything but version differences does."""

    version_differences: tuple[str, ...]
    changes: tuple[Change, ...]
    not_compared: tuple[str, ...] = ()  # what the baseline has that this run did not run (a subset run)

    @property
    def regressed(self) -> bool:
        """Whether the nightly job should fail."""
        return bool(self.changes)

    def report(self) -> str:
        """The text the command prints: versions first, then each change, then a count."""
        lines = []
        if self.version_differences:
            lines.append("The baseline comes from another environment:")
            lines += [f"  {line}" for line in self.version_differences]
        lines += [change.describe() for change in self.changes]
        lines += [f"not compared: {line}" for line in self.not_compared]
        lines.append(f"{len(self.changes)} change(s) against the baseline" if self.changes else "no change against the baseline")
        return "\n".join(lines)


def load_results(path: Path) -> ResultsDocument:
    """A results.json document (or a baseline).

    Raises:
        HarnessError: not readable, not JSON, or not a results record.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise HarnessError(f"{path}: cannot read a results record: {error}") from None
    try:
        return ResultsDocument.from_json(data)
    except RecordError as error:
        raise HarnessError(f"{path}: {error}") from None


def write_baseline(results: ResultsDocument, path: Path) -> None:
    """Write what a baseline keeps of a results record: environment, outcomes, runner statuses and
    the divergences (agreeing comparisons and verdict texts are what make results.json large)."""
    write_atomically(path, json.dumps(plain_json(results.to_baseline_json()), indent=1) + "\n")


def compare_results(
    baseline: ResultsDocument, new: ResultsDocument, factor: float = DEFAULT_MAGNITUDE_FACTOR, everything: bool = False
) -> BaselineComparison:
    """What changed from `baseline` to `new`. By default only what both ran is compared: a case or
    a runner the new run did not run (a subset, `pytest -k`, `--runners`) is "not compared", never
    "gone" or "vanished"; `everything` compares all, as the nightly's full run wants.

    Raises:
        HarnessError: a factor not above 1.
    """
    if factor <= 1:
        raise HarnessError(f"the magnitude factor must be above 1; got {factor}")
    not_compared: list[str] = []
    if not everything:
        baseline, not_compared = _what_both_ran(baseline, new)
    versions = tuple(version_differences(baseline.environment, new.environment))
    changes = list(_changes(baseline, new, factor))
    if not everything:  # a runner this install cannot run (jax absent, say) is not run here, not a change
        not_compared += [change.what for change in changes if change.kind == "runner not run"]
        changes = [change for change in changes if change.kind != "runner not run"]
    return BaselineComparison(versions, tuple(changes), tuple(not_compared))


def _what_both_ran(baseline: ResultsDocument, new: ResultsDocument) -> tuple[ResultsDocument, list[str]]:
    """The baseline narrowed to the cases, and in each case the runners, that the new run ran; and
    a line for each kind of thing left out."""
    ran = _by_id(new)
    kept, runs_left_out, divergences_left_out = [], 0, 0
    for case in baseline.cases:
        current = ran.get(case.case_id)
        if current is None:
            continue
        absent = {name for name in case.runners if name not in current.runners}
        runs_left_out += len(absent)
        divergences_left_out += sum(1 for key in _divergences(case) if key[1] in absent)
        kept.append(_without(case, dict.fromkeys(absent)))
    lines = []
    cases_left_out = len(baseline.cases) - len(kept)
    if cases_left_out:
        lines.append(f"{cases_left_out} case(s) of the baseline this run did not run (--all compares them)")
    if runs_left_out:
        lines.append(
            f"{runs_left_out} runner result(s) of the baseline, with {divergences_left_out} divergence(s), that this run did not run "
            "(--all compares them)"
        )
    return baseline.with_cases(kept), lines


def version_differences(old: Environment, new: Environment) -> Iterator[str]:
    for key in ("python", "platform"):
        if getattr(old, key) != getattr(new, key):
            yield f"{key}: {getattr(old, key)} -> {getattr(new, key)}"
    for package in sorted(set(old.versions) | set(new.versions)):
        if old.versions.get(package) != new.versions.get(package):
            yield f"{package}: {old.versions.get(package)} -> {new.versions.get(package)}"


def _changes(baseline: ResultsDocument, new: ResultsDocument, factor: float) -> Iterator[Change]:
    old_cases, new_cases = _by_id(baseline), _by_id(new)
    not_run = _runners_not_run(old_cases, new_cases)
    for runner, (reason, entries) in sorted(not_run.items()):
        yield Change(
            "runner not run",
            f"{runner} ran in the baseline and was skipped in every case here ({reason}); "
            f"its {entries} divergence(s) in the baseline not compared",
        )
    old_cases = {case_id: _without(case, not_run) for case_id, case in old_cases.items()}
    new_cases = {case_id: _without(case, not_run) for case_id, case in new_cases.items()}
    for case_id in sorted(set(old_cases) | set(new_cases)):
        old, current = old_cases.get(case_id), new_cases.get(case_id)
        if old is None or current is None:
            yield Change("new case" if old is None else "case gone", case_id)
            continue
        if old.outcome != current.outcome:
            yield Change("outcome changed", case_id, old.outcome, current.outcome)
        yield from _status_changes(case_id, old, current)
        yield from _divergence_changes(case_id, old, current, factor)


def _runners_not_run(old_cases: Mapping[str, CaseRecord], new_cases: Mapping[str, CaseRecord]) -> dict[str, tuple[str, int]]:
    """Runners that ran in some baseline case and were skipped in every new case that has them:
    runner -> (the first skip reason, how many baseline divergences that leaves uncompared)."""
    ran_before = {name for case in old_cases.values() for name, run in case.runners.items() if run.status != "skipped"}
    found: dict[str, tuple[str, int]] = {}
    for runner in sorted(ran_before):
        new_runs = [case.runners[runner] for case in new_cases.values() if runner in case.runners]
        if new_runs and all(run.status == "skipped" for run in new_runs):
            entries = sum(len([key for key in _divergences(case) if key[1] == runner]) for case in old_cases.values())
            found[runner] = (new_runs[0].reason or "no reason given", entries)
    return found


def _without(case: CaseRecord, runners: Mapping[str, Any]) -> CaseRecord:
    """The case with `runners` left out of its statuses and comparisons."""
    if not runners:
        return case
    return replace(
        case,
        runners={name: run for name, run in case.runners.items() if name not in runners},
        comparisons=tuple(c for c in case.comparisons if c.verdict.other not in runners),
    )


def _by_id(document: ResultsDocument) -> dict[str, CaseRecord]:
    return {case.case_id: case for case in document.cases}


def _status_changes(case_id: str, old: CaseRecord, current: CaseRecord) -> Iterator[Change]:
    for runner in sorted(set(old.runners) | set(current.runners)):
        before = old.runners[runner].status if runner in old.runners else "absent"
        after = current.runners[runner].status if runner in current.runners else "absent"
        if before != after:
            yield Change("status changed", f"{runner} in {case_id}", before, after)


def _divergences(case: CaseRecord) -> dict[DivergenceKey, ComparisonRecord]:
    return {
        (case.case_id, comparison.verdict.other, comparison.verdict.field, comparison.verdict.step): comparison
        for comparison in case.divergences
    }


def _divergence_changes(case_id: str, old: CaseRecord, current: CaseRecord, factor: float) -> Iterator[Change]:
    before, after = _divergences(old), _divergences(current)
    for key in sorted(set(before) | set(after)):
        _, runner, field, step = key
        what = f"{runner} {field} after step {step} in {case_id}"
        if key not in before:
            yield Change("new divergence", what)
        elif key not in after:
            yield Change("vanished divergence", what)
        else:
            old_class, new_class = before[key].verdict.attribution, after[key].verdict.attribution
            if old_class != new_class:
                yield Change("class changed", what, old_class, new_class)
            old_size, new_size = before[key].verdict.max_abs_diff, after[key].verdict.max_abs_diff
            if _moved(old_size, new_size, factor):
                yield Change("magnitude moved", what, f"{old_size:.3g}", f"{new_size:.3g}")
            old_counts, new_counts = _nonfinite(before[key]), _nonfinite(after[key])
            if old_counts != new_counts:  # NaN everywhere and NaN in one channel have the same greatest difference
                yield Change("non-finite count changed", what, old_counts, new_counts)


def _nonfinite(comparison: ComparisonRecord) -> str:
    """`NaN 128/0, Inf 0/0` (reference/other)."""
    nans, infs = comparison.verdict.nan_count, comparison.verdict.inf_count
    return f"NaN {nans[0]}/{nans[1]}, Inf {infs[0]}/{infs[1]}"


def _moved(old: float | None, new: float | None, factor: float) -> bool:
    if old is None or new is None or old == new or (math.isnan(old) and math.isnan(new)):
        return False  # NaN to NaN: the same divergence (a NaN output), not a move
    if not (math.isfinite(old) and math.isfinite(new)) or old == 0 or new == 0:
        return True
    ratio = new / old
    return ratio > factor or ratio < 1 / factor
