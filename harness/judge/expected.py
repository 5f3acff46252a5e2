"""Known divergences: match observed verdicts and runner statuses against a case's `expect`.

An expected divergence that is observed is *known*; one that no longer reproduces has *vanished*
and fails, so that a fixed upstream bug is noticed and its entry removed; a divergence nobody
expected is *new* and fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.core.case import AnyCase, Expectation
from harness.core.fields import field_matches
from harness.core.results import RunResult, Verdict


@dataclass(frozen=True, slots=True)
class Vanished:
    """An expectation that did not reproduce in one runner, and what was seen instead."""

    expectation: Expectation
    runner: str
    seen_instead: str


@dataclass(frozen=True, slots=True)
class StatusFinding:
    """A runner that ended other than `ok` (or `skipped`), expected or not."""

    runner: str
    status: str
    reason: str | None
    expectation: Expectation | None


@dataclass(frozen=True, slots=True)
class Classification:
    """Every divergence and runner status of a case, sorted by how the case expected it."""

    known: tuple[tuple[Verdict, Expectation], ...]
    new: tuple[Verdict, ...]
    vanished: tuple[Vanished, ...]
    statuses: tuple[StatusFinding, ...]
    unverified: tuple[tuple[Expectation, str], ...]  # (expectation, why it could not be checked)

    @property
    def passed(self) -> bool:
        """Whether everything observed is what the case expects."""
        unexpected_status = any(finding.expectation is None for finding in self.statuses)
        return not self.new and not self.vanished and not unexpected_status


def describe_unchecked(whys: Sequence[str]) -> str:
    """`2 expectation(s) not checked (onnx-torchscript-ort not selected, keras-jax skipped)`, from
    each unchecked (expectation, runner)'s reason; empty when every expectation was checked."""
    if not whys:
        return ""
    runners = dict.fromkeys(why.split(":", 1)[0] for why in whys)
    return f"{len(whys)} expectation(s) not checked ({', '.join(runners)})"


def matches(expectation: Expectation, verdict: Verdict) -> bool:
    """Whether `expectation` covers the divergence `verdict`."""
    return (
        expectation.status is None
        and verdict.other in expectation.runners
        and (expectation.steps is None or verdict.step in expectation.steps)
        and any(field_matches(pattern, verdict.field) for pattern in expectation.fields)
    )


def classify(case: AnyCase, runs: Sequence[RunResult], verdicts: Sequence[Verdict]) -> Classification:
    """Sort divergences into known and new, and find the expectations that vanished."""
    divergences = [verdict for verdict in verdicts if not verdict]
    known, new = [], []
    for verdict in divergences:
        expectation = next((e for e in case.expectations if matches(e, verdict)), None)
        if expectation is None:
            new.append(verdict)
        else:
            known.append((verdict, expectation))
    by_runner = {run.runner: run for run in runs}
    vanished, unverified = [], []
    for expectation in case.expectations:
        for runner in expectation.runners:
            run = by_runner.get(runner)
            if run is None or run.status == "skipped":
                why = "not selected" if run is None else f"skipped: {run.reason}"
                unverified.append((expectation, f"{runner} {why}"))
            elif expectation.status is not None:
                if run.status != expectation.status:
                    vanished.append(Vanished(expectation, runner, f"{runner} ended with status {run.status}"))
            else:
                vanished += _vanished_fields(expectation, runner, divergences, verdicts)
    statuses = tuple(
        StatusFinding(run.runner, run.status, run.reason, _status_expectation(case, run))
        for run in runs
        if run.status not in ("ok", "skipped")
    )
    return Classification(tuple(known), tuple(new), tuple(vanished), statuses, tuple(unverified))


def _vanished_fields(expectation: Expectation, runner: str, divergences: Sequence[Verdict], verdicts: Sequence[Verdict]) -> list[Vanished]:
    steps: Sequence[int | None] = expectation.steps if expectation.steps is not None else [None]
    missing = []
    for step in steps:
        probe = Expectation(expectation.runners, expectation.reason, expectation.fields, None if step is None else (step,))
        if any(matches(probe, verdict) and verdict.other == runner for verdict in divergences):
            continue
        agreeing = [verdict for verdict in verdicts if verdict.other == runner and matches(probe, verdict)]
        if agreeing:
            seen = "now agrees: " + "; ".join(verdict.text for verdict in agreeing[:3])
        else:
            seen = f"{runner} reported no such field" + ("" if step is None else f" after step {step}")
        missing.append(Vanished(expectation, runner, seen))
    return missing


def _status_expectation(case: AnyCase, run: RunResult) -> Expectation | None:
    return next(
        (e for e in case.expectations if e.status == run.status and run.runner in e.runners),
        None,
    )
