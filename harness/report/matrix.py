"""Several results.json side by side (one per environment of the version matrix): which
divergence, runner status or case outcome appears with which versions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.core.records import CaseRecord, ResultsDocument
from harness.report.baseline import load_results

# One mark per cell: known / new divergence, vanished expectation, agreement, runner status.
MARKS = {"known": "K", "new": "N", "agree": ".", "absent": " "}
STATUS_MARKS = {"skipped": "S", "export_failed": "E", "run_failed": "R", "crashed": "C", "timed_out": "T"}
LEGEND = "K known divergence, N new divergence, . agrees, S skipped, E export_failed, R run_failed, C crashed, T timed_out, blank: not run"


def environment_labels(documents: Mapping[str, ResultsDocument]) -> dict[str, str]:
    """Each document's name with the package versions that differ between the documents."""
    versions = {name: doc.environment.versions for name, doc in documents.items()}
    packages = sorted({package for found in versions.values() for package in found})
    varying = [p for p in packages if len({found.get(p) for found in versions.values()}) > 1]
    return {name: name + "".join(f" {p}={versions[name].get(p)}" for p in varying) for name in documents}


def _row_marks(case: CaseRecord) -> dict[tuple[str, str, str], str]:
    """(case, runner, what) -> mark, for one case of one document."""
    marks: dict[tuple[str, str, str], str] = {}
    for runner, run in case.runners.items():
        if run.status in STATUS_MARKS:
            marks[(case.case_id, runner, "(status)")] = STATUS_MARKS[run.status]
    for comparison in case.comparisons:
        key = (case.case_id, comparison.verdict.other, comparison.verdict.field)
        mark = MARKS.get(comparison.classification, "?")
        # A field diverging at any step counts; a new divergence outweighs a known one.
        if marks.get(key) != "N" and (mark != "." or key not in marks):
            marks[key] = mark
    return marks


def matrix_table(documents: Mapping[str, ResultsDocument], everything: bool = False) -> str:
    """A text table: rows (case, runner, field), one column per document; by default only the rows
    whose marks differ between the documents."""
    names = list(documents)
    per_doc: dict[str, dict[tuple[str, str, str], str]] = {name: {} for name in names}
    for name, doc in documents.items():
        for case in doc.cases:
            per_doc[name].update(_row_marks(case))
    keys = sorted({key for marks in per_doc.values() for key in marks})
    rows = [(key, [per_doc[name].get(key, MARKS["absent"]) for name in names]) for key in keys]
    if not everything:
        rows = [(key, marks) for key, marks in rows if len(set(marks)) > 1]
    labels = environment_labels(documents)
    lines = [f"[{index}] {labels[name]}" for index, name in enumerate(names)]
    lines.append(LEGEND)
    if not rows:
        lines.append("every row is the same in every environment" if not everything else "no rows")
        return "\n".join(lines)
    width = max(len(" ".join(key)) for key, _ in rows)
    lines.append(" " * width + "  " + " ".join(f"[{index}]" for index in range(len(names))))
    for key, marks in rows:
        lines.append(" ".join(key).ljust(width) + "  " + " ".join(f" {mark} " for mark in marks))
    return "\n".join(lines)


def load_documents(paths: Sequence[Path]) -> dict[str, ResultsDocument]:
    """results.json files by their stem (the tox environment's name)."""
    return {path.stem: load_results(path) for path in paths}
