from __future__ import annotations

import copy
import json

import pytest

from harness.core.errors import HarnessError
from harness.frontends import cli
from harness.report.baseline import compare_results, load_results
from tests.tiny_cases import FORUM_FLIP, FORUM_FLIP_EXPECT, write_case


def divergence(runner="onnx-torchscript-ort", field="module.bn.training", step=1, size=None, kind="state changed by a step"):
    return {"other": runner, "field": field, "step": step, "classification": "known", "attribution": kind, "max_abs_diff": size}


BASELINE = {
    "schema_version": 1,
    "environment": {"python": "3.11.7", "platform": "linux", "versions": {"torch": "2.13.0", "onnxruntime": "1.32.0"}},
    "cases": [
        {
            "id": "forum",
            "outcome": "passed",
            "runners": {"torch-eager": {"status": "ok"}, "onnx-torchscript-ort": {"status": "ok"}},
            "comparisons": [
                divergence(),
                divergence(field="module.output", step=2, size=0.5),
                {"other": "onnx-torchscript-ort", "field": "output", "step": 2, "classification": "agree"},
            ],
        }
    ],
}


def changed(**edits):
    document = copy.deepcopy(BASELINE)
    for path, value in edits.items():
        target = document
        *parents, last = path.split("/")
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value
    return document


def test_an_identical_run_has_no_change():
    comparison = compare_results(BASELINE, copy.deepcopy(BASELINE))
    assert not comparison.regressed and comparison.report() == "no change against the baseline"


def test_new_and_vanished_divergences():
    vanished = changed(
        **{"cases/0/comparisons/0": {"other": "onnx-torchscript-ort", "field": "module.bn.training", "step": 1, "classification": "agree"}}
    )
    assert compare_results(BASELINE, vanished).report().splitlines()[0] == (
        "vanished divergence: onnx-torchscript-ort module.bn.training after step 1 in forum"
    )
    assert compare_results(vanished, BASELINE).report().splitlines()[0] == (
        "new divergence: onnx-torchscript-ort module.bn.training after step 1 in forum"
    )


def test_class_changes_and_magnitudes_beyond_the_factor():
    moved = changed(**{"cases/0/comparisons/1/max_abs_diff": 1.5, "cases/0/comparisons/0/attribution": "precision"})
    assert [change.describe() for change in compare_results(BASELINE, moved).changes] == [
        "class changed: onnx-torchscript-ort module.bn.training after step 1 in forum: state changed by a step -> precision",
        "magnitude moved: onnx-torchscript-ort module.output after step 2 in forum: 0.5 -> 1.5",
    ]
    assert not compare_results(BASELINE, changed(**{"cases/0/comparisons/1/max_abs_diff": 0.9})).regressed, "within 2x"
    assert compare_results(BASELINE, changed(**{"cases/0/comparisons/1/max_abs_diff": "nan"})).regressed
    both_nan = changed(**{"cases/0/comparisons/1/max_abs_diff": "nan"})
    assert not compare_results(both_nan, copy.deepcopy(both_nan)).regressed, "a NaN output both times has not moved"


def test_statuses_outcomes_and_cases():
    document = changed(**{"cases/0/runners/onnx-torchscript-ort/status": "crashed", "cases/0/outcome": "failed"})
    assert [change.describe() for change in compare_results(BASELINE, document).changes] == [
        "outcome changed: forum: passed -> failed",
        "status changed: onnx-torchscript-ort in forum: ok -> crashed",
    ]
    assert compare_results(BASELINE, changed(**{"cases/0/id": "renamed"})).report().splitlines()[:2] == [
        "case gone: forum",
        "new case: renamed",
    ]


def test_a_runner_skipped_everywhere_is_one_change_not_one_per_divergence():
    skipped = {"status": "skipped", "reason": "onnxruntime is not installed"}
    document = changed(**{"cases/0/runners/onnx-torchscript-ort": skipped, "cases/0/comparisons": []})
    assert [change.describe() for change in compare_results(BASELINE, document).changes] == [
        "runner not run: onnx-torchscript-ort ran in the baseline and was skipped in every case here "
        "(onnxruntime is not installed); its 2 divergence(s) in the baseline not compared"
    ]
    second = copy.deepcopy(document["cases"][0]) | {"id": "other"}
    second["runners"]["onnx-torchscript-ort"] = {"status": "ok"}
    assert (
        "status changed: onnx-torchscript-ort in forum: ok -> skipped"
        in compare_results(BASELINE, document | {"cases": [document["cases"][0], second]}).report()
    ), "skipped in one case only: per case"


def test_another_environment_is_compared_all_the_same_with_versions_first():
    other = changed(**{"environment/versions/onnxruntime": "1.33.0"})
    comparison = compare_results(BASELINE, other)
    assert not comparison.regressed
    assert comparison.report().splitlines()[:2] == ["The baseline comes from another environment:", "  onnxruntime: 1.32.0 -> 1.33.0"]


def test_bad_inputs(tmp_path):
    with pytest.raises(HarnessError, match="factor must be above 1"):
        compare_results(BASELINE, BASELINE, factor=1.0)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(HarnessError, match="not a results record"):
        load_results(tmp_path / "bad.json")


def test_the_command_exits_1_on_a_change_and_2_on_bad_input(tmp_path, capsys):
    (tmp_path / "old.json").write_text(json.dumps(BASELINE))
    (tmp_path / "new.json").write_text(json.dumps(changed(**{"cases/0/outcome": "failed"})))
    assert cli.main(["baseline", "compare", str(tmp_path / "old.json"), str(tmp_path / "old.json")]) == 0
    assert cli.main(["baseline", "compare", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 1
    assert "outcome changed: forum: passed -> failed" in capsys.readouterr().out
    assert cli.main(["baseline", "compare", str(tmp_path / "old.json"), str(tmp_path / "missing.json")]) == 2


@pytest.mark.slow
def test_the_pytest_option_fails_the_session_on_a_change(pytester):
    pytest.importorskip("onnxruntime")
    write_case(pytester.path / "cases", "forum", FORUM_FLIP + FORUM_FLIP_EXPECT)
    runners = "--harness-runners=torch-eager,onnx-torchscript-ort"
    pytester.runpytest_subprocess("cases", runners, "--harness-results=base.json").assert_outcomes(passed=1)
    same = pytester.runpytest_subprocess("cases", runners, "--harness-baseline=base.json")
    assert same.ret == 0 and "no change against the baseline" in same.stdout.str()
    record = json.loads((pytester.path / "base.json").read_text())
    record["cases"][0]["comparisons"] = [c for c in record["cases"][0]["comparisons"] if c["field"] != "module.bn.training"]
    (pytester.path / "base.json").write_text(json.dumps(record))
    regressed = pytester.runpytest_subprocess("cases", runners, "--harness-baseline=base.json")
    assert regressed.ret == pytest.ExitCode.TESTS_FAILED
    regressed.stdout.fnmatch_lines(["new divergence: onnx-torchscript-ort module.bn.training after step 1 in forum"])


def test_a_saved_baseline_keeps_what_comparing_needs(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(BASELINE))
    assert cli.main(["baseline", "save", str(tmp_path / "results.json"), "-o", str(tmp_path / "baseline.json")]) == 0
    saved = json.loads((tmp_path / "baseline.json").read_text())
    assert [c["field"] for c in saved["cases"][0]["comparisons"]] == ["module.bn.training", "module.output"], "agreements dropped"
    assert not compare_results(saved, BASELINE).regressed
