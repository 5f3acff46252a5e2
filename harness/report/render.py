"""Render results.json as one self-contained HTML file (no network fetches): environment and
counts, a cases x runners matrix coloured by status, filters that work without a server, and per
case the steps, every submodule's mode after each step, and each divergence with its verdict,
attribution, reason, upstream link and a per-channel plot. It computes nothing the record lacks."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import jinja2

from harness.core.records import CaseRecord, ComparisonRecord, ResultsDocument
from harness.core.results import Verdict
from harness.core.runner_table import SPEC_RUNNER, repro_runner_names
from harness.judge.engine import case_location
from harness.report.record import write_atomically

# Worst first: the status a case shows in the matrix is its worst cell's.
# A case that did not load (invalid) or that the harness could not run (error) has no runner cells.
SEVERITY = ("invalid", "error", "crashed", "timed_out", "run_failed", "export_failed", "new", "vanished", "known", "skipped", "agree")
_MODE_FIELD = re.compile(r"^module\.(?:(?P<path>.+)\.)?training$")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("harness.report", "."),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(results: ResultsDocument) -> str:
    """The report's HTML for a results.json document."""
    cases = [_case_view(case) for case in results.cases]
    runners = list(dict.fromkeys(runner for case in results.cases for runner in case.runners))
    for case in cases:
        case["cells"] = [
            (case["cell_status"].get(runner, ""), case["cell_text"].get(runner, case["cell_status"].get(runner, ""))) for runner in runners
        ]
    counts = Counter(case["status"] for case in cases)
    classes = Counter(d["attribution"] for case in cases for d in case["divergences"] if d["attribution"])
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            environment=results.environment,
            created=results.created,
            schema_version=results.schema_version,
            cases=cases,
            runners=runners,
            counts={status: counts.get(status, 0) for status in SEVERITY},
            outcomes=Counter(case["outcome"] for case in cases),
            classes=sorted(classes.items()),
            statuses=SEVERITY,
        )
    )


def write_report(results: ResultsDocument, path: Path) -> None:
    """Write the report atomically."""

    write_atomically(path, render_report(results))


def _case_view(case: CaseRecord) -> dict[str, Any]:
    runners = case.runners
    cell_status: dict[str, str] = {}
    divergent = case.divergences
    vanished_runners = {entry.runner for entry in case.vanished}
    reference = next(iter(runners), None)
    expected_statuses = {(entry.runner, entry.status) for entry in case.statuses if entry.expected}
    cell_text: dict[str, str] = {}
    for runner, run in runners.items():
        status = run.status
        if (runner, status) in expected_statuses:  # a failure the case expects is a known result
            cell_status[runner], cell_text[runner] = "known", f"{status} (known)"
            continue
        if status not in (None, "ok"):
            cell_status[runner] = status
            continue
        mine = [c.classification for c in divergent if c.verdict.other == runner]
        if "new" in mine:
            cell_status[runner] = "new"
        elif runner in vanished_runners:
            cell_status[runner] = "vanished"
        elif mine:
            cell_status[runner] = "known"
        else:
            cell_status[runner] = "agree"
    if case.outcome in ("invalid", "error"):
        status = case.outcome
    else:
        status = min(cell_status.values(), key=SEVERITY.index, default="agree")
    return {
        "id": case.case_id,
        "file": case.file,
        "description": case.description,
        "outcome": case.outcome,
        "error": case.error,
        "steps": case.steps,
        "status": status,
        "reference": reference,
        "cell_status": cell_status,
        "cell_text": cell_text,
        "runner_reasons": {name: run.reason for name, run in runners.items() if run.reason},
        "divergences": [_divergence_view(c) for c in divergent],
        "vanished": [
            {
                "fields": gone.expectation.fields,
                "runner": gone.runner,
                "reason": gone.expectation.reason,
                "link": gone.expectation.link,
                "seen_instead": gone.seen_instead,
            }
            for gone in case.vanished
        ],
        "modes": _modes(case, reference),
        "classes": sorted({c.verdict.attribution for c in divergent if c.verdict.attribution}),
        "repro": _repro_command(case, {c.verdict.other for c in divergent}),
        "diverging_runners": sorted(
            {c.verdict.other for c in divergent} | {r for r, s in cell_status.items() if s not in ("agree", "known")}
        ),
    }


def _repro_command(case: CaseRecord, diverging: set[str]) -> str | None:
    """The command that writes this case's repro bundles, where one can be written."""
    import shlex

    graph_case = SPEC_RUNNER in case.runners
    if case.file and (graph_case and diverging or diverging & {*repro_runner_names("export"), *repro_runner_names("keras")}):
        # a grid point by its id, quoted: its brackets are shell patterns
        return f"python -m harness repro {shlex.quote(case_location(case.file, case.case_id))}"
    return None


def _divergence_view(comparison: ComparisonRecord) -> dict[str, Any]:
    verdict, expectation = comparison.verdict, comparison.expectation
    return {
        "field": verdict.field,
        "step": verdict.step,
        "step_label": verdict.step_label,
        "runner": verdict.other,
        "classification": comparison.classification,
        "text": verdict.text,
        "attribution": verdict.attribution,
        "reason": None if expectation is None else expectation.reason,
        "link": None if expectation is None else expectation.link,
        "bars": _bars(verdict),
    }


def _bars(verdict: Verdict) -> dict[str, Any] | None:
    """A per-channel bar chart of |difference| against the allowed tolerance, as SVG geometry."""
    values = list(verdict.channel_abs_diff)
    if len(values) < 1 or len(values) > 64:
        return None
    finite = [value for value in values if value == value and value != float("inf")]
    top = max(finite + [verdict.atol or 0.0, 1e-30])
    width, height = 18, 60
    bars = []
    for index, value in enumerate(values):
        length = height if value != value or value == float("inf") else height * min(value / top, 1.0)
        bars.append({"x": index * width + 2, "y": height - length, "h": max(length, 0.5), "label": f"channel {index}: {value:.3g}"})
    atol = verdict.atol
    line = height - height * min(atol / top, 1.0) if atol else None
    return {"bars": bars, "width": len(values) * width + 4, "height": height, "tolerance_y": line, "top": f"{top:.3g}"}


def _modes(case: CaseRecord, reference: str | None) -> dict[str, Any]:
    """Every submodule's training flag after each step, per runner, from the module.* verdicts."""
    if reference is None:  # no runner ran: no modes
        return {"paths": [], "runners": {}}
    table: dict[str, dict[int, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    paths: list[str] = []
    for comparison in case.comparisons:
        verdict = comparison.verdict
        match = _MODE_FIELD.match(verdict.field)
        if not match:
            continue
        path = match.group("path") or "(model)"
        if path not in paths:
            paths.append(path)
        table[reference][verdict.step][path] = verdict.reference_value
        table[verdict.other][verdict.step][path] = verdict.other_value
    return {"paths": paths, "runners": {runner: dict(steps) for runner, steps in table.items()}}
