"""Results records for the readers' tests (baseline, matrix, report, plugin), built as typed
records and passed through the writer and the reader, as a run writes them: a key renamed in the
writer breaks these tests, as it would break users' files."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from harness.core.records import CaseRecord, ComparisonRecord, Environment, ExpectationRecord, ResultsDocument, RunRecord
from harness.core.results import Verdict
from harness.report.record import document_text

ENVIRONMENT = Environment("3.11.7", "linux", {"torch": "2.13.0", "onnxruntime": "1.32.0"})


def comparison(
    runner: str = "onnx-torchscript-ort",
    field: str = "output",
    step: int = 0,
    classification: str = "known",
    expectation: ExpectationRecord | None = None,
    **verdict: Any,
) -> ComparisonRecord:
    """A comparison of `runner` with torch-eager; `verdict` sets any other Verdict field."""
    values: dict[str, Any] = {"step_label": f"step {step}", "reference": "torch-eager", "close": classification == "agree", "text": ""}
    return ComparisonRecord(Verdict(field=field, step=step, other=runner, **{**values, **verdict}), classification, expectation)


def expectation(
    reason: str = "a known bug", link: str | None = None, runners: Sequence[str] = ("onnx-torchscript-ort",)
) -> ExpectationRecord:
    return ExpectationRecord(("output",), None, None, tuple(runners), reason, link, 12)


def case(
    case_id: str = "forum",
    outcome: str = "passed",
    runners: Mapping[str, str | RunRecord] | None = None,
    comparisons: Sequence[ComparisonRecord] = (),
    **fields: Any,
) -> CaseRecord:
    """A judged case; `runners` maps each runner to its status (or its record)."""
    statuses = runners if runners is not None else {"torch-eager": "ok", "onnx-torchscript-ort": "ok"}
    records = {name: run if isinstance(run, RunRecord) else RunRecord(run) for name, run in statuses.items()}
    values: dict[str, Any] = {"file": f"cases/{case_id}.yaml", "judged": True, **fields}
    return CaseRecord(case_id=case_id, outcome=outcome, runners=records, comparisons=tuple(comparisons), **values)


def document(
    *cases: CaseRecord, environment: Environment = ENVIRONMENT, created: str | None = "2026-11-24T00:00:00+00:00"
) -> ResultsDocument:
    return ResultsDocument(tuple(cases), environment, created)


def written(results: ResultsDocument) -> ResultsDocument:
    """`results` as a reader gets it: written as results.json's text, read back."""
    return ResultsDocument.from_json(json.loads(document_text(results)))


def written_json(results: ResultsDocument) -> str:
    """results.json's text of `results`."""
    return document_text(results)
