"""Combining results documents: the shards of one run into its results.json, and a subset run
into a baseline (`baseline update`). Both refuse documents from environments whose package
versions differ: a document states the versions its results come from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from harness.core.errors import CaseError, HarnessError
from harness.core.records import CaseRecord, ResultsDocument
from harness.load.schema import load_cases
from harness.report.baseline import version_differences


def merge_shards(shards: Sequence[tuple[Path, ResultsDocument]]) -> ResultsDocument:
    """One results document of the shards of a run (`harness run --shard i/n`), its cases in the
    order one unsharded run writes them: by file, each file's cases in their own order (a shard
    holds whole files).

    Raises:
        HarnessError: no shard, shards from different environments, or a case in two shards.
    """
    if not shards:
        raise HarnessError("no results to merge")
    first_path, first = shards[0]
    seen: dict[tuple[str, str], Path] = {}  # (file, case id) -> the shard that has it
    for path, document in shards:
        _same_versions(first_path, first, path, document)
        for case in document.cases:
            key = (case.file or "", case.case_id)
            if key in seen:
                raise HarnessError(
                    f"{path}: case {case.case_id} ({case.file}) is also in {seen[key]}: the shards of one run hold different cases"
                )
            seen[key] = path
    cases = [case for _, document in shards for case in document.cases]
    cases.sort(key=lambda case: PurePosixPath(case.file or ""))  # stable: a file's cases keep their order
    return first.with_cases(cases)


@dataclass(frozen=True, slots=True)
class BaselineUpdate:
    """A baseline with a subset run merged in, and what the merge did."""

    document: ResultsDocument
    replaced: tuple[str, ...]  # case ids whose runners' results the run replaced
    added: tuple[str, ...]  # case ids new to the baseline
    kept: int  # baseline cases the run did not run
    removed: tuple[str, ...] = ()  # case ids that the files the run ran no longer have

    def summary(self) -> str:
        removed = f", {len(self.removed)} removed ({', '.join(self.removed)}: their files no longer have them)" if self.removed else ""
        return f"{len(self.replaced)} case(s) updated, {len(self.added)} added{removed}, {self.kept} kept as they were"


def update_baseline(baseline_path: Path, baseline: ResultsDocument, run_path: Path, run: ResultsDocument) -> BaselineUpdate:
    """The baseline with each case the run ran brought up to date: the runners that ran replace
    theirs (statuses and divergences), the others keep the baseline's; the outcome is the run's
    when it ran every runner the baseline had for the case, else the worse of the two. A case new
    to the baseline is added in file order. A baseline case of a file the run ran is removed when
    the file, read now, no longer has it (a grid changed its points); a point left out of the run
    (`file::id`, `pytest -k`) stays. Nothing else the run did not run changes.

    Raises:
        HarnessError: the run comes from an environment with other package versions.
    """
    _same_versions(baseline_path, baseline, run_path, run)
    ran = {(case.file, case.case_id): case for case in run.cases}
    current_ids = {file: _case_ids_now(file) for file in {case.file for case in run.cases}}
    merged, replaced, removed = [], [], []
    for case in baseline.cases:
        current = ran.pop((case.file, case.case_id), None)
        ids_now = current_ids.get(case.file)
        if current is None and ids_now is not None and case.case_id not in ids_now:
            removed.append(case.case_id)
            continue
        if current is None:
            merged.append(case)
            continue
        replaced.append(case.case_id)
        merged.append(_merged_case(case, current))
    added = list(ran.values())
    merged += added
    merged.sort(key=lambda case: PurePosixPath(case.file or ""))
    kept = len(baseline.cases) - len(replaced) - len(removed)
    return BaselineUpdate(baseline.with_cases(merged), tuple(replaced), tuple(case.case_id for case in added), kept, tuple(removed))


def _case_ids_now(file: str | None) -> set[str] | None:
    """The ids of the cases `file` holds now; None when it cannot be read as cases (missing, or
    invalid: then nothing of it is removed)."""
    if not file or not Path(file).is_file():
        return None
    try:
        return {case.case_id for case in load_cases(Path(file))}
    except CaseError:
        return None


OUTCOME_SEVERITY = ("error", "invalid", "failed", "skipped", "passed")  # worst first


def _merged_case(old: CaseRecord, current: CaseRecord) -> CaseRecord:
    ran = set(current.runners)
    runners = {name: run for name, run in old.runners.items() if name not in ran}
    runners.update(current.runners)
    comparisons = tuple(c for c in old.comparisons if c.verdict.other not in ran) + current.comparisons
    outcome = current.outcome
    if not set(old.runners) <= ran:  # the runners the run left out keep their outcome's part
        outcome = min(old.outcome, current.outcome, key=lambda name: OUTCOME_SEVERITY.index(name) if name in OUTCOME_SEVERITY else 0)
    return replace(current, runners=runners, comparisons=comparisons, outcome=outcome)


def _same_versions(first_path: Path, first: ResultsDocument, path: Path, document: ResultsDocument) -> None:
    """Raises HarnessError when the package versions differ (python and platform may: a shard runs
    on another machine of the same image)."""
    differences = [
        line for line in version_differences(first.environment, document.environment) if not line.startswith(("python:", "platform:"))
    ]
    if differences:
        raise HarnessError(f"{path} comes from other package versions than {first_path}: {'; '.join(differences)}")
