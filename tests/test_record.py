from __future__ import annotations

import json

import numpy as np

from harness.core.results import Observed, RunResult
from harness.judge.compare import compare_observed
from harness.judge.engine import CaseResult
from harness.judge.expected import Classification
from harness.report.record import SCHEMA_VERSION, write_results


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
