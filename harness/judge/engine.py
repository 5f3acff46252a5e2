"""Run one case: every runner first, then compare each with the reference, then match the case's
expectations. Also the explanation a failing case prints."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.case import AnyCase, Case, GraphCase
from harness.core.errors import RunnerError
from harness.core.records import PartingRecord, parting_summary
from harness.core.results import RunResult, Verdict
from harness.core.runner_table import (
    GRAPH_REFERENCES,
    REFERENCE_RUNNER,
    SPEC_RUNNER,
    checked_runner_names,
    runner_names_of_kind,
    runner_record,
)
from harness.judge.attribution import attribute_all
from harness.judge.compare import compare_runs
from harness.judge.expected import Classification, classify

MAX_VERDICTS_SHOWN = 8


@dataclass(frozen=True, slots=True)
class CaseResult:
    """The outcome of one case file: passed, failed, skipped (no reference) or invalid."""

    case_id: str
    path: str
    outcome: str
    description: str = ""
    steps: tuple[str, ...] = ()  # each step's label, as verdicts name them
    runs: tuple[RunResult, ...] = ()
    verdicts: tuple[Verdict, ...] = ()
    classification: Classification | None = None
    error: str | None = None
    first_parting: tuple[PartingRecord, ...] = ()

    def explain(self) -> str:
        """What went wrong, in the words a user needs to fix the case or report the bug."""
        if self.error is not None:
            return self.error
        if self.classification is None:
            return ""
        return parting_text(self.first_parting) + explain_classification(self.path, self.classification)


def case_location(path: str, case_id: str) -> str:
    """How a case is named to the user: its file, and for a grid point `file::id` (pytest's form)."""
    return path if case_id == Path(path).stem else f"{path}::{case_id}"


class NothingSelected(RunnerError):
    """A runner selection that leaves a case nothing to run: the case is skipped, saying so."""


def reference_of(case: AnyCase) -> str:
    """The runner every other runner of `case` is compared with."""
    if isinstance(case, GraphCase):
        return GRAPH_REFERENCES["node" if case.node is not None else "backend_test"]
    return REFERENCE_RUNNER


def select_runners(case: AnyCase, only: Sequence[str] | None = None) -> tuple[str, ...]:
    """The runners for `case`: the case's list (default: all of its kind but the opt-in ones),
    narrowed by `only`; the reference first.

    Raises:
        RunnerError: `only` names an unknown runner.
        NothingSelected: `only` names no runner of this case's kind.
    """
    if only is not None:
        checked_runner_names(only)
    known = runner_names_of_kind(case.kind)
    if only is not None and not set(only) & set(known):
        raise NothingSelected(
            f"none of the selected runners ({', '.join(only)}) runs {case.kind} cases; this case's runners: {', '.join(known)}"
        )
    # A case without a list runs every runner of its kind but the opt-in ones, which run where a
    # case lists them or a selection names them.
    base = case.runners or (known if only is not None else tuple(name for name in known if not runner_record(name).opt_in))
    wanted = set(base) & set(only or known)
    reference = reference_of(case)
    return (reference, *(name for name in known if name in wanted and name != reference))


def judge(case: Case | GraphCase, runs: tuple[RunResult, ...]) -> CaseResult:
    """Compare each run with the reference (the first) and match the case's expectations."""
    reference = runs[0]
    steps = tuple(case.step_label(index) for index in range(len(case.steps)))
    refused = [run for run in runs if run.details.get("harness_error")]
    if refused:  # the case asked what cannot be done: its error, not a framework's crash or failure
        reasons = "\n".join(dict.fromkeys(run.reason or "" for run in refused))
        return CaseResult(case.case_id, case.path, "error", case.description, steps, runs, error=reasons)
    if reference.status == "skipped":
        return CaseResult(
            case.case_id, case.path, "skipped", case.description, steps, runs, error=f"{reference.runner} skipped: {reference.reason}"
        )
    spec = next((run for run in runs if run.runner == SPEC_RUNNER), None)
    verdicts = tuple(
        verdict for other in runs[1:] for verdict in attribute_all(case, reference, other, list(compare_runs(case, reference, other)), spec)
    )
    classification = classify(case, runs, verdicts)
    outcome = "passed" if classification.passed else "failed"
    broken = [
        f"{verdict.field} after {verdict.step_label}, {verdict.other}: {verdict.invariant_violation}"
        for verdict in verdicts
        if verdict.invariant_violation
    ]
    if broken:  # the judgement contradicts itself: the harness's error, with everything it computed kept
        return CaseResult(
            case.case_id,
            case.path,
            "error",
            case.description,
            steps,
            runs,
            verdicts,
            classification,
            error="harness invariant broken (a bug in the attribution, not a framework's divergence):\n" + "\n".join(broken),
        )
    return CaseResult(
        case.case_id, case.path, outcome, case.description, steps, runs, verdicts, classification, None, first_parting(case, verdicts)
    )


def first_parting(case: Case | GraphCase, verdicts: Sequence[Verdict]) -> tuple[PartingRecord, ...]:
    """For each runner that diverges inside a model of several BatchNorms: the first BatchNorm
    where it parts from the reference (the earliest step, then the order a forward runs them)."""
    if not isinstance(case, Case) or len(case.batchnorm_order) < 2:
        return ()
    order = {path: index for index, path in enumerate(case.batchnorm_order)}
    found: dict[str, tuple[tuple[int, int, int], PartingRecord]] = {}
    for position, verdict in enumerate(verdicts):
        path = batchnorm_of_field(verdict.field, order)
        if verdict or path is None:
            continue
        key = (verdict.step, order[path], position)
        if verdict.other not in found or key < found[verdict.other][0]:
            found[verdict.other] = (key, PartingRecord(verdict.other, path, verdict.step, verdict.step_label, verdict.field))
    return tuple(record for _, record in found.values())


def batchnorm_of_field(field: str, paths: Iterable[str]) -> str | None:
    """The BatchNorm a field belongs to (`layer1.bn1.output`, `module.layer1.bn1.running_var`)."""
    name = field.removeprefix("module.")
    owner, _, attribute = name.rpartition(".")
    return owner if owner in paths and attribute else None


def parting_text(parting: Sequence[PartingRecord]) -> str:
    """`First parting BatchNorm: ...`, one line per runner, before what follows from it."""
    if not parting:
        return ""
    return "\n".join(f"First parting BatchNorm: {line}" for line in parting_summary(parting)) + "\n\n"


def explain_classification(path: str, found: Classification) -> str:
    """Every new divergence, vanished expectation and unexpected status, with how to update the case."""
    parts: list[str] = []
    if found.new:
        parts.append(f"{len(found.new)} divergence(s) not listed in expect:")
        parts += [verdict.text for verdict in found.new[:MAX_VERDICTS_SHOWN]]
        if len(found.new) > MAX_VERDICTS_SHOWN:
            parts.append(
                f"... and {len(found.new) - MAX_VERDICTS_SHOWN} more (all are in the results: `python -m harness run` "
                "writes results.json, pytest with --harness-results=PATH)"
            )
        parts.append("If these are real and understood, add to expect in " + path + ":\n" + expect_snippet(found.new))
    for gone in found.vanished:
        where = f"{path}:{gone.expectation.line}" if gone.expectation.line else path
        parts.append(
            f"Expected divergence no longer reproduces ({where}): {gone.expectation.describe()}\n"
            f"  reason given: {gone.expectation.reason}\n"
            f"  link: {gone.expectation.link or '-'}\n"
            f"  seen instead: {gone.seen_instead}\n"
            f"  If the upstream behaviour changed for good, remove or narrow this entry."
        )
    for finding in found.statuses:
        if finding.expectation is None:
            parts.append(
                f"{finding.runner} ended with status {finding.status}: {finding.reason}\n"
                f"  If this is expected, add to expect in {path}:\n"
                f"  - status: {finding.status}\n    runners: [{finding.runner}]\n    reason: <why, in one sentence>"
            )
    return "\n\n".join(parts)


def explain_known(found: Classification) -> str:
    """Each known divergence's verdict, grouped under the expectation that explains it."""
    parts: list[str] = []
    for expectation in dict.fromkeys(expectation for _, expectation in found.known):
        verdicts = [verdict for verdict, owner in found.known if owner is expectation]
        header = f"known: {expectation.describe()}\n  reason: {expectation.reason}\n  link: {expectation.link or '-'}"
        parts.append(header + "\n" + "\n".join(verdict.text for verdict in verdicts))
    return "\n\n".join(parts)


def expect_snippet(new: Sequence[Verdict]) -> str:
    """The `expect` entries that would list these divergences, one per runner and field."""
    steps_by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for verdict in new:
        steps_by_key[(verdict.other, verdict.field)].append(verdict.step)
    lines = []
    for (runner, field), steps in steps_by_key.items():
        step = str(steps[0]) if len(steps) == 1 else "[" + ", ".join(map(str, sorted(set(steps)))) + "]"
        lines += [
            f"  - field: {field}",
            f"    step: {step}",
            f"    runners: [{runner}]",
            "    reason: <why, in one sentence>",
            "    link: <upstream issue or doc line>",
        ]
    return "\n".join(lines)
