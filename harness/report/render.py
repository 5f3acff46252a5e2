"""Render results.json as one self-contained HTML file (no network fetches), read top down:

1. the summary: against a baseline when one is given (new, vanished, moved, status and outcome
   changes), else what the cases do not expect (new divergences, vanished expectations,
   unverified ones), and the cases that did not pass;
2. the cases x runners matrix, worst cases first, with a sticky header and case column;
3. per case a collapsible section (open when something is wrong): steps, one mode table with the
   runners as columns, each divergence with its verdict, attribution, reason, link and a
   per-channel chart, and the commands to rerun, reproduce and list it (copyable);
4. the full environment.

It computes nothing the record lacks (the baseline comparison is the CLI's own)."""

from __future__ import annotations

import re
import shlex
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import jinja2

from harness.core.records import CaseRecord, ComparisonRecord, ResultsDocument, parting_summary
from harness.core.results import Verdict
from harness.core.runner_table import SPEC_RUNNER, repro_runner_names
from harness.judge.engine import case_location, expect_snippet
from harness.report.baseline import compare_results
from harness.report.record import write_atomically

# Worst first: the status a case shows in the matrix is its worst cell's.
# A case that did not load (invalid) or that the harness could not run (error) has no runner cells.
SEVERITY = ("invalid", "error", "crashed", "timed_out", "run_failed", "export_failed", "new", "vanished", "known", "agree", "skipped")
OPEN_STATUSES = frozenset(SEVERITY[:8])  # a case section starts open when its status is one of these
_MODE_FIELD = re.compile(r"^module\.(?:(?P<path>.+)\.)?training$")
SUMMARY_ROWS = 20  # changes or failing cases listed in the summary; the rest are counted


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("harness.report", "."),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(results: ResultsDocument, baseline: ResultsDocument | None = None) -> str:
    """The report's HTML for a results.json document, against `baseline` when given."""
    runners = list(dict.fromkeys(runner for case in results.cases for runner in case.runners))
    cases = [_case_view(case, runners) for case in results.cases]
    cases.sort(key=lambda case: SEVERITY.index(case["status"]))  # stable: file order within a status
    counts = Counter(case["status"] for case in cases)
    classes = Counter(d["attribution"] for case in cases for d in case["divergences"] if d["attribution"])
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            environment=results.environment,
            created=results.created,
            schema_version=results.schema_version,
            summary=_summary(results, cases, baseline),
            cases=cases,
            runners=runners,
            counts={status: counts.get(status, 0) for status in SEVERITY},
            # a box for every status a case or a cell shows: with a runner chosen, the boxes filter its cells
            filter_statuses=[
                status for status in SEVERITY if counts.get(status) or any(status in case["runner_statuses"] for case in cases)
            ],
            outcomes=Counter(case["outcome"] for case in cases),
            classes=sorted(classes.items()),
            statuses=SEVERITY,
        )
    )


def report_path(results: Path) -> Path:
    """The report beside a results file, named after it: `runs/a.json` -> `runs/a.html`, so that
    runs sharing a folder keep their own; the default `results.json` -> `report.html`."""
    return results.with_name("report.html") if results.name == "results.json" else results.with_suffix(".html")


def write_report(results: ResultsDocument, path: Path, baseline: ResultsDocument | None = None) -> None:
    """Write the report atomically."""
    write_atomically(path, render_report(results, baseline))


def _summary(results: ResultsDocument, cases: list[dict[str, Any]], baseline: ResultsDocument | None) -> dict[str, Any]:
    """What a reader needs first: what changed (or what is unexpected), and which cases did not pass."""
    not_passed = [case for case in cases if case["outcome"] not in ("passed", "skipped")]
    summary: dict[str, Any] = {
        "not_passed": not_passed[:SUMMARY_ROWS],
        "not_passed_more": max(0, len(not_passed) - SUMMARY_ROWS),
        "new": sum(1 for case in results.cases for c in case.divergences if c.classification == "new"),
        "vanished": sum(len(case.vanished) for case in results.cases),
        "unverified": sum(len(case.unverified) for case in results.cases),
        "known": sum(1 for case in results.cases for c in case.divergences if c.classification == "known"),
        "baseline": None,
    }
    if baseline is not None:
        comparison = compare_results(baseline, results)
        kinds = Counter(change.kind for change in comparison.changes)
        summary["baseline"] = {
            "kinds": sorted(kinds.items(), key=lambda item: -item[1]),
            "changes": [change.describe() for change in comparison.changes[:SUMMARY_ROWS]],
            "more": max(0, len(comparison.changes) - SUMMARY_ROWS),
            "versions": comparison.version_differences,
            "not_compared": comparison.not_compared,
        }
    return summary


def _cell(case: CaseRecord, runner: str, reference: str | None, expected: set[tuple[str, str]], vanished: set[str]) -> tuple[str, str, str]:
    """(status, short text, hover text) of one matrix cell."""
    run = case.runners.get(runner)
    if run is None:
        return "absent", "\u2013", f"{runner}: not a runner of this case"
    hover = f"{runner}: {run.reason}" if run.reason else runner
    if (runner, run.status) in expected:  # a failure the case expects is a known result
        return "known", "known failure", f"{hover} ({run.status}, as the case expects)"
    if run.status not in (None, "ok"):
        return run.status, run.status, hover
    if runner == reference:
        return "reference", "ref", f"{runner}: the reference the others are compared with"
    mine = [c.classification for c in case.divergences if c.verdict.other == runner]
    if "new" in mine:
        return "new", f"new {mine.count('new')}", hover
    if runner in vanished:
        return "vanished", "vanished", hover
    if mine:
        return "known", f"known {len(mine)}", hover
    return "agree", "agree", hover


def _case_view(case: CaseRecord, runners: list[str]) -> dict[str, Any]:
    reference = next(iter(case.runners), None)
    expected = {(entry.runner, entry.status) for entry in case.statuses if entry.expected}
    vanished = {entry.runner for entry in case.vanished}
    cells = [_cell(case, runner, reference, expected, vanished) for runner in runners]
    judged = [status for status, _, _ in cells if status not in ("absent", "reference")]
    if case.outcome in ("invalid", "error"):
        status = case.outcome
    elif reference is not None and cells[runners.index(reference)][0] != "reference":  # the reference failed (or failed as expected)
        status = min((cells[runners.index(reference)][0], *judged), key=SEVERITY.index)
    else:
        # A runner that does not apply (skipped) beside others that ran does not make the case skipped.
        ran = [status for status in judged if status != "skipped"]
        status = min(ran, key=SEVERITY.index) if ran else ("skipped" if judged else "agree")
    divergent = case.divergences
    new = [c.verdict for c in divergent if c.classification == "new"]
    return {
        "id": case.case_id,
        "anchor": "case-" + re.sub(r"[^A-Za-z0-9_.-]", "_", case.case_id),
        "file": case.file,
        "description": case.description,
        "first_parting": parting_summary(case.first_parting),
        "outcome": case.outcome,
        "error": case.error,
        "steps": case.steps,
        "status": status,
        "open": status in OPEN_STATUSES,
        "reference": reference,
        "cells": cells,
        "runner_statuses": {status for status, _, _ in cells if status != "absent"},
        "runner_reasons": {name: (run.status, run.reason) for name, run in case.runners.items() if run.reason},
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
        "rerun": _rerun_command(case),
        "expect_snippet": expect_snippet(new) if new else None,
        "cell_runners": " ".join(f"{runner}={status}" for runner, (status, _, _) in zip(runners, cells) if status != "absent"),
    }


def _rerun_command(case: CaseRecord) -> str | None:
    """The pytest command that runs this case alone (its node id: file::case id)."""
    return f"python -m pytest {shlex.quote(f'{case.file}::{case.case_id}')}" if case.file else None


def _repro_command(case: CaseRecord, diverging: set[str]) -> str | None:
    """The command that writes this case's repro bundles, where one can be written."""
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
        "chart": _chart(verdict),
        "nonfinite": _nonfinite_label(verdict),
    }


def _nonfinite_label(verdict: Verdict) -> str | None:
    """`NaN 0 / 128` (reference / other), and the same for infinities, where any side has one."""
    parts = [
        f"{name} {counts[0]} / {counts[1]}" for name, counts in (("NaN", verdict.nan_count), ("Inf", verdict.inf_count)) if any(counts)
    ]
    return ", ".join(parts) or None


CHART_BAR, CHART_HEIGHT, CHART_LEFT, CHART_TOP, CHART_BOTTOM, CHART_RIGHT = 24, 110, 48, 16, 34, 80  # px; the right margin labels atol


def _chart(verdict: Verdict) -> dict[str, Any] | None:
    """A bar chart of the greatest |difference| per channel against the allowed atol, as SVG
    geometry: a y axis with its top value, a labelled tolerance line, a label per channel, and each
    value written above its bar where they fit (16 channels or fewer; all are in each bar's tooltip)."""
    values = list(verdict.channel_abs_diff)
    if not 1 <= len(values) <= 64:
        return None
    finite = [value for value in values if value == value and value != float("inf")]
    top = max(finite + [verdict.atol or 0.0, 1e-30])
    bars = []
    for index, value in enumerate(values):
        length = CHART_HEIGHT if value != value or value == float("inf") else CHART_HEIGHT * min(value / top, 1.0)
        x = CHART_LEFT + index * CHART_BAR + 3
        bars.append(
            {
                "x": x,
                "y": CHART_TOP + CHART_HEIGHT - length,
                "h": max(length, 0.5),
                "w": CHART_BAR - 6,
                "centre": x + (CHART_BAR - 6) / 2,
                "value": f"{value:.2g}",
                "label": f"channel {index}: {value:.3g}",
                "index": index,
            }
        )
    atol = verdict.atol
    return {
        "bars": bars,
        "width": CHART_LEFT + len(values) * CHART_BAR + 8 + CHART_RIGHT,
        "plot_right": CHART_LEFT + len(values) * CHART_BAR + 8,
        "height": CHART_TOP + CHART_HEIGHT + CHART_BOTTOM,
        "left": CHART_LEFT,
        "top": CHART_TOP,
        "bottom": CHART_TOP + CHART_HEIGHT,
        "top_value": f"{top:.3g}",
        "tolerance_y": CHART_TOP + CHART_HEIGHT - CHART_HEIGHT * min(atol / top, 1.0) if atol else None,
        "atol": f"{atol:.3g}" if atol else None,
        "values_shown": len(values) <= 16,
    }


def _modes(case: CaseRecord, reference: str | None) -> dict[str, Any]:
    """Every submodule's training flag after each step, one row per (step, submodule), one column per
    runner, from the module.* verdicts; a flag that differs from the reference's is marked."""
    table: dict[tuple[int, str], dict[str, Any]] = defaultdict(dict)
    runners: list[str] = []
    if reference is None:  # no runner ran: no modes
        return {"runners": runners, "rows": []}
    for comparison in case.comparisons:
        verdict = comparison.verdict
        match = _MODE_FIELD.match(verdict.field)
        if not match:
            continue
        path = match.group("path") or "(model)"
        for runner, value in ((reference, verdict.reference_value), (verdict.other, verdict.other_value)):
            table[(verdict.step, path)][runner] = value
            if runner not in runners:
                runners.append(runner)
    rows = []
    for (step, path), flags in sorted(table.items(), key=lambda item: item[0][0]):
        label = case.steps[step] if step < len(case.steps) else f"step {step}"
        theirs = flags.get(reference)
        cells = [(flags.get(runner), None not in (flags.get(runner), theirs) and flags.get(runner) != theirs) for runner in runners]
        rows.append({"step": label, "path": path, "flags": cells})
    return {"runners": runners, "rows": rows}
