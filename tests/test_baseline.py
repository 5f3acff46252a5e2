from __future__ import annotations

import json
from dataclasses import replace

import pytest

from harness.core.errors import HarnessError
from harness.core.records import RunRecord
from harness.frontends import cli
from harness.report.baseline import compare_results, load_results
from tests import records
from tests.tiny_cases import FORUM_FLIP, FORUM_FLIP_EXPECT, write_case


def divergence(runner="onnx-torchscript-ort", field="module.bn.training", step=1, size=None, kind="state changed by a step", **verdict):
    return records.comparison(runner, field, step, "known", attribution=kind, max_abs_diff=size, **verdict)


AGREEING_OUTPUT = records.comparison("onnx-torchscript-ort", "output", 2, "agree")


def forum(comparisons=None, **fields):
    if comparisons is None:
        comparisons = [divergence(), divergence(field="module.output", step=2, size=0.5), AGREEING_OUTPUT]
    return records.case("forum", comparisons=comparisons, **fields)


BASELINE = records.written(records.document(forum()))


def changed(*cases, **fields):
    """The baseline with other cases, or another environment, written and read as a run does."""
    return records.written(replace(BASELINE, cases=cases or BASELINE.cases, **fields))


def test_an_identical_run_has_no_change():
    comparison = compare_results(BASELINE, records.written(records.document(forum())))
    assert not comparison.regressed and comparison.report() == "no change against the baseline"


def test_new_and_vanished_divergences():
    vanished = changed(
        forum([records.comparison("onnx-torchscript-ort", "module.bn.training", 1, "agree"), *BASELINE.cases[0].comparisons[1:]])
    )
    assert compare_results(BASELINE, vanished).report().splitlines()[0] == (
        "vanished divergence: onnx-torchscript-ort module.bn.training after step 1 in forum"
    )
    assert compare_results(vanished, BASELINE).report().splitlines()[0] == (
        "new divergence: onnx-torchscript-ort module.bn.training after step 1 in forum"
    )


def test_class_changes_and_magnitudes_beyond_the_factor():
    def with_output(size, kind="state changed by a step"):
        return forum([divergence(kind=kind), divergence(field="module.output", step=2, size=size), AGREEING_OUTPUT])

    moved = changed(with_output(1.5, kind="precision"))
    assert [change.describe() for change in compare_results(BASELINE, moved).changes] == [
        "class changed: onnx-torchscript-ort module.bn.training after step 1 in forum: state changed by a step -> precision",
        "magnitude moved: onnx-torchscript-ort module.output after step 2 in forum: 0.5 -> 1.5",
    ]
    assert not compare_results(BASELINE, changed(with_output(0.9))).regressed, "within 2x"
    assert compare_results(BASELINE, changed(with_output(float("nan")))).regressed
    both_nan = changed(with_output(float("nan")))
    assert not compare_results(both_nan, records.written(both_nan)).regressed, "a NaN output both times has not moved"


def test_statuses_outcomes_and_cases():
    document = changed(forum(outcome="failed", runners={"torch-eager": "ok", "onnx-torchscript-ort": "crashed"}))
    assert [change.describe() for change in compare_results(BASELINE, document).changes] == [
        "outcome changed: forum: passed -> failed",
        "status changed: onnx-torchscript-ort in forum: ok -> crashed",
    ]
    renamed = changed(replace(BASELINE.cases[0], case_id="renamed"))
    assert compare_results(BASELINE, renamed, everything=True).report().splitlines()[:2] == ["case gone: forum", "new case: renamed"]
    assert compare_results(BASELINE, renamed).report().splitlines() == [
        "new case: renamed",
        "not compared: 1 case(s) of the baseline this run did not run (--all compares them)",
        "1 change(s) against the baseline",
    ]


def test_a_runner_skipped_everywhere_is_one_change_not_one_per_divergence():
    skipped = RunRecord("skipped", "onnxruntime is not installed")
    alone = forum([], runners={"torch-eager": "ok", "onnx-torchscript-ort": skipped})
    line = (
        "onnx-torchscript-ort ran in the baseline and was skipped in every case here "
        "(onnxruntime is not installed); its 2 divergence(s) in the baseline not compared"
    )
    by_default = compare_results(BASELINE, changed(alone))
    assert not by_default.regressed and by_default.not_compared == (line,), "an install without the framework: not run, not a change"
    assert [change.describe() for change in compare_results(BASELINE, changed(alone), everything=True).changes] == [
        f"runner not run: {line}"
    ]
    second = replace(alone, case_id="other", runners={"torch-eager": RunRecord("ok"), "onnx-torchscript-ort": RunRecord("ok")})
    assert "status changed: onnx-torchscript-ort in forum: ok -> skipped" in compare_results(BASELINE, changed(alone, second)).report(), (
        "skipped in one case only: per case"
    )


def test_another_environment_is_compared_all_the_same_with_versions_first():
    versions = {**BASELINE.environment.versions, "onnxruntime": "1.33.0"}
    comparison = compare_results(BASELINE, changed(environment=replace(BASELINE.environment, versions=versions)))
    assert not comparison.regressed
    assert comparison.report().splitlines()[:2] == ["The baseline comes from another environment:", "  onnxruntime: 1.32.0 -> 1.33.0"]


def test_bad_inputs(tmp_path):
    with pytest.raises(HarnessError, match="factor must be above 1"):
        compare_results(BASELINE, BASELINE, factor=1.0)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(HarnessError, match="not a results record"):
        load_results(tmp_path / "bad.json")
    (tmp_path / "future.json").write_text(records.written_json(BASELINE).replace('"schema_version": 1', '"schema_version": 2'))
    with pytest.raises(HarnessError, match="schema version 2; this harness reads version 1"):
        load_results(tmp_path / "future.json")


def test_the_command_exits_1_on_a_change_and_2_on_bad_input(tmp_path, capsys):
    (tmp_path / "old.json").write_text(records.written_json(BASELINE))
    (tmp_path / "new.json").write_text(records.written_json(changed(forum(outcome="failed"))))
    assert cli.main(["baseline", "compare", str(tmp_path / "old.json"), str(tmp_path / "old.json")]) == 0
    assert cli.main(["baseline", "compare", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 1
    assert "outcome changed: forum: passed -> failed" in capsys.readouterr().out
    assert cli.main(["baseline", "compare", str(tmp_path / "old.json"), str(tmp_path / "missing.json")]) == 2


@pytest.mark.slow
def test_the_pytest_option_fails_the_session_on_a_change(pytester):
    pytest.importorskip("onnxruntime")
    write_case(pytester.path / "cases", "forum", FORUM_FLIP + FORUM_FLIP_EXPECT)
    runners = "--harness-runners=torch-eager,onnx-torchscript-ort"
    first = pytester.runpytest_subprocess("cases", runners, "--harness-results=base.json")
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["results written to base.json, the report to base.html"])
    assert "Against the baseline" not in (pytester.path / "base.html").read_text(), "no baseline given"
    same = pytester.runpytest_subprocess("cases", runners, "--harness-baseline=base.json")
    assert same.ret == 0 and "no change against the baseline" in same.stdout.str()
    record = json.loads((pytester.path / "base.json").read_text())
    record["cases"][0]["comparisons"] = [c for c in record["cases"][0]["comparisons"] if c["field"] != "module.bn.training"]
    (pytester.path / "base.json").write_text(json.dumps(record))
    regressed = pytester.runpytest_subprocess("cases", runners, "--harness-baseline=base.json")
    assert regressed.ret == pytest.ExitCode.TESTS_FAILED
    regressed.stdout.fnmatch_lines(
        [
            "new divergence: onnx-torchscript-ort module.bn.training after step 1 in forum",
            "*the session fails: 2 change(s) against the baseline base.json",
            "*1 passed*",
        ]
    )
    missing = pytester.runpytest_subprocess("cases", runners, "--harness-baseline=missing.json")
    assert (
        missing.ret == pytest.ExitCode.USAGE_ERROR
        and "--harness-baseline: missing.json: cannot read a results record" in missing.stderr.str()
    )


def test_a_saved_baseline_keeps_what_comparing_needs(tmp_path):
    (tmp_path / "results.json").write_text(records.written_json(BASELINE))
    assert cli.main(["baseline", "save", str(tmp_path / "results.json"), "-o", str(tmp_path / "baseline.json")]) == 0
    saved = load_results(tmp_path / "baseline.json")
    assert [c.verdict.field for c in saved.cases[0].comparisons] == ["module.bn.training", "module.output"], "agreements dropped"
    assert set(json.loads((tmp_path / "baseline.json").read_text())["cases"][0]["comparisons"][0]) == {
        "other",
        "field",
        "step",
        "classification",
        "attribution",
        "max_abs_diff",
        "dtype",
        "nan_count",
        "inf_count",
    }, "a baseline keeps the keys comparing reads, and no verdict text"
    assert not compare_results(saved, BASELINE).regressed


def test_a_subset_run_compares_only_what_it_ran(tmp_path, capsys):
    """A run of some cases, or with --runners, listed every other case as gone and every other
    runner's divergences as vanished."""
    other = records.case("other", comparisons=[divergence()])
    full = records.written(records.document(forum(), other))
    subset = records.written(records.document(forum(runners={"torch-eager": "ok"}, comparisons=[])))
    comparison = compare_results(full, subset)
    assert not comparison.regressed
    assert comparison.report().splitlines() == [
        "not compared: 1 case(s) of the baseline this run did not run (--all compares them)",
        "not compared: 1 runner result(s) of the baseline, with 2 divergence(s), that this run did not run (--all compares them)",
        "no change against the baseline",
    ]
    everything = compare_results(full, subset, everything=True)
    assert (
        "case gone: other" in everything.report()
        and "vanished divergence: onnx-torchscript-ort module.bn.training after step 1 in forum" in (everything.report())
    )
    (tmp_path / "full.json").write_text(records.written_json(full))
    (tmp_path / "subset.json").write_text(records.written_json(subset))
    assert cli.main(["baseline", "compare", str(tmp_path / "full.json"), str(tmp_path / "subset.json")]) == 0
    assert cli.main(["baseline", "compare", str(tmp_path / "full.json"), str(tmp_path / "subset.json"), "--all"]) == 1
    assert "case gone: other" in capsys.readouterr().out


def test_baseline_update_merges_what_a_subset_run_ran_and_keeps_the_rest(tmp_path, capsys):
    """A new case and one runner's new results land; the runners and cases the run did not run keep
    the baseline's; comparing the full run afterwards shows only what the update brought."""
    keras = records.comparison("keras-tensorflow", "output", 0, "known", attribution="momentum convention")
    other = records.case("other", comparisons=[divergence()])
    baseline = records.document(
        forum(runners={"torch-eager": "ok", "onnx-torchscript-ort": "ok", "keras-tensorflow": "ok"}, comparisons=[divergence(), keras]),
        other,
    )
    moved = divergence(size=3.0)  # the exporter's divergence, measured anew
    added = records.case("added", file="cases/added.yaml")
    run = records.document(forum(runners={"torch-eager": "ok", "onnx-torchscript-ort": "ok"}, comparisons=[moved]), added)
    (tmp_path / "baseline.json").write_text(records.written_json(baseline))
    (tmp_path / "run.json").write_text(records.written_json(run))
    assert cli.main(["baseline", "update", str(tmp_path / "baseline.json"), str(tmp_path / "run.json")]) == 0
    assert capsys.readouterr().out.strip() == (
        f"baseline {tmp_path}/baseline.json updated from {tmp_path}/run.json: 1 case(s) updated, 1 added, 1 kept as they were"
    )
    updated = load_results(tmp_path / "baseline.json")
    assert [case.case_id for case in updated.cases] == ["added", "forum", "other"]
    forum_case = updated.cases[1]
    assert set(forum_case.runners) == {"torch-eager", "onnx-torchscript-ort", "keras-tensorflow"}
    assert [(c.verdict.other, c.verdict.max_abs_diff) for c in forum_case.divergences] == [
        ("keras-tensorflow", None),
        ("onnx-torchscript-ort", 3.0),
    ]


def test_baseline_update_removes_the_cases_a_file_no_longer_has_and_keeps_points_left_out(tmp_path, capsys):
    """A grid added to a file renames its case: the old id goes; a grid point the run left out
    (file::id, pytest -k) stays."""
    case_file = write_case(tmp_path / "cases", "forum", FORUM_FLIP + "grid:\n  bn.eps: [0.1, 0.01]\n")
    plain = records.case("forum", file=str(case_file))
    other_point = records.case("forum[eps_0.01]", file=str(case_file))
    (tmp_path / "baseline.json").write_text(records.written_json(records.document(plain, other_point, records.case("other"))))
    (tmp_path / "run.json").write_text(records.written_json(records.document(records.case("forum[eps_0.1]", file=str(case_file)))))
    assert cli.main(["baseline", "update", str(tmp_path / "baseline.json"), str(tmp_path / "run.json")]) == 0
    assert "0 case(s) updated, 1 added, 1 removed (forum: their files no longer have them), 2 kept as they were" in capsys.readouterr().out
    assert sorted(case.case_id for case in load_results(tmp_path / "baseline.json").cases) == ["forum[eps_0.01]", "forum[eps_0.1]", "other"]


def test_baseline_update_from_some_runners_keeps_the_worse_outcome(tmp_path):
    """A case failing in a runner the run left out does not become passed."""
    failing = forum(outcome="failed", runners={"torch-eager": "ok", "onnx-torchscript-ort": "ok", "keras-tensorflow": "ok"})
    subset = forum(outcome="passed", runners={"torch-eager": "ok", "onnx-torchscript-ort": "ok"})
    (tmp_path / "baseline.json").write_text(records.written_json(records.document(failing)))
    (tmp_path / "run.json").write_text(records.written_json(records.document(subset)))
    assert cli.main(["baseline", "update", str(tmp_path / "baseline.json"), str(tmp_path / "run.json")]) == 0
    assert [case.outcome for case in load_results(tmp_path / "baseline.json").cases] == ["failed"]


def test_baseline_update_refuses_a_run_of_other_package_versions(tmp_path, capsys):
    newer = replace(records.ENVIRONMENT, versions={**records.ENVIRONMENT.versions, "onnxruntime": "1.33.0"})
    (tmp_path / "baseline.json").write_text(records.written_json(BASELINE))
    (tmp_path / "run.json").write_text(records.written_json(replace(BASELINE, environment=newer)))
    before = (tmp_path / "baseline.json").read_text()
    assert cli.main(["baseline", "update", str(tmp_path / "baseline.json"), str(tmp_path / "run.json")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path}/run.json comes from other package versions than {tmp_path}/baseline.json: onnxruntime: 1.32.0 -> 1.33.0"
    )
    assert (tmp_path / "baseline.json").read_text() == before


def test_a_change_in_how_many_elements_are_nan_is_reported():
    """The same greatest difference (NaN) over 128 or 512 NaN elements is another divergence."""
    old = forum([divergence(field="module.output", step=2, size=float("nan"), nan_count=(0, 128))])
    new = forum([divergence(field="module.output", step=2, size=float("nan"), nan_count=(0, 512))])
    comparison = compare_results(records.written(records.document(old)), records.written(records.document(new)))
    assert [change.describe() for change in comparison.changes] == [
        "non-finite count changed: onnx-torchscript-ort module.output after step 2 in forum: NaN 0/128, Inf 0/0 -> NaN 0/512, Inf 0/0"
    ]
