from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.core.errors import HarnessError
from harness.core.records import (
    CaseRecord,
    ComparisonRecord,
    RecordError,
    RunRecord,
    StatusRecord,
    UnverifiedRecord,
    VanishedRecord,
)
from harness.core.results import Observed, RunResult
from harness.judge.compare import compare_observed
from harness.judge.engine import CaseResult
from harness.judge.expected import Classification
from harness.report.baseline import load_results
from harness.report.record import SCHEMA_VERSION, write_results
from harness.report.render import render_report
from tests import records


def test_results_are_strict_json_with_schema_version_environment_and_verdict_fields(tmp_path):
    verdict = compare_observed(
        field="output",
        step=0,
        step_label="step 0 (forward)",
        reference_name="torch-eager",
        other_name="onnx-torchscript-ort",
        reference=Observed(np.array([np.nan, 1.0]), "float32"),
        other=Observed(np.array([1.0, 1.0]), "float32"),
    )
    runs = (RunResult("torch-eager", "ok"), RunResult("onnx-torchscript-ort", "ok", details={"exports": []}))
    result = CaseResult(
        "c", "cases/c.yaml", "failed", "d", runs=runs, verdicts=(verdict,), classification=Classification((), (verdict,), (), (), ())
    )
    path = tmp_path / "deep" / "results.json"
    write_results(path, [result])
    text = path.read_text()
    record = json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert record["schema_version"] == SCHEMA_VERSION
    assert set(record["environment"]) == {"python", "platform", "versions"}
    assert {"torch", "onnxruntime", "keras", "tensorflow-cpu", "jax", "ml_dtypes"} <= set(record["environment"]["versions"]), (
        "every framework a runner may use is listed (None where it is not installed)"
    )
    (comparison,) = record["cases"][0]["comparisons"]
    assert comparison["classification"] == "new" and comparison["max_abs_diff"] == "nan"
    assert comparison["max_abs_index"] == [0] and comparison["rtol"] == 1.3e-6
    assert [json.loads(line.rstrip(",")) for line in text.splitlines() if line.startswith('  {"file"')] == record["cases"], (
        "each case on a line of its own"
    )
    assert [p.name for p in path.parent.iterdir()] == ["results.json"], "no temporary file left behind"
    assert path.stat().st_mode & 0o044 == 0o044, "readable by others, as a CI artifact must be"


def _full_document():
    expected = records.expectation("a known bug", "https://example.org/1")
    case = records.case(
        "forum",
        outcome="failed",
        description="d",
        steps=("step 0 (forward)",),
        runners={"torch-eager": "ok", "onnx-torchscript-ort": RunRecord("ok", None, {"exports": [{"opset": 17}]})},
        comparisons=[
            records.comparison(
                "onnx-torchscript-ort",
                "output",
                0,
                "known",
                expected,
                text="the outputs differ at [0, 1]",
                max_abs_diff=float("nan"),
                max_abs_index=(0, 1),
                channel_abs_diff=(0.5, float("inf")),
            ),
            records.comparison("onnx-torchscript-ort", "running_var", 0, "agree"),
        ],
        vanished=(VanishedRecord(expected, "onnx-dynamo-ort", "agrees"),),
        statuses=(StatusRecord("onnx-dynamo-ort", "skipped", "not installed", False),),
        unverified=(UnverifiedRecord(expected, "keras-jax: skipped"),),
    )
    return records.document(case, CaseRecord("broken", "cases/broken.yaml", "invalid", error="cases/broken.yaml:3: ..."))


def test_every_record_decodes_to_what_was_encoded():
    document = _full_document()
    back = records.written(document)
    assert records.written_json(back) == records.written_json(document)
    comparison = back.cases[0].comparisons[0]
    assert math.isnan(comparison.verdict.max_abs_diff) and comparison.verdict.channel_abs_diff == (0.5, math.inf)
    assert comparison.verdict.max_abs_index == (0, 1) and comparison.expectation.link == "https://example.org/1"
    assert not back.cases[1].judged and back.cases[1].error.startswith("cases/broken.yaml:3")


# (record type, key it writes, what a reader of the renamed file is told is missing)
WRITTEN_KEYS = [
    (CaseRecord, "id", "no 'id'"),
    (CaseRecord, "outcome", "no 'outcome'"),
    (RunRecord, "status", "no 'status'"),
    (ComparisonRecord, "classification", "no 'classification'"),
    (ComparisonRecord, "other", "no 'other'"),
    (ComparisonRecord, "field", "no 'field'"),
    (StatusRecord, "runner", "no 'runner'"),
    (UnverifiedRecord, "why", "no 'why'"),
]


@pytest.mark.parametrize("record_type, key, missing", WRITTEN_KEYS, ids=[f"{t.__name__}.{k}" for t, k, _ in WRITTEN_KEYS])
def test_a_key_renamed_in_the_writer_breaks_every_reader(monkeypatch, tmp_path, record_type, key, missing):
    """The readers (baseline, matrix, report, plugin) all read through the record types: a key the
    writer stops writing is a clear error in each, never a silent default."""
    encode = record_type.to_json

    def renamed(self):
        data = encode(self)
        data[f"{key}_renamed"] = data.pop(key)
        return data

    monkeypatch.setattr(record_type, "to_json", renamed)
    path = tmp_path / "results.json"
    path.write_text(records.written_json(_full_document()))
    with pytest.raises(HarnessError, match=missing):
        load_results(path)  # the baseline's, matrix's and report command's reader
    with pytest.raises(RecordError, match=missing):
        CaseRecord.from_json(json.loads(path.read_text())["cases"][0])  # the pytest plugin's reader of a case


def test_a_renamed_optional_key_shows_in_what_the_report_renders(monkeypatch):
    encode = ComparisonRecord.to_json
    shown = render_report(records.written(_full_document()))
    assert "the outputs differ at [0, 1]" in shown

    def renamed(self):
        data = encode(self)
        data["verdict_text"] = data.pop("text")
        return data

    monkeypatch.setattr(ComparisonRecord, "to_json", renamed)
    assert "the outputs differ at [0, 1]" not in render_report(records.written(_full_document())), (
        "the report reads the key the writer writes"
    )
