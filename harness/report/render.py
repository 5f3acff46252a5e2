"""Render results.json as one self-contained HTML file (no network fetches): environment and
counts, a cases x runners matrix coloured by status, filters that work without a server, and per
case the steps, every submodule's mode after each step, and each divergence with its verdict,
attribution, reason, upstream link and a per-channel plot. It computes nothing the record lacks."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from harness.core.runner_table import SPEC_RUNNER, repro_runner_names

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


def render_report(results: Mapping[str, Any]) -> str:
    """The report's HTML for a results.json document."""
    cases = [_case_view(case) for case in results.get("cases", [])]
    runners = list(dict.fromkeys(runner for case in results.get("cases", []) for runner in case.get("runners", {})))
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
            environment=results.get("environment", {}),
            created=results.get("created"),
            schema_version=results.get("schema_version"),
            cases=cases,
            runners=runners,
            counts={status: counts.get(status, 0) for status in SEVERITY},
            outcomes=Counter(case["outcome"] for case in cases),
            classes=sorted(classes.items()),
            statuses=SEVERITY,
        )
    )


def write_report(results: Mapping[str, Any], path: Path) -> None:
    """Write the report atomically."""
    from harness.report.record import write_atomically

    write_atomically(path, render_report(results))


def _case_view(case: Mapping[str, Any]) -> dict[str, Any]:
    comparisons = case.get("comparisons", [])
    runners = case.get("runners", {})
    cell_status: dict[str, str] = {}
    divergent = [c for c in comparisons if c.get("classification") != "agree"]
    vanished_runners = {entry["runner"] for entry in case.get("vanished", [])}
    reference = next(iter(runners), None)
    expected_statuses = {(entry["runner"], entry["status"]) for entry in case.get("statuses", []) if entry.get("expected")}
    cell_text: dict[str, str] = {}
    for runner, run in runners.items():
        status = run.get("status")
        if (runner, status) in expected_statuses:  # a failure the case expects is a known result
            cell_status[runner], cell_text[runner] = "known", f"{status} (known)"
            continue
        if status not in (None, "ok"):
            cell_status[runner] = status
            continue
        mine = [c["classification"] for c in divergent if c["other"] == runner]
        if "new" in mine:
            cell_status[runner] = "new"
        elif runner in vanished_runners:
            cell_status[runner] = "vanished"
        elif mine:
            cell_status[runner] = "known"
        else:
            cell_status[runner] = "agree"
    if case.get("outcome") in ("invalid", "error"):
        status = case["outcome"]
    else:
        status = min(cell_status.values(), key=SEVERITY.index, default="agree")
    return {
        "id": case["id"],
        "file": case.get("file"),
        "description": case.get("description", ""),
        "outcome": case.get("outcome"),
        "error": case.get("error"),
        "steps": case.get("steps", []),
        "status": status,
        "reference": reference,
        "cell_status": cell_status,
        "cell_text": cell_text,
        "runner_reasons": {name: run.get("reason") for name, run in runners.items() if run.get("reason")},
        "divergences": [_divergence_view(c) for c in divergent],
        "vanished": case.get("vanished", []),
        "modes": _modes(case, reference),
        "classes": sorted({c.get("attribution") for c in divergent if c.get("attribution")}),
        "repro": _repro_command(case, {c["other"] for c in divergent}),
        "diverging_runners": sorted({c["other"] for c in divergent} | {r for r, s in cell_status.items() if s not in ("agree", "known")}),
    }


def _repro_command(case: Mapping[str, Any], diverging: set[str]) -> str | None:
    """The command that writes this case's repro bundles, where one can be written."""
    import shlex

    from harness.judge.engine import case_location

    graph_case = SPEC_RUNNER in case.get("runners", {})
    if case.get("file") and (graph_case and diverging or diverging & {*repro_runner_names("export"), *repro_runner_names("keras")}):
        # a grid point by its id, quoted: its brackets are shell patterns
        return f"python -m harness repro {shlex.quote(case_location(case['file'], case.get('id', '')))}"
    return None


def _divergence_view(comparison: Mapping[str, Any]) -> dict[str, Any]:
    expectation = comparison.get("expectation") or {}
    return {
        "field": comparison["field"],
        "step": comparison["step"],
        "step_label": comparison.get("step_label"),
        "runner": comparison["other"],
        "classification": comparison.get("classification"),
        "text": comparison.get("text", ""),
        "attribution": comparison.get("attribution"),
        "reason": expectation.get("reason"),
        "link": expectation.get("link"),
        "bars": _bars(comparison),
    }


def _bars(comparison: Mapping[str, Any]) -> dict[str, Any] | None:
    """A per-channel bar chart of |difference| against the allowed tolerance, as SVG geometry."""
    values = [float(value) for value in comparison.get("channel_abs_diff") or []]
    if len(values) < 1 or len(values) > 64:
        return None
    finite = [value for value in values if value == value and value != float("inf")]
    top = max(finite + [comparison.get("atol") or 0.0, 1e-30])
    width, height = 18, 60
    bars = []
    for index, value in enumerate(values):
        length = height if value != value or value == float("inf") else height * min(value / top, 1.0)
        bars.append({"x": index * width + 2, "y": height - length, "h": max(length, 0.5), "label": f"channel {index}: {value:.3g}"})
    atol = comparison.get("atol")
    line = height - height * min(atol / top, 1.0) if atol else None
    return {"bars": bars, "width": len(values) * width + 4, "height": height, "tolerance_y": line, "top": f"{top:.3g}"}


def _modes(case: Mapping[str, Any], reference: str | None) -> dict[str, Any]:
    """Every submodule's training flag after each step, per runner, from the module.* verdicts."""
    table: dict[str, dict[int, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    paths: list[str] = []
    for comparison in case.get("comparisons", []):
        match = _MODE_FIELD.match(comparison["field"])
        if not match:
            continue
        path = match.group("path") or "(model)"
        if path not in paths:
            paths.append(path)
        step = comparison["step"]
        table[reference][step][path] = comparison.get("reference_value")
        table[comparison["other"]][step][path] = comparison.get("other_value")
    return {"paths": paths, "runners": {runner: dict(steps) for runner, steps in table.items()}}
